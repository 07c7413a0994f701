"""A federation on Flower's deployment engine, on loopback: one `fedmarket server start` and
`fedmarket device join` processes, each device with its own home, keystore, node key and data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from fedmarket.data.loaders import load_digits
from fedmarket.data.partition import iid_partition
from fedmarket.deploy.tls import make_certificates, make_node_key
from fedmarket.keys import KeyStore, load_keystore
from fedmarket.processes import free_port

PASSPHRASE = "device passphrase"
CLI = "from fedmarket.cli.main import run; run()"


def fedmarket(
    *args: str, home: Path, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A ``fedmarket`` command in its own process group (its Flower daemons die with it)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        env={**os.environ, "FEDMARKET_HOME": str(home), "FEDMARKET_PASSPHRASE": PASSPHRASE}
        | (env or {}),
        start_new_session=True,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the whole process group and wait."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Whatever the group left behind (SuperNode, task processes) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def write_digits(path: Path, rows: np.ndarray) -> None:
    """Some of scikit-learn's digits as the device's own NPZ file (x: images, y: labels)."""
    data = load_digits()
    np.savez(path, x=data.features[rows], y=data.labels[rows])


def pending_rounds(ledger: Path) -> list[str]:
    """Round labels of the reservations a privacy ledger file holds unsettled (none if it
    cannot be read yet)."""
    try:
        entries = json.loads(ledger.read_text())["entries"]
    except (OSError, ValueError):
        return []
    settled = {e["body"]["reserve"] for e in entries if e["kind"] == "settle"}
    return [
        e["body"]["round"] for e in entries if e["kind"] == "reserve" and e["seq"] not in settled
    ]


@dataclass
class Device:
    name: str
    home: Path
    keystore: Path
    data: Path
    node_key: Path
    address: str
    process: subprocess.Popen[bytes] | None = None

    def join(
        self, superlink: str, ca: Path, *, epsilon_cap: float = 100.0, extra: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        self.process = fedmarket(
            "device",
            "join",
            "--superlink",
            superlink,
            "--data",
            str(self.data),
            "--key",
            str(self.keystore),
            "--epsilon-cap",
            str(epsilon_cap),
            "--root-certificates",
            str(ca),
            "--node-key",
            str(self.node_key),
            "--name",
            self.name,
            # four devices cannot resist a colluder; the test operator assumes none (README)
            "--colluding-fraction",
            "0",
            # the owner's first run on this key creates its privacy ledger; later runs use it
            *(() if self.ledger().exists() else ("--new-ledger",)),
            *extra,
            home=self.home,
            log=self.home / "join.log",
        )
        return self.process

    def account(self) -> LocalAccount:
        return load_keystore(self.keystore, PASSPHRASE)

    def ledger(self) -> Path:
        """The privacy ledger of this device's key."""
        return self.home / "privacy" / f"{to_checksum_address(self.address)}.json"

    def pending_round(self, round_: int) -> bool:
        """This device has round ``round_``'s privacy spend reserved: it is training now."""
        return any(label.endswith(f"round{round_}") for label in pending_rounds(self.ledger()))


@dataclass
class Federation:
    root: Path
    certs: Path
    authorized: Path
    devices: list[Device]
    port: int

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"


def make_federation(root: Path, devices: int) -> Federation:
    """Certificates, and per device: a home, a keystore, a node key and a share of digits."""
    certs, authorized = root / "certs", root / "authorized"
    make_certificates(certs, ["127.0.0.1", "localhost"])
    authorized.mkdir(parents=True)
    held_out = 360
    order = np.random.default_rng(7).permutation(1797)[held_out:]
    parts = iid_partition(len(order), devices, seed=7)
    members = []
    for index in range(devices):
        name = f"device-{index}"
        home = root / name
        keys = KeyStore(home / "keys")
        address = keys.new(name, PASSPHRASE)
        node = make_node_key(home / "node")
        (authorized / f"{name}.pub").write_bytes(node.public_key.read_bytes())
        data = home / "digits.npz"
        write_digits(data, order[parts[index]])
        members.append(
            Device(name, home, home / "keys" / f"{name}.json", data, node.private_key, address)
        )
    return Federation(root, certs, authorized, members, free_port())


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
