"""`device join` refuses to train without a privacy ledger unless the owner says why; `device
status` verifies every ledger and says which one is refused."""

import json
from pathlib import Path

import pytest
from cli_invoke import invoke

from fedmarket.keys import KeyStore, load_keystore
from fedmarket.privacy import PrivacyLedger, Spend

PASSPHRASE = "device passphrase"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FEDMARKET_HOME", str(home))
    monkeypatch.setenv("FEDMARKET_PASSPHRASE", PASSPHRASE)
    KeyStore(home / "keys").new("phone", PASSPHRASE)
    return home


def join(monkeypatch: pytest.MonkeyPatch, home: Path, *flags: str) -> int:
    """`device join` up to the SuperNode: the CA certificate does not exist, so a join that
    passes the ledger checks stops there (exit 2) and starts nothing."""
    return invoke(
        monkeypatch,
        "device",
        "join",
        "--superlink",
        "127.0.0.1:1",
        "--data",
        "digits",
        "--key",
        str(home / "keys" / "phone.json"),
        "--epsilon-cap",
        "4",
        "--root-certificates",
        str(home / "no-ca.crt"),
        "--node-key",
        str(home / "no-node.key"),
        *flags,
    )


def test_join_without_a_ledger_fails_before_training_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert join(monkeypatch, home) == 12  # LedgerMissing
    err = capsys.readouterr().err
    assert "no privacy ledger for identity" in err
    assert "--new-ledger" in err
    assert "ε starts at 0" in err
    assert "restore its ledger from a backup" in err
    assert PrivacyLedger.find(home) == []
    assert not (home / "devices").exists()  # no SuperNode was started


def test_new_ledger_then_new_data_are_explicit_and_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert join(monkeypatch, home, "--new-ledger") == 2  # created; then the missing CA stops it
    err = capsys.readouterr().err
    assert "privacy ledger" in err
    assert "ε 0.000 of cap 4 (generation 0)" in err
    assert "CA certificate" in err
    (path,) = PrivacyLedger.find(home)

    assert join(monkeypatch, home, "--new-ledger") == 2
    assert "already has a privacy ledger" in capsys.readouterr().err
    assert join(monkeypatch, home, "--new-data") == 2  # the same digits are not new
    assert "it is not new" in capsys.readouterr().err
    assert join(monkeypatch, home, "--new-data", "--new-ledger") == 2
    assert "exclude each other" in capsys.readouterr().err
    assert join(monkeypatch, home) == 2  # the ledger exists: on to the CA certificate
    assert PrivacyLedger.read(path).generation == 0


def test_new_ledger_is_refused_for_a_key_with_acknowledgements(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    address = load_keystore(home / "keys" / "phone.json", PASSPHRASE).address
    acks = home / "acks" / address
    acks.mkdir(parents=True)
    (acks / "31337-0x00-task-1.json").write_text("[]")

    assert join(monkeypatch, home, "--new-ledger") == 2
    assert "trained before" in capsys.readouterr().err
    assert PrivacyLedger.find(home) == []


def test_status_shows_each_ledger_and_refuses_a_truncated_or_deleted_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    account = load_keystore(home / "keys" / "phone.json", PASSPHRASE)
    ledger = PrivacyLedger.create(home, account, epsilon_cap=4.0, device="phone")
    ledger.reserve(Spend(1.5, 0.05, 20), round_label="r1").commit()
    ledger.reserve(Spend(1.5, 0.05, 20), round_label="r2").commit()

    assert invoke(monkeypatch, "device", "status", "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)["ledgers"]
    assert (row["identity"], row["device"], row["generation"]) == (account.address, "phone", 0)
    assert row["rounds"] == 2
    assert row["epsilon"] == pytest.approx(ledger.epsilon())
    assert row["remaining"] == pytest.approx(4.0 - ledger.epsilon())
    assert row["problem"] is None
    assert invoke(monkeypatch, "device", "status") == 0
    assert f"{account.address[:8]}…{account.address[-6:]}" in capsys.readouterr().out

    document = json.loads(ledger.path.read_text())
    document["entries"] = document["entries"][:-2]  # the last round's entries dropped
    ledger.path.write_text(json.dumps(document))
    assert invoke(monkeypatch, "device", "status", "--json") == 11  # LedgerCorrupted
    captured = capsys.readouterr()
    (row,) = json.loads(captured.out)["ledgers"]  # the JSON is still printed
    assert "behind or differs from its head" in row["problem"]
    assert "restore the ledger" in captured.err

    ledger.path.unlink()
    assert invoke(monkeypatch, "device", "status") == 12  # LedgerMissing
    captured = capsys.readouterr()
    assert "REFUSED" in captured.out
    assert "was deleted" in captured.err
