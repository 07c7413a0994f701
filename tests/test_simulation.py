from pathlib import Path

import pytest
from cohorts import FEW_DEVICES, NO_COLLUSION

from fedmarket import FederationPlan, SimulatedFleet, run_federation
from fedmarket.exceptions import LedgerMissing
from fedmarket.privacy import DpConfig, PrivacyLedger, Spend, TrainConfig
from strategies import FedAvg


@pytest.mark.integration
@pytest.mark.slow
def test_flower_simulation_three_devices_two_rounds_improves_accuracy(tmp_path: Path) -> None:
    fleet = SimulatedFleet(
        num_devices=3, home=tmp_path, epsilon_cap=10.0, secagg_policy=NO_COLLUSION
    )
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(
            learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=6, batch_size=64
        ),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
        secagg=FEW_DEVICES,
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


def test_the_simulation_creates_its_devices_ledgers_and_refuses_a_deleted_one(
    tmp_path: Path,
) -> None:
    """The simulation owns its devices: it creates the ledger of an identity that has none,
    keyed by a key derived from the fleet's seed (or the payout key), and reuses it after."""
    fleet = SimulatedFleet(num_devices=2, home=tmp_path, epsilon_cap=10.0)
    fleet.prepare_ledgers()
    ledger = fleet.profile(0).ledger()
    ledger.reserve(Spend(1.5, 0.05, 20), round_label="r").commit()

    fleet.prepare_ledgers()  # a second run continues the same ledgers
    assert fleet.profile(0).ledger().epsilon() == ledger.epsilon() > 0
    assert len(PrivacyLedger.find(tmp_path)) == 2
    paid = SimulatedFleet(num_devices=2, home=tmp_path, epsilon_cap=10.0, payout_seed="s")
    account = paid.profile(0).account
    assert account is not None
    assert paid.profile(0).identity.address == account.address  # the payout key, when paid

    ledger.path.unlink()
    with pytest.raises(LedgerMissing, match="was deleted"):
        fleet.prepare_ledgers()
