import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from fedmarket.exceptions import InvalidInput, LedgerCorrupted, PrivacyBudgetExceeded
from fedmarket.privacy import PrivacyLedger, Spend
from fedmarket.privacy.accounting import PRV_RDP_LIMIT
from fedmarket.types import DatasetId, DeviceId

spends = st.builds(
    Spend,
    noise_multiplier=st.sampled_from([0.8, 1.0, 1.5, 2.5]),
    sample_rate=st.sampled_from([0.01, 0.05, 0.2, 0.5]),
    steps=st.integers(1, 60),
)
# One ledger operation: reserve a spend and then commit it, release it, or crash (leave it
# pending); optionally restart the process (a fresh PrivacyLedger reading the same file).
operations = st.tuples(spends, st.sampled_from(["commit", "release", "crash"]), st.booleans())


def open_ledger(home: Path, cap: float, accountant: str = "rdp") -> PrivacyLedger:
    return PrivacyLedger(
        home,
        device=DeviceId("dev"),
        dataset=DatasetId("data"),
        epsilon_cap=cap,
        accountant=accountant,  # type: ignore[arg-type]
    )


def run_history(home: Path, cap: float, ops: list, accountant: str) -> list[float]:
    """Apply ``ops`` and return epsilon after each; check the invariants on the way."""
    ledger = open_ledger(home, cap, accountant)
    seen = []
    for spend, outcome, restart in ops:
        before = ledger.epsilon()
        try:
            reservation = ledger.reserve(spend, round_label="r")
        except PrivacyBudgetExceeded as exc:
            assert exc.would_spend > cap  # noqa: PT017  (a property loop, not a single raise)
            assert ledger.epsilon() == before  # a declined round writes nothing
        else:
            if outcome == "commit":
                reservation.commit()
            elif outcome == "release":
                reservation.release()
        after = ledger.epsilon()
        if outcome != "release":
            assert after >= before - 1e-9  # epsilon never decreases
        assert after <= cap  # never past the cap, pending entries included
        if restart:
            ledger = open_ledger(home, cap, accountant)
            assert ledger.epsilon() == pytest.approx(after)  # survives the restart
        seen.append(after)
    return seen


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cap=st.floats(0.5, 20), ops=st.lists(operations, min_size=1, max_size=12))
def test_rdp_ledger_never_passes_cap_and_never_decreases(
    tmp_path_factory: pytest.TempPathFactory, cap: float, ops: list
) -> None:
    run_history(tmp_path_factory.mktemp("home"), cap, ops, "rdp")


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cap=st.floats(1, 15), ops=st.lists(operations, min_size=1, max_size=5))
def test_prv_ledger_never_passes_cap_and_never_decreases(
    tmp_path_factory: pytest.TempPathFactory, cap: float, ops: list
) -> None:
    run_history(tmp_path_factory.mktemp("home"), cap, ops, "prv")


@pytest.mark.parametrize(("accountant", "cls"), [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_epsilon_equals_opacus_accountant_stepped_through_the_same_history(
    tmp_path: Path, accountant: str, cls: type
) -> None:
    history = [Spend(1.1, 0.05, 30), Spend(1.1, 0.05, 30), Spend(2.0, 0.25, 8)]
    ledger = open_ledger(tmp_path, 1000.0, accountant)
    reference = cls()
    for spend in history:
        ledger.reserve(spend, round_label="r").commit()
        for _ in range(spend.steps):
            reference.step(noise_multiplier=spend.noise_multiplier, sample_rate=spend.sample_rate)
    assert ledger.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)


def test_pending_spend_from_a_crash_still_counts_after_restart(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, 100.0)
    ledger.reserve(Spend(1.0, 0.1, 20), round_label="crashed")  # never settled
    restarted = open_ledger(tmp_path, 100.0)
    assert restarted.epsilon() > 0
    assert [e.status for e in restarted.entries] == ["pending"]


def test_round_past_the_cap_is_declined_with_the_numbers(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, 1.0)
    with pytest.raises(PrivacyBudgetExceeded, match=r"above the owner's cap 1\.000") as info:
        ledger.reserve(Spend(0.5, 0.5, 50), round_label="r")
    assert info.value.spent == 0
    assert info.value.would_spend > 1.0
    assert not ledger.path.exists()


def test_settling_twice_is_refused(tmp_path: Path) -> None:
    reservation = open_ledger(tmp_path, 100.0).reserve(Spend(1.0, 0.1, 5), round_label="r")
    reservation.commit()
    with pytest.raises(InvalidInput, match="already"):
        reservation.release()


def test_corrupt_or_foreign_ledger_files_are_refused(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path, 100.0)
    ledger.reserve(Spend(1.0, 0.1, 5), round_label="r").commit()
    document = json.loads(ledger.path.read_text())
    document["device"] = "someone-else"
    ledger.path.write_text(json.dumps(document))
    with pytest.raises(LedgerCorrupted, match="another device"):
        open_ledger(tmp_path, 100.0)
    ledger.path.write_text("{ half a file")
    with pytest.raises(LedgerCorrupted, match="unreadable"):
        open_ledger(tmp_path, 100.0)


@pytest.mark.parametrize(
    ("cap", "delta", "message"),
    [
        (0.0, 1e-5, "epsilon cap"),
        (-1.0, 1e-5, "epsilon cap"),
        (1.0, 0.0, "delta"),
        (1.0, 1.0, "delta"),
    ],
)
def test_bad_cap_or_delta_is_refused(
    tmp_path: Path, cap: float, delta: float, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        PrivacyLedger(
            tmp_path, device=DeviceId("d"), dataset=DatasetId("x"), epsilon_cap=cap, delta=delta
        )


DECLINE_PROBE = """
import resource, sys, time
from pathlib import Path
from fedmarket.exceptions import PrivacyBudgetExceeded
from fedmarket.privacy import PrivacyLedger, Spend
from fedmarket.types import DatasetId, DeviceId

ledger = PrivacyLedger(Path(sys.argv[1]), device=DeviceId("d"), dataset=DatasetId("x"),
                       epsilon_cap=8.0, accountant="prv")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    ledger.reserve(Spend(0.05, 0.005, 200), round_label="r")
except PrivacyBudgetExceeded as exc:
    outcome = f"declined at {exc.would_spend:.0f}"
else:
    outcome = "reserved"
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(outcome, seconds, grown)
"""


def test_a_hopeless_spend_is_declined_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """sigma 0.05, q 0.005, 200 steps: PRV alone asked for gigabytes and the kernel killed the
    device (issue 15). The RDP bound decides it; the peak memory grows by < 200 MB."""
    run = subprocess.run(
        [sys.executable, "-c", DECLINE_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome, seconds, grown_mb = run.stdout.strip().rsplit(" ", 2)

    assert outcome.startswith("declined")
    assert float(seconds) < 2.0
    assert float(grown_mb) < 200
    assert open_ledger(tmp_path, 8.0).entries == ()


def test_prv_past_its_limit_reports_the_rdp_bound(tmp_path: Path) -> None:
    """Where the RDP bound passes PRV_RDP_LIMIT the ledger reports it (an upper bound)."""
    history = [Spend(0.3, 0.05, 200)]
    ledger = open_ledger(tmp_path, 1e6, "prv")
    ledger.reserve(history[0], round_label="r").commit()
    reference = RDPAccountant()
    reference.history = [(0.3, 0.05, 200)]

    bound = reference.get_epsilon(delta=1e-5)
    assert bound > PRV_RDP_LIMIT
    assert ledger.epsilon() == pytest.approx(bound)
