"""Flower's deployment engine as processes: a SuperLink, SuperNodes, and the ``flwr`` CLI.

Both daemons run in ``process`` isolation: they start no app processes themselves; our warm task
runner (``fedmarket.deploy.warm``) does, authenticated to their Runtime API by a shared secret.
Runtime dependency installation stays off: the apps run in this environment, never a fresh one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from fedmarket.deploy.tls import CertificatePaths
from fedmarket.exceptions import DeploymentError, InvalidInput
from fedmarket.files import read_secret, write_secret

APP_NAME = "fedmarket"  # the SuperLink connection's name in the flwr CLI config


@dataclass(frozen=True)
class Daemon:
    """A started SuperLink or SuperNode; its output goes to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def superexec_secret(path: Path) -> bytes:
    """The shared secret our task runner shows the Runtime API; made once, kept 0600."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret(path, secrets.token_hex(32).encode())
    return read_secret(path)


def start_superlink(
    *,
    host: str,
    port: int,
    certificates: CertificatePaths,
    database: Path,
    secret_file: Path,
    log_path: Path,
) -> Daemon:
    """A SuperLink serving the Fleet, Control and Runtime APIs over TLS on ``host:port``,
    admitting only registered SuperNodes."""
    certificates.check()
    command = [
        _tool("flower-superlink"),
        "--ssl-ca-certfile",
        str(certificates.ca),
        "--ssl-certfile",
        str(certificates.certificate),
        "--ssl-keyfile",
        str(certificates.private_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret_file),
        "--database",
        str(database),
        "--host",
        host,
        "--port",
        str(port),
    ]
    return _start(command, log_path, dial_address(host, port))


def start_supernode(
    *,
    superlink: str,
    root_certificates: Path,
    node_key: Path,
    runtime_port: int,
    node_config: Mapping[str, str | int | float | bool],
    secret_file: Path,
    log_path: Path,
) -> Daemon:
    """A SuperNode dialing ``superlink`` over TLS (trusting ``root_certificates``), signing in
    with ``node_key``; its Runtime API listens on loopback only."""
    command = [
        _tool("flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(root_certificates),
        "--auth-supernode-private-key",
        str(node_key),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(secret_file),
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
        "--node-config",
        format_node_config(node_config),
    ]
    return _start(command, log_path, f"127.0.0.1:{runtime_port}")


def format_node_config(values: Mapping[str, str | int | float | bool]) -> str:
    """Flower's ``--node-config`` text: space-separated ``key=value``, values as TOML.

    Flower finds a quoted value's end at the next quote of its kind, so strings are TOML literal
    strings ('...', no escapes: Windows paths pass as they are) or, holding a ', basic ones.
    """
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif "\n" in value or ("'" in value and '"' in value):
            raise InvalidInput(f"{key} {value!r}: rename it without line breaks or mixed quotes")
        elif "'" not in value:
            text = f"'{value}'"
        else:
            text = '"' + value.replace("\\", "\\\\") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


@dataclass(frozen=True)
class FlwrCli:
    """The ``flwr`` CLI, pointed at one SuperLink through its own ``$FLWR_HOME``."""

    home: Path
    address: str
    root_certificates: Path

    def configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{APP_NAME}"\n\n'
            f"[superlink.{APP_NAME}]\n"
            f"address = {json.dumps(self.address)}\n"
            f"root-certificates = {json.dumps(str(self.root_certificates.resolve()))}\n"
        )

    def register_node(self, public_key: Path) -> None:
        """Admit the SuperNode holding ``public_key``'s private half (again: a no-op)."""
        try:
            self.call("supernode", "register", str(public_key), APP_NAME)
        except DeploymentError as exc:
            if "already in use" not in str(exc):
                raise

    def submit_run(self, app_dir: Path, run_config: Mapping[str, str | int]) -> int:
        """Submit our app (built into a FAB from ``app_dir``) as a run; return the run id."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        args = ["run", str(app_dir), APP_NAME]
        if overrides:
            args += ["--run-config", overrides]
        return int(self.call(*args)["run-id"])

    def runs(self) -> list[dict[str, Any]]:
        result = self.call("list", APP_NAME)
        runs: list[dict[str, Any]] = result.get("runs", [])
        return runs

    def stop_run(self, run_id: int) -> None:
        self.call("stop", str(run_id), APP_NAME)

    def call(self, *args: str) -> dict[str, Any]:
        env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
        done = subprocess.run(
            [_tool("flwr"), *args, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:  # the JSON document follows any text the CLI prints first
            result: dict[str, Any] = json.JSONDecoder().raw_decode(
                done.stdout[done.stdout.find("{") :]
            )[0]
        except ValueError:
            result = {}
        if done.returncode != 0 or not result.get("success", False):
            why = result.get("error-message") or (done.stderr or done.stdout).strip()[-400:]
            raise DeploymentError(f"`flwr {' '.join(args[:2])}` failed: {why}")
        return result


def app_dir(into: Path) -> Path:
    """A copy of our Flower app (its pyproject names fedmarket's ServerApp and ClientApp)."""
    source = resources.files("fedmarket.deploy") / "app" / "pyproject.toml"
    into.mkdir(parents=True, exist_ok=True)
    (into / "pyproject.toml").write_bytes(source.read_bytes())
    return into


def wait_listening(address: str, daemon: Daemon, timeout: float = 60.0) -> None:
    """Until ``address`` accepts TCP connections; fail with the daemon's log if it died."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise DeploymentError(
                f"{daemon.name} exited with status "
                f"{daemon.process.returncode}; its log ({daemon.log_path}) ends:\n{daemon.tail()}"
            )
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    daemon.stop()
    raise DeploymentError(
        f"nothing listens on {address} after {timeout:.0f} s; see {daemon.log_path}"
    )


def _start(command: list[str], log_path: Path, address: str) -> Daemon:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    log: IO[bytes] = log_path.open("ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    daemon = Daemon(Path(command[0]).name, process, log_path)
    wait_listening(address, daemon)
    return daemon


def dial_address(host: str, port: int) -> str:
    """Where this machine reaches a server bound to ``host:port``."""
    near = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    return f"{near}:{port}"


def _tool(name: str) -> str:
    """A Flower command from this environment (beside the interpreter), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found; install fedmarket's dependencies (make setup)")
    return found
