"""`device status --key`: the ε a device signed into its published receipts, against its ledger.

The receipts are built here as `Receipt.for_update` builds them from the ε the ledger reserved
(what `handle_train` replies and the SecAgg mod signs), so each test plays one history."""

import hashlib
import math
import shutil
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fedmarket.device.signed_epsilon import SignedEpsilon, check_signed_epsilon
from fedmarket.privacy import PaidRound, PrivacyLedger, Reservation, Spend
from fedmarket.types import DatasetId

MARKET = "0x" + "ab" * 20
DEVICE: LocalAccount = Account.from_key(hashlib.sha256(b"device").digest())


def paid(task: int, round_: int) -> PaidRound:
    return PaidRound(31337, MARKET, task, round_)


def train(ledger: PrivacyLedger, task: int, round_: int) -> SignedEpsilon:
    """One paid round: reserve, commit, and the receipt the device signs for it."""
    reservation: Reservation = ledger.reserve(
        Spend(1.5, 0.05, 20), round_label=f"r{round_}", paid=paid(task, round_)
    )
    reservation.commit()
    return SignedEpsilon(
        paid(task, round_), math.ceil(reservation.epsilon_after * 1e6), round(1e-5 * 1e18)
    )


def test_honest_receipts_agree_across_tasks_and_generations(tmp_path: Path) -> None:
    ledger = PrivacyLedger.create(tmp_path, DEVICE, epsilon_cap=50.0)
    signed = [train(ledger, 1, 1), train(ledger, 2, 1), train(ledger, 1, 2)]
    ledger.declare_new_data(dataset=DatasetId("cd" * 32))
    signed.append(train(ledger, 1, 3))  # lower ε: new records, declared by the owner

    assert signed[-1].epsilon_micros < signed[-2].epsilon_micros
    assert check_signed_epsilon(PrivacyLedger.read(ledger.path), signed) == []


def test_a_ledger_rolled_back_with_its_head_is_caught_by_the_receipts(tmp_path: Path) -> None:
    """Restoring *both* files from an old copy passes the local checks (the module docstring
    says so); the receipts the device published since then show it."""
    ledger = PrivacyLedger.create(tmp_path, DEVICE, epsilon_cap=50.0)
    signed = [train(ledger, 1, 1)]
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "privacy", backup)
    signed += [train(ledger, 1, 2), train(ledger, 1, 3)]
    shutil.rmtree(tmp_path / "privacy")
    shutil.copytree(backup, tmp_path / "privacy")

    restored = PrivacyLedger.open(tmp_path, DEVICE)
    assert restored.epsilon() < ledger.epsilon()  # the budget went back ...
    problems = check_signed_epsilon(restored, signed)
    assert len(problems) == 2  # ... and rounds 2 and 3 say so
    assert all("the ledger has no such round" in p for p in problems)
    assert "task 1 round 2" in problems[0]


def test_a_ledger_started_over_for_a_key_that_trained_is_caught(tmp_path: Path) -> None:
    ledger = PrivacyLedger.create(tmp_path, DEVICE, epsilon_cap=50.0)
    signed = [train(ledger, 1, 1), train(ledger, 1, 2)]
    shutil.rmtree(tmp_path / "privacy")  # both files gone; the key kept
    fresh = PrivacyLedger.create(tmp_path, DEVICE, epsilon_cap=50.0)
    signed.append(train(fresh, 1, 3))

    problems = check_signed_epsilon(fresh, signed)

    assert len(problems) == 2
    assert all("no such round" in p for p in problems)


def test_a_receipt_below_an_earlier_one_or_the_ledger_is_reported(tmp_path: Path) -> None:
    ledger = PrivacyLedger.create(tmp_path, DEVICE, epsilon_cap=50.0)
    first, second = train(ledger, 1, 1), train(ledger, 1, 2)
    understated = SignedEpsilon(second.paid, first.epsilon_micros - 1, second.delta_e18)
    overstated = SignedEpsilon(second.paid, 10**9, second.delta_e18)
    other_delta = SignedEpsilon(second.paid, second.epsilon_micros, round(1e-6 * 1e18))

    went_down = check_signed_epsilon(ledger, [first, understated])
    assert any("ε went down" in p for p in went_down)
    assert any("the ledger reserved" in p for p in went_down)
    assert any("above the ledger's ε" in p for p in check_signed_epsilon(ledger, [overstated]))
    assert any("δ 1e-06" in p for p in check_signed_epsilon(ledger, [other_delta]))
