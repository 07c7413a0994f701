"""A device on Flower's deployment engine: a SuperNode plus our ClientApp, on the owner's machine.

``join`` checks what the owner gave (the data loads, the keystore unlocks) before anything
starts, then starts a SuperNode whose node config carries the data location, the payout address
and the owner's ε cap, and runs every message's ClientApp in a process forked from this one
(``fedmarket.deploy.warm``): the data is loaded once and the unlocked payout key reaches the
ClientApp by fork, never through a file or Flower. The cap and the eligibility policy are the
owner's, read on the device; no server message can change them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from eth_account.signers.local import LocalAccount
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.supercore.constant import TaskType

from fedmarket.data.dataset import Dataset
from fedmarket.data.source import DataKind, DataSource
from fedmarket.deploy.flower import start_supernode, superexec_secret
from fedmarket.deploy.warm import serve_tasks
from fedmarket.device.app import make_client_app
from fedmarket.device.eligibility import EligibilityPolicy
from fedmarket.device.profile import DeviceProfile
from fedmarket.exceptions import DeploymentError, InvalidInput
from fedmarket.keys import PASSPHRASE_ENV, load_keystore
from fedmarket.privacy.accounting import check_delta
from fedmarket.privacy.config import AccountantKind
from fedmarket.processes import free_port
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS, Assumptions
from fedmarket.types import DeviceId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceRole:
    """The owner's device: who it is, its data, its cap and conditions, its payout key."""

    name: str
    data: DataSource
    home: Path
    epsilon_cap: float
    keystore: Path
    account: LocalAccount
    delta: float = 1e-5
    accountant: AccountantKind = "prv"
    policy: EligibilityPolicy = field(default_factory=EligibilityPolicy)
    colluding_fraction: float = DEFAULT_ASSUMPTIONS.corrupt_fraction  # SecAgg+ floor

    def __post_init__(self) -> None:
        if not self.epsilon_cap > 0:
            raise InvalidInput(f"epsilon cap must be > 0, got {self.epsilon_cap}")
        check_delta(self.delta)
        self.secagg_policy()  # validates the fraction

    def secagg_policy(self) -> Assumptions:
        """The weakest SecAgg+ round this device joins."""
        return dataclasses.replace(DEFAULT_ASSUMPTIONS, corrupt_fraction=self.colluding_fraction)

    def node_config(self) -> dict[str, str | int | float | bool]:
        """What the SuperNode carries: everything but the key itself."""
        return {
            "name": self.name,
            "data-kind": self.data.kind,
            "data": self.data.path,
            "label-column": self.data.label_column,
            "payout": self.account.address,
            "keystore": str(self.keystore),
            "epsilon-cap": self.epsilon_cap,
            "delta": self.delta,
            "accountant": self.accountant,
            "home": str(self.home),
            "require-power": self.policy.require_power,
            "max-cpu-busy": self.policy.max_cpu_busy or 0.0,
            "memory-budget-mb": self.policy.memory_budget_mb,
            "colluding-fraction": self.colluding_fraction,
        }


_role: DeviceRole | None = None


def resolve(context: Context) -> DeviceProfile:
    """The device a SuperNode's ClientApp runs for, from its node config."""
    config = context.node_config
    payout = str(config["payout"])
    account = _payout_key(payout, Path(str(config["keystore"])))
    max_cpu = float(config["max-cpu-busy"])
    return DeviceProfile(
        device=DeviceId(str(config["name"])),
        data=load_data(
            DataSource(
                kind=cast(DataKind, str(config["data-kind"])),  # DataSource checks it
                path=str(config["data"]),
                label_column=str(config["label-column"]),
            )
        ),
        home=Path(str(config["home"])),
        epsilon_cap=float(config["epsilon-cap"]),
        identity=account,  # the payout key: the privacy ledger is this key's
        delta=float(config["delta"]),
        accountant="rdp" if config["accountant"] == "rdp" else "prv",
        account=account,
        eligibility=EligibilityPolicy(
            require_power=bool(config["require-power"]),
            max_cpu_busy=max_cpu or None,
            memory_budget_mb=int(config["memory-budget-mb"]),
        ),
        secagg_policy=dataclasses.replace(
            DEFAULT_ASSUMPTIONS,
            corrupt_fraction=float(
                config.get("colluding-fraction", DEFAULT_ASSUMPTIONS.corrupt_fraction)
            ),
        ),
    )


def make_deployed_client_app() -> ClientApp:
    return make_client_app(resolve)


@functools.lru_cache(maxsize=4)
def load_data(source: DataSource) -> Dataset:
    """Loaded once per process; warm task processes inherit the parent's copy."""
    return source.load()


def join(
    role: DeviceRole,
    *,
    superlink: str,
    root_certificates: Path,
    node_key: Path,
    workdir: Path,
    cold: bool = False,
) -> None:
    """Serve the federation at ``superlink`` until interrupted (Ctrl-C or SIGTERM)."""
    global _role
    load_data(role.data)  # bad data fails here, before anything starts
    for path, what in ((root_certificates, "CA certificate"), (node_key, "node key")):
        if not path.is_file():
            raise InvalidInput(f"{what} {path} does not exist")
    _role = role
    os.environ["FLWR_HOME"] = str(workdir / "flwr")  # task processes install the FAB here
    backoff = 1.0
    try:
        while True:
            began = time.monotonic()
            _serve_once(role, superlink, root_certificates, node_key, workdir, cold=cold)
            # The SuperNode gave up: the SuperLink is down, restarting, or has not admitted
            # this node's key yet. A device keeps trying, as a phone app would.
            backoff = 1.0 if time.monotonic() - began > 60 else min(backoff * 2, 10.0)
            log.warning("starting the SuperNode again in %.0f s", backoff)
            time.sleep(backoff)
    except KeyboardInterrupt:
        pass
    finally:
        _role = None


def _payout_key(address: str, keystore: Path) -> LocalAccount:
    """The unlocked key from the parent (warm); a fresh process (cold) unlocks the keystore."""
    if _role is not None:
        account = _role.account
    else:
        account = load_keystore(keystore, os.environ.get(PASSPHRASE_ENV, ""))
    if account.address != address:
        raise InvalidInput(f"the node config's payout address {address} is not this device's key")
    return account


def _serve_once(
    role: DeviceRole,
    superlink: str,
    root_certificates: Path,
    node_key: Path,
    workdir: Path,
    *,
    cold: bool,
) -> None:
    """One SuperNode's life: serve its tasks until it exits."""
    secret_file = workdir / "superexec.secret"
    secret = superexec_secret(secret_file)  # made before the SuperNode, which reads it
    port = free_port()
    try:
        node = start_supernode(
            superlink=superlink,
            root_certificates=root_certificates,
            node_key=node_key,
            runtime_port=port,
            node_config=role.node_config(),
            secret_file=secret_file,
            log_path=workdir / "supernode.log",
        )
    except DeploymentError as exc:
        log.warning("%s", exc)
        return
    try:
        serve_tasks(
            f"127.0.0.1:{port}",
            task_types=[TaskType.CLIENT_APP],
            secret=secret,
            cold=cold,
            should_stop=lambda: node.process.poll() is not None,
        )
    finally:
        node.stop()
    log.warning(
        "SuperNode ended (status %s); its log ends:\n%s", node.process.returncode, node.tail(4)
    )
