"""``fedmarket store`` and ``fedmarket crypto``: round trips and bad input from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_invoke import invoke
from ipfs_daemon import IpfsDaemon

MISSING = "bafkreie4hmjgceutqgymmw7fdqp7x43haq6hlwkggoz55a6nng4sdqlrpy"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDMARKET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_add_get_verify_round_trip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 100_000)

    assert invoke(monkeypatch, "store", "add", str(source), "--json") == 0
    added = json.loads(capsys.readouterr().out)
    assert invoke(monkeypatch, "store", "verify", added["cid"]) == 0
    assert "ok (700000 B)" in capsys.readouterr().out
    assert invoke(monkeypatch, "store", "get", added["cid"], "--out", str(tmp_path / "b")) == 0

    assert (tmp_path / "b").read_bytes() == source.read_bytes()
    assert added["size"] == 700_000


def _store_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "store").rglob("*") if p.is_file()) if home.exists() else []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["add", "{tmp}/missing.bin"], 2, "missing.bin is not a file"),
        (["add", "{tmp}"], 2, "is not a file"),
        (["get", "not-a-cid", "--out", "{tmp}/out"], 2, "'not-a-cid' is not a CID"),
        (["verify", "Qm123"], 2, "is not a CID"),
        (["get", MISSING, "--out", "{tmp}/out"], 31, f"holds no object {MISSING}"),
        (
            [
                "add",
                "{tmp}/present.bin",
                "--backend",
                "ipfs",
                "--ipfs-api",
                "/ip4/127.0.0.1/tcp/9/http",
            ],
            32,
            "cannot reach the IPFS node at /ip4/127.0.0.1/tcp/9/http",
        ),
        (
            ["get", MISSING, "--out", "{tmp}/out", "--backend", "ipfs", "--ipfs-api", "nonsense"],
            32,
            "not an IPFS API address",
        ),
        (["add", "{tmp}/present.bin", "--backend", "s3"], 2, "'s3' is not one of"),
    ],
)
def test_bad_store_input_fails_clearly_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    home: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    (tmp_path / "present.bin").write_bytes(b"data")
    before = _store_files(home)

    assert invoke(monkeypatch, "store", *[a.format(tmp=tmp_path) for a in args]) == code

    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert _store_files(home) == before


def test_get_refuses_to_overwrite_without_force(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "out").write_bytes(b"precious")
    assert invoke(monkeypatch, "store", "add", str(tmp_path / "a")) == 0
    cid = capsys.readouterr().out.strip()

    assert invoke(monkeypatch, "store", "get", cid, "--out", str(tmp_path / "out")) == 2
    assert (tmp_path / "out").read_bytes() == b"precious"
    assert invoke(monkeypatch, "store", "get", cid, "--out", str(tmp_path / "out"), "--force") == 0
    assert (tmp_path / "out").read_bytes() == b"new"


@pytest.mark.integration
def test_ipfs_backend_round_trip(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    ipfs_daemon: IpfsDaemon,
) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"\x01" * 600_000)
    monkeypatch.setenv("FEDMARKET_IPFS_API", ipfs_daemon.api)

    assert invoke(monkeypatch, "store", "add", str(source), "--backend", "ipfs") == 0
    cid = capsys.readouterr().out.strip()
    assert invoke(monkeypatch, "store", "add", str(source)) == 0
    assert capsys.readouterr().out.strip() == cid  # local and IPFS agree
    out = tmp_path / "back.bin"
    assert invoke(monkeypatch, "store", "get", cid, "--out", str(out), "--backend", "ipfs") == 0
    assert out.read_bytes() == source.read_bytes()


def test_crypto_buyer_flow(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = tmp_path / "model.safetensors"
    plain.write_bytes(b"secret weights" * 10_000)
    assert invoke(monkeypatch, "crypto", "keygen", "--out", str(tmp_path / "buyer.id")) == 0
    buyer_public = capsys.readouterr().out.strip()
    assert invoke(monkeypatch, "crypto", "keygen", "--out", str(tmp_path / "other.id")) == 0
    capsys.readouterr()
    cipher, key = tmp_path / "model.enc", tmp_path / "asset.key"
    args = ["crypto", "encrypt", str(plain), "--out", str(cipher), "--key-out", str(key)]
    assert invoke(monkeypatch, *args, "--recipient", buyer_public, "--json") == 0
    sold = json.loads(capsys.readouterr().out)

    decrypt = ["crypto", "decrypt", str(cipher), "--sealed-key", sold["sealed_key"]]
    wrong = [*decrypt, "--identity", str(tmp_path / "other.id"), "--out", str(tmp_path / "x")]
    assert invoke(monkeypatch, *wrong) == 44
    assert "not sealed to this identity" in capsys.readouterr().err
    bad_commitment = ["--commitment", "00" * 32, "--identity", str(tmp_path / "buyer.id")]
    assert invoke(monkeypatch, *decrypt, *bad_commitment, "--out", str(tmp_path / "x")) == 45
    assert not (tmp_path / "x").exists()
    good = ["--commitment", sold["commitment"], "--identity", str(tmp_path / "buyer.id")]
    assert invoke(monkeypatch, *decrypt, *good, "--out", str(tmp_path / "plain")) == 0

    assert (tmp_path / "plain").read_bytes() == plain.read_bytes()
    assert key.read_text().strip() not in capsys.readouterr().out


def test_crypto_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "p").write_bytes(b"x")
    encrypt = ["crypto", "encrypt", str(tmp_path / "p"), "--out", str(tmp_path / "c")]
    assert invoke(monkeypatch, *encrypt, "--key-out", str(tmp_path / "k"), "--recipient", "zz") == 2
    assert "not an X25519 public key" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    assert not (tmp_path / "k").exists()
    assert (
        invoke(monkeypatch, "crypto", "decrypt", str(tmp_path / "p"), "--out", str(tmp_path / "o"))
        == 2
    )
    assert "exactly one of --key or --sealed-key" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
