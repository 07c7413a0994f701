"""A local chain: anvil on 127.0.0.1 with its state persisted under the data directory.

anvil comes from the project's npm install (``contracts/node_modules/.bin/anvil``), from
``$FEDMARKET_ANVIL``, or from ``PATH``. Its state is dumped to ``state.json`` every few seconds
and on shutdown, and loaded on the next start, so tasks and balances survive restarts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fedmarket.exceptions import ChainUnavailable, InvalidInput
from fedmarket.processes import process_alive

ANVIL_ENV = "FEDMARKET_ANVIL"
DEFAULT_PORT = 8545
DEV_CHAIN_ID = 31337
# anvil's well-known development mnemonic: its accounts are funded with test ether on every
# local chain. Never use these keys anywhere else.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


def find_anvil() -> Path:
    """Locate the anvil binary, or explain how to install it."""
    candidates = [
        os.environ.get(ANVIL_ENV),
        shutil.which("anvil"),
        str(Path(__file__).resolve().parents[2] / "contracts" / "node_modules" / ".bin" / "anvil"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ChainUnavailable(
        "anvil is not installed: run `make chain` in the fedmarket checkout (npm), install "
        f"Foundry, or set ${ANVIL_ENV} to the binary"
    )


def dev_accounts(count: int) -> list[LocalAccount]:
    """anvil's funded development accounts (local chains only)."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
        for index in range(count)
    ]


@dataclass(frozen=True)
class ChainStatus:
    running: bool
    rpc_url: str
    pid: int | None
    chain_id: int | None
    block: int | None


def rpc(
    url: str, method: str, params: list[object] | None = None, *, timeout: float = 5.0
) -> object:
    """One JSON-RPC call (used before a Web3 object exists, and for anvil's own methods)."""
    try:
        payload: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        payload["params"] = params or []
        response = requests.post(url, json=payload, timeout=timeout)
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ChainUnavailable(f"no JSON-RPC answer from {url} ({type(exc).__name__})") from None
    if "error" in body:
        raise ChainUnavailable(f"{url} refused {method}: {body['error']}")
    return body["result"]


class LocalChain:
    """anvil as a background process whose files live in ``folder``."""

    def __init__(self, folder: Path, *, port: int = DEFAULT_PORT) -> None:
        if not 0 < port < 65536:
            raise InvalidInput(f"port must be in 1..65535, got {port}")
        self.folder = folder
        self.port = port
        self.rpc_url = f"http://127.0.0.1:{port}"
        self.state_file = folder / "state.json"
        self.pid_file = folder / "anvil.pid"
        self.log_file = folder / "anvil.log"

    def up(self, *, timeout: float = 30.0) -> ChainStatus:
        """Start anvil unless it already runs; wait until it answers."""
        current = self.status()
        if current.running:
            return current
        if self._answers():
            raise ChainUnavailable(
                f"something else already listens on {self.rpc_url}; stop it or pick --port"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            str(find_anvil()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(DEV_CHAIN_ID),
            "--state",
            str(self.state_file),
            "--state-interval",
            "5",
        ]
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # keeps running after the command that started it
            )
        self.pid_file.write_text(json.dumps({"pid": process.pid, "port": self.port}))
        deadline = time.monotonic() + timeout
        while not self._answers():
            if process.poll() is not None or time.monotonic() > deadline:
                self.down()
                raise ChainUnavailable(
                    f"anvil did not start on {self.rpc_url}; see {self.log_file}"
                )
            time.sleep(0.1)
        return self.status()

    def down(self, *, timeout: float = 20.0) -> bool:
        """Stop anvil (it saves its state first). Returns whether one was running."""
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid_file.unlink(missing_ok=True)
            return False
        deadline = time.monotonic() + timeout
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> ChainStatus:
        pid = self._pid()
        if pid is None or not self._answers():
            return ChainStatus(False, self.rpc_url, pid, None, None)
        chain_id = int(str(rpc(self.rpc_url, "eth_chainId")), 16)
        block = int(str(rpc(self.rpc_url, "eth_blockNumber")), 16)
        return ChainStatus(True, self.rpc_url, pid, chain_id, block)

    def _pid(self) -> int | None:
        try:
            pid = int(json.loads(self.pid_file.read_text())["pid"])
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return pid if process_alive(pid) else None

    def _answers(self) -> bool:
        try:
            rpc(self.rpc_url, "eth_chainId", timeout=1.0)
        except ChainUnavailable:
            return False
        return True
