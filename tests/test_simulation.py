from pathlib import Path

import pytest

from fedmarket import FederationPlan, SimulatedFleet, run_federation
from fedmarket.privacy import DpConfig, TrainConfig
from strategies import FedAvg


@pytest.mark.integration
@pytest.mark.slow
def test_flower_simulation_three_devices_two_rounds_improves_accuracy(tmp_path: Path) -> None:
    fleet = SimulatedFleet(num_devices=3, home=tmp_path, epsilon_cap=10.0)
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(
            learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=6, batch_size=64
        ),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
    )
    result = run_federation(fleet, plan, FedAvg())
    assert [r.round for r in result.rounds] == [1, 2]
    for r in result.rounds:  # summed under SecAgg+, the default
        assert r.secure
        assert sorted(r.trained) == ["device-0", "device-1", "device-2"]
        assert (r.dropped, r.failed, r.error) == ({}, (), None)
        assert r.clip_fraction is not None
        assert 0 <= r.clip_fraction < 0.01
        assert r.total_weight == 3  # every update weighs 1: no count leaves a device
    assert result.rounds[-1].accuracy > result.initial_accuracy + 0.2
    for index in range(3):
        ledger = fleet.profile(index).ledger()
        assert [e.status for e in ledger.entries] == ["spent", "spent"]
        assert 0 < ledger.epsilon() <= 10.0
        assert result.rounds[-1].epsilon[f"device-{index}"] == pytest.approx(ledger.epsilon())
