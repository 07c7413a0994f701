import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from fedmarket.data import Dataset
from fedmarket.device import DeviceProfile
from fedmarket.exceptions import (
    InvalidInput,
    LedgerCorrupted,
    LedgerMissing,
    PrivacyBudgetExceeded,
)
from fedmarket.privacy import PrivacyLedger, Spend
from fedmarket.privacy.accounting import PRV_RDP_LIMIT
from fedmarket.types import DatasetId, DeviceId


def key(name: str) -> LocalAccount:
    account: LocalAccount = Account.from_key(hashlib.sha256(name.encode()).digest())
    return account


DEVICE, OTHER = key("device"), key("another device")
REFUSED = (LedgerCorrupted, LedgerMissing)

spends = st.builds(
    Spend,
    noise_multiplier=st.sampled_from([0.8, 1.0, 1.5, 2.5]),
    sample_rate=st.sampled_from([0.01, 0.05, 0.2, 0.5]),
    steps=st.integers(1, 60),
)
# One ledger operation: reserve a spend and then commit it, release it, or crash (leave it
# pending); optionally restart the process (a fresh PrivacyLedger reading the same file).
operations = st.tuples(spends, st.sampled_from(["commit", "release", "crash"]), st.booleans())


def new_ledger(home: Path, cap: float, accountant: str = "rdp") -> PrivacyLedger:
    return PrivacyLedger.create(home, DEVICE, epsilon_cap=cap, accountant=accountant)  # type: ignore[arg-type]


def reopen(home: Path) -> PrivacyLedger:
    return PrivacyLedger.open(home, DEVICE)


def run_history(home: Path, cap: float, ops: list, accountant: str) -> list[float]:
    """Apply ``ops`` to a ledger (created if the home has none) and return epsilon after each;
    check the invariants on the way."""
    exists = PrivacyLedger.find(home)
    ledger = reopen(home) if exists else new_ledger(home, cap, accountant)
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
            ledger = reopen(home)
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
    ledger = new_ledger(tmp_path, 1000.0, accountant)
    reference = cls()
    for spend in history:
        ledger.reserve(spend, round_label="r").commit()
        for _ in range(spend.steps):
            reference.step(noise_multiplier=spend.noise_multiplier, sample_rate=spend.sample_rate)
    # PRV: Opacus's default error is an absolute 0.01; the ledger asks for 0.3 % of the RDP
    # bound, so both are upper bounds and the ledger's is the tighter, by at most 0.01.
    expected = reference.get_epsilon(delta=1e-5)
    if accountant == "prv":
        assert expected - 0.01 <= ledger.epsilon() <= expected
    else:
        assert ledger.epsilon() == pytest.approx(expected, rel=1e-6)


def test_pending_spend_from_a_crash_still_counts_after_restart(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path, 100.0)
    ledger.reserve(Spend(1.0, 0.1, 20), round_label="crashed")  # never settled
    restarted = reopen(tmp_path)
    assert restarted.epsilon() > 0
    assert [e.status for e in restarted.entries] == ["pending"]


def test_round_past_the_cap_is_declined_with_the_numbers(tmp_path: Path) -> None:
    ledger = new_ledger(tmp_path, 1.0)
    written = ledger.path.read_bytes()
    with pytest.raises(PrivacyBudgetExceeded, match=r"above the owner's cap 1\.000") as info:
        ledger.reserve(Spend(0.5, 0.5, 50), round_label="r")
    assert info.value.spent == 0
    assert info.value.would_spend > 1.0
    assert ledger.path.read_bytes() == written  # nothing was written


def test_settling_twice_is_refused(tmp_path: Path) -> None:
    reservation = new_ledger(tmp_path, 100.0).reserve(Spend(1.0, 0.1, 5), round_label="r")
    reservation.commit()
    with pytest.raises(InvalidInput, match="already"):
        reservation.release()


@pytest.mark.parametrize(
    ("cap", "delta", "message"),
    [
        (0.0, 1e-5, "epsilon cap"),
        (-1.0, 1e-5, "epsilon cap"),
        (float("nan"), 1e-5, "epsilon cap"),
        (1.0, 0.0, "delta"),
        (1.0, 1.0, "delta"),
    ],
)
def test_bad_cap_or_delta_is_refused(
    tmp_path: Path, cap: float, delta: float, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        PrivacyLedger.create(tmp_path, DEVICE, epsilon_cap=cap, delta=delta)
    assert PrivacyLedger.find(tmp_path) == []


# -- the ledger belongs to the identity, and is never silently empty -------------------------


def spent_ledger(home: Path, rounds: int = 3) -> PrivacyLedger:
    ledger = new_ledger(home, 100.0)
    for index in range(rounds):
        ledger.reserve(Spend(1.0, 0.1, 20), round_label=f"r{index}").commit()
    return ledger


def test_a_missing_ledger_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    with pytest.raises(LedgerMissing, match="--new-ledger") as info:
        reopen(tmp_path)
    assert not info.value.deleted
    assert info.value.exit_code == 12
    assert not (tmp_path / "privacy").exists()  # opening creates nothing


def test_deleting_the_ledger_is_refused_and_not_replaced(tmp_path: Path) -> None:
    ledger = spent_ledger(tmp_path)
    ledger.path.unlink()

    with pytest.raises(LedgerMissing, match="was deleted") as info:
        reopen(tmp_path)
    assert info.value.deleted
    with pytest.raises(LedgerMissing, match="was deleted"):
        new_ledger(tmp_path, 100.0)  # a new ledger cannot take the deleted one's place
    with pytest.raises(LedgerMissing, match="was deleted"):
        PrivacyLedger.read(ledger.path)


def test_truncating_the_ledger_is_refused(tmp_path: Path) -> None:
    ledger = spent_ledger(tmp_path)
    document = json.loads(ledger.path.read_text())
    for keep in range(1, len(document["entries"])):
        ledger.path.write_text(json.dumps({**document, "entries": document["entries"][:keep]}))
        with pytest.raises(LedgerCorrupted, match="behind or differs from its head"):
            reopen(tmp_path)
    ledger.path.write_text(json.dumps({**document, "entries": []}))
    with pytest.raises(LedgerCorrupted, match="no entries"):
        reopen(tmp_path)
    ledger.path.write_text(ledger.path.read_text()[:100])
    with pytest.raises(LedgerCorrupted, match="unreadable"):
        reopen(tmp_path)


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 1.5 + 1
    if isinstance(value, str):
        return value + "0"
    if value is None:
        return "x"
    if isinstance(value, dict):
        return {**value, "extra": 1}
    raise AssertionError(value)


def fields(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    return [(f,) for f in entry if f != "body"] + [("body", f) for f in entry["body"]]


def test_editing_any_field_of_any_entry_is_refused(tmp_path: Path) -> None:
    ledger = spent_ledger(tmp_path, rounds=2)
    ledger.declare_new_data(dataset=DatasetId("f" * 64))
    ledger.use_settings(epsilon_cap=50.0, delta=1e-5, accountant="rdp")
    ledger.reserve(Spend(1.0, 0.1, 20), round_label="pending")
    pristine = json.loads(ledger.path.read_text())
    assert {e["kind"] for e in pristine["entries"]} == {
        "genesis",
        "reserve",
        "settle",
        "new-data",
        "cap",
    }
    edits = 0
    for index, entry in enumerate(pristine["entries"]):
        for path in fields(entry):
            document = json.loads(json.dumps(pristine))
            target = document["entries"][index]
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = changed(target[path[-1]])
            ledger.path.write_text(json.dumps(document))
            # Every field refuses when all signatures are checked (`device status`); opening
            # to train checks the last signature, which covers every earlier entry's content.
            with pytest.raises(LedgerCorrupted):
                PrivacyLedger.read(ledger.path)
            if path != ("signature",) or index == len(pristine["entries"]) - 1:
                with pytest.raises(LedgerCorrupted):
                    reopen(tmp_path)
            edits += 1
    assert edits > 40


def test_reordering_or_dropping_a_middle_entry_is_refused(tmp_path: Path) -> None:
    ledger = spent_ledger(tmp_path)
    pristine = json.loads(ledger.path.read_text())
    entries = pristine["entries"]
    for edited in (
        [entries[0], entries[2], entries[1], *entries[3:]],
        [entries[0], *entries[2:]],
        [*entries[:3], entries[1], *entries[3:]],
    ):
        ledger.path.write_text(json.dumps({**pristine, "entries": edited}))
        with pytest.raises(LedgerCorrupted):
            reopen(tmp_path)


def test_another_identitys_ledger_is_refused(tmp_path: Path) -> None:
    mine = spent_ledger(tmp_path / "mine", rounds=3)
    theirs = PrivacyLedger.create(tmp_path / "theirs", OTHER, epsilon_cap=100.0)

    shutil.copy(theirs.path, mine.path)  # a fresh ledger of another key over mine
    with pytest.raises(LedgerCorrupted, match="not the privacy ledger of identity"):
        reopen(tmp_path / "mine")
    shutil.copy(theirs.head_path, mine.head_path)  # ... with its head too
    with pytest.raises(LedgerCorrupted):
        reopen(tmp_path / "mine")

    # the other key's entries relabelled as mine do not verify: they are not signed by my key
    document = json.loads(theirs.path.read_text())
    document["identity"] = DEVICE.address
    document["entries"][0]["body"]["identity"] = DEVICE.address
    mine.path.write_text(json.dumps(document))
    mine.head_path.unlink()
    with pytest.raises(LedgerCorrupted, match="not signed by identity"):
        reopen(tmp_path / "mine")


def test_a_missing_head_is_refused_and_an_interrupted_create_may_be_redone(
    tmp_path: Path,
) -> None:
    ledger = spent_ledger(tmp_path)
    ledger.head_path.unlink()
    with pytest.raises(LedgerCorrupted, match="head file"):
        reopen(tmp_path)

    fresh = tmp_path / "fresh"
    created = new_ledger(fresh, 5.0)
    created.path.unlink()  # as if the process died after the head, before the ledger
    with pytest.raises(LedgerMissing, match="--new-ledger"):
        reopen(fresh)
    assert new_ledger(fresh, 5.0).epsilon() == 0  # nothing was spent: it may start again


def test_creating_over_an_existing_ledger_is_refused(tmp_path: Path) -> None:
    spent_ledger(tmp_path)
    with pytest.raises(InvalidInput, match="already has a privacy ledger"):
        new_ledger(tmp_path, 100.0)


def device_data(tweak: str = "") -> Dataset:
    rng = np.random.default_rng(0)
    features = rng.random((30, 4), dtype=np.float32)
    labels = np.arange(30) % 3
    if tweak == "one value by 1e-4":
        features[7, 2] += 1e-4
    elif tweak == "a row appended":
        features, labels = np.vstack([features, features[:1]]), np.append(labels, labels[0])
    elif tweak == "rows re-sorted":
        order = np.argsort(features[:, 0])
        features, labels = features[order], labels[order]
    return Dataset(features, labels, ("a", "b", "c"), "mine")


def device(name: str, data: Dataset, home: Path) -> DeviceProfile:
    return DeviceProfile(
        device=DeviceId(name), data=data, home=home, epsilon_cap=4.5, identity=DEVICE
    )


@pytest.mark.parametrize("tweak", ["one value by 1e-4", "a row appended", "rows re-sorted"])
def test_changing_the_data_keeps_the_cumulative_epsilon(tmp_path: Path, tweak: str) -> None:
    """Issue 15: each of these used to start a fresh budget on records already spent."""
    first = device("phone", device_data(), tmp_path)
    ledger = first.create_ledger()
    data = first.data.fingerprint()
    ledger.reserve(Spend(1.5, 0.05, 20), round_label="r1", dataset=data).commit()
    spent = ledger.epsilon()

    edited = device("phone", device_data(tweak), tmp_path)
    # the same records in another order are the same data set by name, too
    assert (edited.data.fingerprint() == data) == (tweak == "rows re-sorted")
    again = edited.ledger()
    assert again.path == ledger.path
    assert again.epsilon() == spent
    after = again.reserve(
        Spend(1.5, 0.05, 20), round_label="r2", dataset=edited.data.fingerprint()
    ).epsilon_after
    assert after > spent  # composed with the first round, not started from 0


def test_renaming_the_device_keeps_its_ledger(tmp_path: Path) -> None:
    phone = device("phone", device_data(), tmp_path)
    phone.create_ledger().reserve(Spend(1.5, 0.05, 20), round_label="r", device="phone").commit()

    renamed = device("tablet", device_data(), tmp_path).ledger()

    assert renamed.epsilon() == phone.ledger().epsilon() > 0
    assert [e.status for e in renamed.entries] == ["spent"]
    assert PrivacyLedger.find(tmp_path) == [renamed.path]
    assert renamed.path.name == f"{DEVICE.address}.json"


def test_new_data_starts_a_new_generation_recorded_in_the_chain(tmp_path: Path) -> None:
    old = device("phone", device_data(), tmp_path)
    ledger = old.create_ledger()
    ledger.reserve(Spend(1.5, 0.05, 20), round_label="r", dataset=old.data.fingerprint()).commit()
    spent = ledger.epsilon()

    with pytest.raises(InvalidInput, match="not new"):
        ledger.declare_new_data(dataset=old.data.fingerprint())  # the same records again
    resorted = device("phone", device_data("rows re-sorted"), tmp_path)
    with pytest.raises(InvalidInput, match="not new"):  # ... in another order (red team)
        ledger.declare_new_data(dataset=resorted.data.fingerprint())
    generation = ledger.declare_new_data(dataset=DatasetId("ab" * 32), device="phone")

    restarted = reopen(tmp_path)
    assert generation == restarted.generation == 1
    assert restarted.epsilon() == 0
    assert restarted.epsilon_of(0) == spent  # the old records keep their ε
    assert [e.generation for e in restarted.history] == [0]
    document = json.loads(restarted.path.read_text())
    assert document["entries"][-1]["kind"] == "new-data"
    assert document["entries"][-1]["body"]["dataset"] == "ab" * 32
    PrivacyLedger.read(restarted.path)  # signed like every entry


def test_epsilon_never_goes_down_when_a_concurrent_reservation_is_released(
    tmp_path: Path,
) -> None:
    """Two rounds at once: the second reports ε with the first pending; when the first is
    released the ledger still reports at least what the second signed."""
    ledger = new_ledger(tmp_path, 100.0)
    first = ledger.reserve(Spend(0.8, 0.2, 50), round_label="a")
    second = reopen(tmp_path).reserve(Spend(1.0, 0.05, 5), round_label="b")
    second.commit()
    first.release()

    restarted = reopen(tmp_path)
    assert restarted.epsilon() >= second.epsilon_after
    third = restarted.reserve(Spend(1.0, 0.05, 5), round_label="c")
    assert third.epsilon_after >= second.epsilon_after


def test_a_new_cap_and_settings_are_the_owners(tmp_path: Path) -> None:
    ledger = spent_ledger(tmp_path)
    ledger.use_settings(epsilon_cap=2.0, delta=1e-5, accountant="rdp")
    assert reopen(tmp_path).epsilon_cap == 2.0
    with pytest.raises(PrivacyBudgetExceeded):
        reopen(tmp_path).reserve(Spend(1.0, 0.1, 20), round_label="r")
    with pytest.raises(InvalidInput, match="use the ledger's settings"):
        ledger.use_settings(epsilon_cap=2.0, delta=1e-6, accountant="rdp")
    with pytest.raises(InvalidInput, match="read-only"):
        PrivacyLedger.read(ledger.path).reserve(Spend(1.0, 0.1, 20), round_label="r")


# -- any edit after any history: refused, or the ε is still at least the true one ------------

EDITS = [
    "delete",
    "truncate",
    "flip byte",
    "change field",
    "swap entries",
    "drop entry",
    "drop head",
    "old copy",
]


def edit_ledger(ledger: PrivacyLedger, edit: str, old: bytes, data: st.DataObject) -> None:
    """One hostile or careless edit of the ledger file (or its head) alone."""
    raw = ledger.path.read_bytes()
    document = json.loads(raw)
    entries = document["entries"]
    if edit == "delete":
        ledger.path.unlink()
    elif edit == "drop head":
        ledger.head_path.unlink()
    elif edit == "old copy":
        ledger.path.write_bytes(old)
    elif edit == "flip byte":
        # the file's length varies with its timestamps: draw from a fixed range, so that
        # hypothesis sees the same strategy when it replays an example
        at = data.draw(st.integers(0, 1 << 20)) % len(raw)
        bit = data.draw(st.integers(0, 7))
        ledger.path.write_bytes(raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1 :])
    else:
        if edit == "truncate":
            del entries[data.draw(st.integers(0, len(entries) - 1)) :]
        elif edit == "change field":
            index = data.draw(st.integers(0, len(entries) - 1))
            path = data.draw(st.sampled_from(fields(entries[index])))
            target = entries[index]
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = changed(target[path[-1]])
        elif len(entries) > 2:
            i = data.draw(st.integers(1, len(entries) - 2))
            if edit == "swap entries":
                entries[i], entries[i + 1] = entries[i + 1], entries[i]
            else:
                del entries[i]
        ledger.path.write_text(json.dumps(document))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cap=st.floats(2, 20),
    ops=st.lists(operations, min_size=1, max_size=6),
    edit=st.sampled_from(EDITS),
    data=st.data(),
)
def test_any_edit_of_any_history_is_refused_or_keeps_the_epsilon(
    tmp_path_factory: pytest.TempPathFactory, cap: float, ops: list, edit: str, data: Any
) -> None:
    home = tmp_path_factory.mktemp("home")
    old = new_ledger(home, cap).path.read_bytes()  # the genesis alone
    run_history(home, cap, ops, "rdp")
    truth = reopen(home).epsilon()
    if data.draw(st.booleans()):  # an older copy from part-way through the history
        old = reopen(home).path.read_bytes()
        reopen(home).reserve(Spend(2.5, 0.01, 1), round_label="last").commit()
        truth = reopen(home).epsilon()

    edit_ledger(reopen(home), edit, old, data)

    for read in (lambda: reopen(home), lambda: PrivacyLedger.read(reopen_path(home))):
        try:
            ledger = read()
        except REFUSED:
            continue
        assert ledger.epsilon() >= truth - 1e-9


def reopen_path(home: Path) -> Path:
    return PrivacyLedger.path_for(home, DEVICE.address)


DECLINE_PROBE = """
import hashlib, resource, sys, time
from pathlib import Path
from eth_account import Account
from fedmarket.exceptions import PrivacyBudgetExceeded
from fedmarket.privacy import PrivacyLedger, Spend

key = Account.from_key(hashlib.sha256(b"device").digest())
ledger = PrivacyLedger.create(Path(sys.argv[1]), key, epsilon_cap=8.0, accountant="prv")
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
    assert reopen(tmp_path).entries == ()


JUDGE_PROBE = """
import json, resource, sys, time
from fedmarket.privacy import Spend, calibrate_noise, epsilon

case = json.loads(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if "target" in case:
    value = calibrate_noise(case["target"], delta=1e-5, sample_rate=case["q"],
                            steps=case["steps"])
else:
    value = epsilon([Spend(*s) for s in case["history"]], delta=1e-5, accountant="prv")
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(value, seconds, grown)
"""


@pytest.mark.parametrize(
    "case",
    [
        # a tiny q for a million steps: the RDP bound is small, PRV's grid was not (4 GB)
        {"history": [[5.0, 1e-6, 1_000_000]]},
        # a server that moves sigma a little every round: 300 parts (PRV: 6 GB at 400)
        {"history": [[2.3 + 0.001 * i, 0.33, 12] for i in range(300)]},
        # two tasks whose rounds interleave: two parts, however often they alternate
        {"history": [[2.3 if i % 2 else 1.7, 0.33 if i % 2 else 0.1, 5] for i in range(300)]},
        # a small epsilon over many steps: PRV's finer pass took 13 s and 2.8 GB
        {"history": [[8.0, 0.001, 5_000]]},
        {"history": [[2.0, 0.001, 1_666], [3.0, 0.002, 1_666], [4.0, 0.003, 1_666]]},
        # a per-round target that PRV calibrated in 20 s and 1.9 GB
        {"target": 100.0, "q": 0.33, "steps": 12},
        {"target": 1000.0, "q": 0.5, "steps": 100},
    ],
    ids=[
        "tiny-q-many-steps",
        "300-parts",
        "interleaved-tasks",
        "small-epsilon-5000-steps",
        "three-parts-5000-steps",
        "target-100",
        "target-1000",
    ],
)
def test_any_history_or_round_config_is_judged_in_bounded_time_and_memory(
    case: dict[str, object],
) -> None:
    """Red team, issue 15: each of these took PRV tens of seconds or gigabytes."""
    run = subprocess.run(
        [sys.executable, "-c", JUDGE_PROBE, json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    value, seconds, grown_mb = (float(x) for x in run.stdout.strip().split())

    assert math.isfinite(value)
    assert value > 0
    assert seconds < 10  # they took 20-195 s; ~1.5 s here (RDP bisection), with room for load
    assert grown_mb < 200


def test_prv_past_its_limit_reports_the_rdp_bound(tmp_path: Path) -> None:
    """Where the RDP bound passes PRV_RDP_LIMIT the ledger reports it (an upper bound)."""
    history = [Spend(0.3, 0.05, 200)]
    ledger = new_ledger(tmp_path, 1e6, "prv")
    ledger.reserve(history[0], round_label="r").commit()
    reference = RDPAccountant()
    reference.history = [(0.3, 0.05, 200)]

    bound = reference.get_epsilon(delta=1e-5)
    assert bound > PRV_RDP_LIMIT
    assert ledger.epsilon() == pytest.approx(bound)
