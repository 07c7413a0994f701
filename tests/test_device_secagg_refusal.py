"""A hostile aggregator cannot drain a device's ε with rounds the device must refuse anyway.

It runs setup and share_keys properly, then sends the mask stage with too few shares for the
device to mask under (none): the device's real ClientApp refuses before it trains, so nothing
is charged, round after round (red team, issue 15: it used to train, pay, then refuse).
"""

import os
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmarket.device.app import make_client_app
from fedmarket.models.registry import build_model
from fedmarket.models.weights import get_weights
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.privacy.config import to_record
from fedmarket.protocol import CONFIG, GLOBAL, weights_to_record
from fedmarket.secagg import messages as m
from fedmarket.secagg.config import SecAggConfig
from fedmarket.secagg.device import DeviceSession, Stage
from fedmarket.simulation import SimulatedFleet

NODE = 1


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's Message() reads the task identity its runtime sets; here there is none
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_a_mask_stage_without_shares_is_refused_before_training_at_no_cost(
    tmp_path: Path,
) -> None:
    fleet = SimulatedFleet(num_devices=3, home=tmp_path, epsilon_cap=8.0)
    fleet.prepare_ledgers()
    device = fleet.profile(0)
    app = make_client_app(lambda context: device)
    context = Context(run_id=1, node_id=NODE, node_config={}, state=RecordDict(), run_config={})
    global_model = get_weights(build_model("mlp", device.data.feature_shape, 10, seed=0))

    def send(content: RecordDict) -> ConfigRecord:
        reply = app(Message(content, dst_node_id=NODE, message_type=MessageType.TRAIN), context)
        return reply.content.config_records[m.SECAGG]

    for server_round in (1, 2, 3):
        params = SecAggConfig().for_cohort(3, session=os.urandom(16))
        setup = {f"param.{k}": v for k, v in params.to_record().items()}
        mine = send(RecordDict({m.SECAGG: m.record(Stage.SETUP, params.session, setup)}))
        others = {n: DeviceSession.setup(n, params)[1] for n in (2, 3)}
        keys = {NODE: (mine["cipher_pk"], mine["mask_pk"])}
        keys |= {n: (k.cipher, k.mask) for n, k in others.items()}
        peers = {
            "peers": list(keys),
            "peer_cipher": [c for c, _ in keys.values()],
            "peer_mask": [k for _, k in keys.values()],
        }
        send(RecordDict({m.SECAGG: m.record(Stage.SHARE_KEYS, params.session, peers)}))
        config = {
            "round": server_round,
            "model": "mlp",
            **to_record("train", TrainConfig(sample_rate=0.3, local_steps=4)),
            **to_record("dp", DpConfig(noise_multiplier=2.3)),
        }
        no_shares = {"sources": [], "ciphertexts": []}
        refused = send(
            RecordDict(
                {
                    CONFIG: ConfigRecord(config),
                    GLOBAL: weights_to_record(global_model),
                    m.SECAGG: m.record(Stage.MASK, params.session, no_shares),
                }
            )
        )

        assert "valid shares from 0 neighbours" in str(refused["refused"])
        assert device.ledger().epsilon() == 0.0
        assert device.ledger().history == ()
