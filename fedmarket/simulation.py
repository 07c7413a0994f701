"""Run a federation of simulated devices on one machine through Flower's simulation engine."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import ServerApp

from fedmarket.config import TaskConfig
from fedmarket.data.dataset import Dataset
from fedmarket.data.partition import dirichlet_partition, iid_partition
from fedmarket.data.source import DataSource
from fedmarket.device.app import make_client_app
from fedmarket.device.profile import DeviceProfile
from fedmarket.exceptions import InvalidInput, LedgerMissing, RoundFailed
from fedmarket.models.weights import Weights
from fedmarket.privacy.accounting import check_delta
from fedmarket.privacy.config import AccountantKind
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS, Assumptions
from fedmarket.server.app import make_server_app, starting_point
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult
from fedmarket.server.rounds import ModelObserver, RoundObserver, RoundPayer
from fedmarket.types import DeviceId
from strategies import Strategy


@dataclass(frozen=True, kw_only=True)
class SimulatedFleet:
    """How simulated devices get their data and their owners' settings.

    The data set is split into a held-out part (the server's evaluation set) and one part
    per device, IID or Dirichlet(alpha) label skew. Everything is a function of ``seed``, so
    the server and every simulated device compute the same split independently.
    """

    source: DataSource = field(default_factory=DataSource)
    num_devices: int = 10
    alpha: float | None = 0.5
    holdout: float = 0.2
    seed: int = 0
    home: Path
    epsilon_cap: float = 8.0
    delta: float = 1e-5
    accountant: AccountantKind = "prv"
    private: bool = True
    require_secagg: bool = True
    secagg_policy: Assumptions = DEFAULT_ASSUMPTIONS  # the weakest SecAgg+ round devices join
    payout_seed: str | None = None  # simulated payout keys: sha256(seed/index) (tests, demo)

    def __post_init__(self) -> None:
        if self.num_devices < 1:
            raise InvalidInput(f"devices must be >= 1, got {self.num_devices}")
        if not 0 < self.holdout < 1:
            raise InvalidInput(f"holdout fraction must be in (0, 1), got {self.holdout}")
        if not self.epsilon_cap > 0:
            raise InvalidInput(f"epsilon cap must be > 0, got {self.epsilon_cap}")
        check_delta(self.delta)

    @classmethod
    def from_config(cls, config: TaskConfig, home: Path) -> SimulatedFleet:
        """The fleet a task config describes; ledgers under ``home``."""
        return cls(
            source=config.data_source(),
            num_devices=config.federation.devices,
            alpha=config.data.alpha if config.data.partition == "dirichlet" else None,
            holdout=config.data.holdout,
            seed=config.federation.seed,
            home=home,
            epsilon_cap=config.privacy.epsilon_cap,
            delta=config.privacy.delta,
            accountant=config.privacy.accountant,
            require_secagg=config.federation.secagg,
            secagg_policy=config.secagg_assumptions(),
            payout_seed=config.market.payout_seed if config.market.enabled else None,
        )

    def split(self) -> tuple[list[Dataset], Dataset]:
        """(one training set per device, the held-out evaluation set)."""
        return _split(self)

    def profile(self, index: int) -> DeviceProfile:
        parts, _ = self.split()
        account = simulated_account(self.payout_seed, index) if self.payout_seed else None
        return DeviceProfile(
            device=DeviceId(f"device-{index}"),
            data=parts[index],
            home=self.home,
            epsilon_cap=self.epsilon_cap,
            identity=account or simulated_account(f"identity/{self.seed}", index),
            delta=self.delta,
            accountant=self.accountant,
            private=self.private,
            account=account,
            secagg_policy=self.secagg_policy,
        )

    def prepare_ledgers(self) -> None:
        """Open every device's privacy ledger; the simulation is its devices' owner, so it
        creates the ledger of an identity that has none. A ledger whose head shows it was
        deleted is refused (:class:`~fedmarket.exceptions.LedgerMissing`), as on a real device."""
        for index in range(self.num_devices):
            profile = self.profile(index)
            try:
                profile.ledger()
            except LedgerMissing as exc:
                if exc.deleted:
                    raise
                profile.create_ledger()

    def resolve(self, context: Context) -> DeviceProfile:
        """The device behind a simulated SuperNode (its ``partition-id``)."""
        torch.set_num_threads(1)  # several simulated devices share the machine's cores
        return self.profile(int(context.node_config["partition-id"]))


def simulated_account(seed: str, index: int) -> LocalAccount:
    """A simulated device's key (payout or identity), derived from ``seed``: simulations only."""
    account: LocalAccount = Account.from_key(hashlib.sha256(f"{seed}/{index}".encode()).digest())
    return account


@functools.lru_cache(maxsize=8)
def _split(fleet: SimulatedFleet) -> tuple[list[Dataset], Dataset]:
    data = fleet.source.load()
    order = np.random.default_rng(fleet.seed).permutation(len(data)).astype(np.int64)
    cut = round(len(data) * fleet.holdout)
    held_out = data.subset(np.sort(order[:cut]), name=f"{data.name} (held out)")
    pool = data.subset(np.sort(order[cut:]))
    if fleet.alpha is None:
        parts = iid_partition(len(pool), fleet.num_devices, seed=fleet.seed)
    else:
        parts = dirichlet_partition(
            pool.labels, fleet.num_devices, alpha=fleet.alpha, seed=fleet.seed
        )
    return [pool.subset(p, name=f"{data.name}/device-{i}") for i, p in enumerate(parts)], held_out


def run_federation(
    fleet: SimulatedFleet,
    plan: FederationPlan,
    strategy: Strategy,
    *,
    on_round: RoundObserver | None = None,
    on_model: ModelObserver | None = None,
    verbose: bool = False,
    resume: tuple[int, Weights] | None = None,
    client_mods: Sequence[Mod] = (),
    payer: RoundPayer | None = None,
) -> FederationResult:
    """Simulate the federation with Flower's Ray-backed engine and return every round.

    ``resume=(round, weights)`` starts at ``round`` from ``weights`` (the last committed model)
    instead of round 1 from a fresh model. ``client_mods`` wrap every device's ClientApp.
    """
    if plan.secagg is not None:  # a cohort SecAgg+ cannot protect fails now, not every round
        cohort = max(plan.min_devices, round(plan.fraction * fleet.num_devices))
        try:
            plan.secagg.for_cohort(cohort)
        except InvalidInput as exc:
            raise InvalidInput(
                f"{exc}. State SecAggConfig(assumptions=Assumptions(corrupt_fraction=0)) for a "
                "few devices that do not collude (and give the fleet the same secagg_policy), "
                "or add devices"
            ) from None
    _, held_out = fleet.split()
    if fleet.private:
        fleet.prepare_ledgers()
    first_round, initial, evaluator = starting_point(plan, held_out, resume)

    outcome: list[FederationResult] = []
    server_app = make_server_app(
        plan,
        strategy,
        initial,
        evaluator,
        on_round=on_round,
        on_model=on_model,
        on_done=outcome.append,
        first_round=first_round,
        payer=payer,
    )
    client_app = make_client_app(
        fleet.resolve,
        require_secagg=fleet.require_secagg,
        mods=client_mods,
    )
    _run_flower(server_app, client_app, fleet.num_devices, verbose=verbose)
    if not outcome:
        raise RoundFailed("the federation stopped before finishing; see the log above")
    return outcome[0]


def _run_flower(
    server_app: ServerApp, client_app: ClientApp, num_devices: int, *, verbose: bool
) -> None:
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray warning
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    cpus = os.cpu_count() or 1
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_devices,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": cpus, "log_to_driver": verbose},
            },
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(previous)
