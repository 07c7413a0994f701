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
        train=TrainConfig(learning_rate=2.5, momentum=0.5, local_epochs=2, batch_size=64),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
    )
    result = run_federation(fleet, plan, FedAvg())
    assert [r.round for r in result.rounds] == [1, 2]
    assert all(len(r.trained) == 3 and not r.failed for r in result.rounds)
    assert result.rounds[-1].accuracy > result.initial_accuracy + 0.2
    for index in range(3):
        ledger = fleet.profile(index).ledger()
        assert [e.status for e in ledger.entries] == ["spent", "spent"]
        assert 0 < ledger.epsilon() <= 10.0
        assert result.rounds[-1].epsilon[f"device-{index}"] == pytest.approx(ledger.epsilon())
