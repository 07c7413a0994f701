"""``fedmarket keys`` and ``fedmarket chain``: keystores, a persisted local anvil, deployment."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cli_invoke import invoke
from net import free_port

from fedmarket.exceptions import KeystoreError
from fedmarket.keys import KeyStore
from fedmarket.ledger.chain import rpc

PASSPHRASE = "correct horse battery"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDMARKET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FEDMARKET_PASSPHRASE", PASSPHRASE)
    return tmp_path / "home"


def test_keys_new_list_address_never_show_the_passphrase(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert invoke(monkeypatch, "keys", "new", "device-1", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    assert invoke(monkeypatch, "keys", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert invoke(monkeypatch, "keys", "address", "device-1") == 0
    shown = capsys.readouterr()

    assert listed == [created]
    assert shown.out.strip() == created["address"]
    keystore = home / "keys" / "device-1.json"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert PASSPHRASE not in keystore.read_text()
    assert KeyStore(home / "keys").load("device-1", PASSPHRASE).address == created["address"]
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        KeyStore(home / "keys").load("device-1", "not the passphrase")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["keys", "new", "bad name"], 2, "must be 1-64 letters"),
        (["keys", "address", "nobody"], 54, "no key named 'nobody'"),
        (["chain", "deploy", "--rpc-url", "http://127.0.0.1:9"], 51, "no JSON-RPC answer"),
        (["chain", "up", "--port", "70000"], 2, "port must be in 1..65535"),
    ],
)
def test_bad_key_and_chain_input(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    home: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    assert invoke(monkeypatch, *args) == code
    err = capsys.readouterr().err
    assert message in err
    assert PASSPHRASE not in err
    assert not (home / "chain" / "deployments").exists()


def test_duplicate_key_name_is_refused_and_the_first_key_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    assert invoke(monkeypatch, "keys", "new", "sponsor") == 0
    first = (home / "keys" / "sponsor.json").read_text()
    assert invoke(monkeypatch, "keys", "new", "sponsor") == 2
    assert "exists" in capsys.readouterr().err
    assert (home / "keys" / "sponsor.json").read_text() == first


@pytest.mark.integration
def test_local_chain_keeps_its_state_across_restarts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path
) -> None:
    port = str(free_port())
    try:
        assert invoke(monkeypatch, "chain", "up", "--port", port, "--json") == 0
        url = json.loads(capsys.readouterr().out)["rpc_url"]
        assert invoke(monkeypatch, "chain", "deploy", "--port", port, "--json") == 0
        deployed = json.loads(capsys.readouterr().out)
        assert invoke(monkeypatch, "chain", "down", "--port", port) == 0
        assert invoke(monkeypatch, "chain", "status", "--port", port, "--json") == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["running"] is False

        assert invoke(monkeypatch, "chain", "up", "--port", port) == 0
        assert invoke(monkeypatch, "chain", "status", "--port", port, "--json") == 0
        status = json.loads(capsys.readouterr().out.splitlines()[-1])

        assert status["running"] is True
        assert status["deployment"]["market"] == deployed["market"]
        assert rpc(url, "eth_getCode", [deployed["market"], "latest"]) not in ("0x", "")
    finally:
        invoke(monkeypatch, "chain", "down", "--port", port)
