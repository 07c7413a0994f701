"""Hostile devices in a real Flower run (issue 16): an out-of-range upload fails its round
cleanly (no model change, nobody counted) and the next round completes; a dealer that commits
to another seed than it shares aborts one round, is named, and is refused from then on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from cohorts import FEW_DEVICES, NO_COLLUSION
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.protocol import CONFIG
from fedmarket.secagg import messages, vss
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult
from fedmarket.simulation import SimulatedFleet, run_federation
from strategies import FedAvg


def two_rounds(home: Path, *, devices: int, mod: Mod) -> FederationResult:
    """Two secure rounds of a few devices (stated not to collude), one of them hostile."""
    fleet = SimulatedFleet(
        num_devices=devices, home=home, epsilon_cap=20.0, secagg_policy=NO_COLLUSION
    )
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(
            learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=3, batch_size=64
        ),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
        secagg=FEW_DEVICES,
    )
    return run_federation(fleet, plan, FedAvg(), client_mods=[mod])


def poison_upload(partition: int, round_: int) -> Callable[..., Message]:
    """A ClientApp mod: device ``partition`` adds 2^31 to every masked word in ``round_``."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        config = msg.content.config_records.get(CONFIG)
        masked = reply.content.array_records.get(messages.MASKED)
        if (
            int(context.node_config["partition-id"]) == partition
            and masked is not None
            and config is not None
            and config.get("round") == round_
        ):
            vector = masked["vector"].numpy() + np.uint32(1 << 31)
            reply.content[messages.MASKED] = ArrayRecord({"vector": Array(vector)})
        return reply

    return mod


def test_a_poisoned_upload_fails_its_round_cleanly_and_the_next_round_completes(
    tmp_path: Path,
) -> None:
    result = two_rounds(tmp_path, devices=3, mod=poison_upload(0, round_=1))
    first, second = result.rounds
    assert first.error is not None
    assert "out-of-range" in first.error
    assert first.trained == ()
    assert first.accuracy == result.initial_accuracy  # the global model did not move
    assert second.error is None
    assert sorted(second.trained) == ["device-0", "device-1", "device-2"]


def deal_off_commitments(partition: int) -> Callable[..., Message]:
    """A ClientApp mod: device ``partition`` commits to another seed than the one it shares."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        secagg = reply.content.config_records.get(messages.SECAGG)
        if (
            int(context.node_config["partition-id"]) == partition
            and secagg is not None
            and secagg.get("stage") == "share_keys"
            and "seed_commitments" in secagg
        ):
            commitments = secagg["seed_commitments"]
            assert isinstance(commitments, bytes)
            t = len(commitments) // vss.POINT_BYTES
            secagg["seed_commitments"] = vss.deal(vss.random_scalar(), t, t).commitments
        return reply

    return mod


def test_a_dealer_off_its_commitments_aborts_one_round_and_is_refused_after(
    tmp_path: Path,
) -> None:
    result = two_rounds(tmp_path, devices=4, mod=deal_off_commitments(0))
    first, second = result.rounds
    assert first.error is not None
    assert "dealt them" in first.error
    assert first.trained == ()
    assert second.error is None
    assert sorted(second.trained) == ["device-1", "device-2", "device-3"]
    assert any("broke an earlier round" in why for why in second.dropped.values())
