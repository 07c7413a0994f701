"""A hostile aggregator cannot drain a device's ε with rounds the device must refuse anyway.

It runs setup, roster and share_keys properly, then sends a mask stage the device must refuse:
a dealer list that leaves out its own shares, or market terms that cannot carry a receipt. The
device's real ClientApp refuses before it trains, so nothing is charged, round after round
(red team, issue 15: it used to train, pay, then refuse).
"""

import os
from pathlib import Path
from typing import Any

import pytest
from cohorts import FEW_DEVICES, NO_COLLUSION
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from nacl.signing import SigningKey

from fedmarket.device.app import make_client_app
from fedmarket.market.sealed_models import model_commitment
from fedmarket.market.terms import MARKET, MarketTerms, RoundTerms
from fedmarket.models.registry import build_model
from fedmarket.models.weights import get_weights, weights_to_bytes
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.privacy.config import to_record
from fedmarket.protocol import CONFIG, GLOBAL, weights_to_record
from fedmarket.secagg import messages as m
from fedmarket.secagg.device import DeviceSession, Stage
from fedmarket.secagg.roster import Announcement, Roster, encode_roster
from fedmarket.simulation import SimulatedFleet

NODE = 1


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's Message() reads the task identity its runtime sets; here there is none
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.mark.parametrize(
    ("terms", "refusal"),
    [
        (None, "my own shares are missing"),  # the server drops the device's own dealing
        # terms that parse but cannot carry a receipt: it used to train, fail to sign, refuse
        (MarketTerms(-1, 31337, "0x" + "ab" * 20, "0x" + "cd" * 20), "receipt task"),
        (MarketTerms(7, 31337, "junk", "0x" + "cd" * 20), "cannot carry a receipt"),
        # a commitment to some other model than the one sent: the device signs nothing for it
        (MarketTerms(8, 31337, "0x" + "ab" * 20, "0x" + "cd" * 20), "does not commit"),
    ],
    ids=["not-a-dealer", "task-minus-one", "junk-market", "another-model"],
)
def test_a_mask_stage_the_device_must_refuse_is_refused_before_training_at_no_cost(
    tmp_path: Path, terms: MarketTerms | None, refusal: str
) -> None:
    fleet = SimulatedFleet(
        num_devices=3,
        home=tmp_path,
        epsilon_cap=8.0,
        payout_seed="t",
        secagg_policy=NO_COLLUSION,
    )
    fleet.prepare_ledgers()
    device = fleet.profile(0)
    app = make_client_app(lambda context: device)
    context = Context(run_id=1, node_id=NODE, node_config={}, state=RecordDict(), run_config={})
    global_model = get_weights(build_model("mlp", device.data.feature_shape, 10, seed=0))

    def send(content: RecordDict) -> ConfigRecord:
        reply = app(Message(content, dst_node_id=NODE, message_type=MessageType.TRAIN), context)
        return reply.content.config_records[m.SECAGG]

    def stage(stage: Stage, session: bytes, fields: dict[str, Any]) -> ConfigRecord:
        return send(RecordDict({m.SECAGG: m.record(stage, session, fields)}))

    for server_round in (1, 2, 3):
        params = FEW_DEVICES.for_cohort(3, session=os.urandom(16))
        setup = {f"param.{k}": v for k, v in params.to_record().items()}
        mine = stage(Stage.SETUP, params.session, setup)
        others = {
            n: DeviceSession.setup(n, params, SigningKey.generate(), NO_COLLUSION) for n in (2, 3)
        }
        announced = Announcement.from_bytes(mine["announcement"])  # type: ignore[arg-type]
        roster = Roster.of([announced, *(a for _, a in others.values())])
        nonce = stage(Stage.ROSTER, params.session, {"roster": encode_roster(roster)})["nonce"]
        nonces = {NODE: nonce} | {n: peer.reveal(roster) for n, (peer, _) in others.items()}
        stage(
            Stage.SHARE_KEYS,
            params.session,
            {"nonce_nodes": list(nonces), "nonces": list(nonces.values())},
        )
        uploads = {n: peer.share_keys(nonces) for n, (peer, _) in others.items()}
        inbox = {
            "dealers": [2, 3] if terms is None else [NODE, 2, 3],
            "sources": list(uploads),
            "ciphertexts": [u.ciphertexts[NODE] for u in uploads.values()],
            "seed_digests": [u.seed_digests[NODE] for u in uploads.values()],
            "key_digests": [u.key_digests[NODE] for u in uploads.values()],
        }
        config = {
            "round": server_round,
            "model": "mlp",
            **to_record("train", TrainConfig(sample_rate=0.3, local_steps=4)),
            **to_record("dp", DpConfig(noise_multiplier=2.3)),
        }
        content = RecordDict(
            {
                CONFIG: ConfigRecord(config),
                GLOBAL: weights_to_record(global_model),
                m.SECAGG: m.record(Stage.MASK, params.session, inbox),
            }
        )
        if terms is not None:
            salt = os.urandom(32)
            sent = weights_to_bytes(global_model)
            model = sent + b"x" if terms.task == 8 else sent
            trained_from = model_commitment(salt, model)
            content[MARKET] = RoundTerms(terms, server_round, trained_from, salt).to_record()
        refused = send(content)

        assert refusal in str(refused["refused"])
        assert device.ledger().epsilon() == 0.0
        assert device.ledger().history == ()


def test_a_device_joins_at_most_three_draws_that_never_reach_training(tmp_path: Path) -> None:
    """Graph grinding: a server that restarts the draw until it likes the graph gets at most
    three draws per device before the device trains again (log2 3 bits, in the parameters)."""
    fleet = SimulatedFleet(
        num_devices=3, home=tmp_path, epsilon_cap=8.0, secagg_policy=NO_COLLUSION
    )
    device = fleet.profile(0)
    app = make_client_app(lambda context: device)
    context = Context(run_id=1, node_id=NODE, node_config={}, state=RecordDict(), run_config={})
    answers = []
    for _ in range(4):
        params = FEW_DEVICES.for_cohort(3, session=os.urandom(16))
        setup = {f"param.{k}": v for k, v in params.to_record().items()}
        content = RecordDict({m.SECAGG: m.record(Stage.SETUP, params.session, setup)})
        reply = app(Message(content, dst_node_id=NODE, message_type=MessageType.TRAIN), context)
        answers.append(reply.content.config_records[m.SECAGG])
    assert all("announcement" in a for a in answers[:3])
    assert "grinding" in str(answers[3]["refused"])
