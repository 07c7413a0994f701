"""A hostile device in a real Flower run (issue 16): its out-of-range upload fails that round
cleanly (no model change, nobody counted), and the next round completes without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from cohorts import FEW_DEVICES, NO_COLLUSION
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.protocol import CONFIG
from fedmarket.secagg import messages
from fedmarket.server.plan import FederationPlan
from fedmarket.simulation import SimulatedFleet, run_federation
from strategies import FedAvg


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
    fleet = SimulatedFleet(
        num_devices=3, home=tmp_path, epsilon_cap=20.0, secagg_policy=NO_COLLUSION
    )
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(
            learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=3, batch_size=64
        ),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
        secagg=FEW_DEVICES,
    )
    result = run_federation(fleet, plan, FedAvg(), client_mods=[poison_upload(0, round_=1)])
    first, second = result.rounds
    assert first.error is not None
    assert "out-of-range" in first.error
    assert first.trained == ()
    assert first.accuracy == result.initial_accuracy  # the global model did not move
    assert second.error is None
    assert sorted(second.trained) == ["device-0", "device-1", "device-2"]
