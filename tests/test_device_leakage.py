"""What leaves a device: everything the server receives in a SecAgg+ round, recorded by an
outermost client mod in a real Flower simulation (issue 15, item 2).

Two federations run the same public round config on different data (other records, other
counts per device). Every field a device sends must be either the masked vector or a value
that is the same in both runs for the same device: a protocol field, or a function of the
public config alone. A field that carried the loss, a count or the clipped share in the clear
would differ between the runs and fail here.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cohorts import FEW_DEVICES, NO_COLLUSION
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmarket import FederationPlan, SimulatedFleet, run_federation
from fedmarket.privacy import DpConfig, TrainConfig, epsilon, plan_spend
from strategies import FedAvg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = TrainConfig(learning_rate=2.5, momentum=0.5, sample_rate=0.3, local_steps=4)
DP = DpConfig(noise_multiplier=1.5, max_grad_norm=0.5)
# Whatever a device may send, by stage: record name -> the fields it may hold.
ALLOWED = {
    "setup": {"secagg": {"stage", "session", "announcement"}},
    "roster": {"secagg": {"stage", "session", "nonce"}},
    "share_keys": {
        "secagg": {
            "stage",
            "session",
            "destinations",
            "ciphertexts",
            "seed_commitments",
            "key_commitments",
            "digest_holders",
            "seed_digests",
            "key_digests",
        }
    },
    "mask": {
        "status": {"device", "outcome", "reason"},
        "metrics": {"epsilon", "delta"},
        "secagg": {"stage", "session", "masked_with", "complaint_nodes", "complaints"},
        "masked": {"vector"},
    },
    "consistency": {"secagg": {"stage", "session", "signature"}},
    "unmask": {
        "secagg": {
            "stage",
            "session",
            "seed_owners",
            "seed_shares",
            "key_owners",
            "key_shares",
            "pair_owners",
            "pair_keys",
        }
    },
}


def describe(content: RecordDict) -> dict[str, dict[str, Any]]:
    """Every record and field of a message: values as JSON, bytes by length, arrays by shape."""

    def value(v: object) -> object:
        if isinstance(v, bytes):
            return f"{len(v)} bytes"
        if isinstance(v, list):
            return [value(x) for x in v]
        return v

    out: dict[str, dict[str, Any]] = {}
    for name, config in content.config_records.items():
        out[name] = {k: value(v) for k, v in config.items()}
    for name, metrics in content.metric_records.items():
        out[name] = dict(metrics)
    for name, arrays in content.array_records.items():
        out[name] = {k: [a.dtype, list(a.shape)] for k, a in arrays.items()}
    return out


def recording_mod(folder: Path) -> Mod:
    """Write down, per device, every train-type message it receives and what it answers."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if msg.metadata.message_type == MessageType.TRAIN:
            entry = {"got": describe(msg.content), "sent": describe(reply.content)}
            partition = context.node_config["partition-id"]
            with open(folder / f"device-{partition}.jsonl", "a") as log:
                log.write(json.dumps(entry) + "\n")
        return reply

    return mod


def run_and_record(home: Path, seed: int) -> tuple[dict[str, list[dict[str, Any]]], list[int]]:
    fleet = SimulatedFleet(
        num_devices=3, home=home, seed=seed, epsilon_cap=50.0, secagg_policy=NO_COLLUSION
    )
    (home / "wire").mkdir(parents=True)
    result = run_federation(
        fleet,
        FederationPlan(rounds=1, train=TRAIN, dp=DP, secagg=FEW_DEVICES),
        FedAvg(),
        client_mods=[recording_mod(home / "wire")],
    )
    assert sorted(result.rounds[0].trained) == ["device-0", "device-1", "device-2"]
    wire = {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted((home / "wire").glob("*.jsonl"))
    }
    return wire, [len(part) for part in fleet.split()[0]]


def by_stage(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["got"]["secagg"]["stage"]: m for m in messages}


def test_a_device_sends_only_the_masked_vector_and_data_independent_fields(
    tmp_path: Path,
) -> None:
    first, sizes_first = run_and_record(tmp_path / "a", seed=0)
    second, sizes_second = run_and_record(tmp_path / "b", seed=1)
    assert sizes_first != sizes_second  # the two runs' devices hold different numbers of records
    assert set(first) == set(second) == {"device-0", "device-1", "device-2"}

    spend = plan_spend(TRAIN, DP, delta=1e-5)
    charged = epsilon([spend], delta=1e-5, accountant="prv")
    for device in first:
        stages = by_stage(first[device])
        assert set(stages) == set(ALLOWED)
        for stage, message in stages.items():
            sent = message["sent"]
            assert {name: set(fields) for name, fields in sent.items()} == ALLOWED[stage]
        mask = stages["mask"]["sent"]
        # the update: one uint32 word per parameter and one for the clipped share, masked
        model = stages["mask"]["got"]["global"].values()
        parameters = sum(int(np.prod(shape)) for _, shape in model)
        assert mask["masked"]["vector"] == ["uint32", [parameters + 1]]
        assert mask["status"] == {"device": device, "outcome": "trained", "reason": ""}
        assert mask["metrics"] == {"epsilon": pytest.approx(charged), "delta": 1e-5}
        assert mask["secagg"]["complaint_nodes"] == []
        # it dealt to the neighbours the graph seed fixed, nothing the device chose
        assert len(stages["share_keys"]["sent"]["secagg"]["destinations"]) == 2  # k = 2

        # Differential: the same device on other data sends the same fields, but for the
        # round's session (random), its keys and shares (random) and its mask peers (the
        # server's ring over node ids, random per run).
        other = by_stage(second[device])
        for stage in ALLOWED:
            ours, theirs = stages[stage]["sent"], other[stage]["sent"]
            for name, fields in ours.items():
                for field, value in fields.items():
                    if field in (
                        "session",
                        "destinations",
                        "digest_holders",
                        "seed_owners",
                        "key_owners",
                        "pair_owners",
                    ):
                        continue
                    assert theirs[name][field] == value, (device, stage, name, field)
