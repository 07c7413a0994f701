"""The aggregator on Flower's deployment engine: a SuperLink plus our ServerApp for one task.

``start_server`` starts the SuperLink (TLS, SuperNode authentication, no runtime dependency
installation), admits the operator's registered SuperNodes, submits our Flower app as a run, and
runs its ServerApp in a process forked from this one (``fedmarket.deploy.warm``): the unlocked
aggregator key reaches the ServerApp by fork, never through a file, the environment or Flower.
The ServerApp waits for the task's devices, then runs the rounds the task's publisher has not
committed yet: a restarted server resumes at the round after the last one on chain.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.constant import TaskType

from fedmarket.config import TaskConfig
from fedmarket.deploy.flower import (
    FlwrCli,
    app_dir,
    dial_address,
    start_superlink,
    superexec_secret,
)
from fedmarket.deploy.tls import CertificatePaths
from fedmarket.deploy.warm import serve_tasks
from fedmarket.exceptions import DeploymentError, RoundFailed
from fedmarket.ledger.base import Ledger
from fedmarket.market.publisher import RoundPublisher
from fedmarket.server.app import starting_point
from fedmarket.server.paid import publishing, resume_point
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import RoundResult
from fedmarket.server.rounds import run_rounds
from fedmarket.simulation import SimulatedFleet
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId
from strategies import make_strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerRole:
    """What the ServerApp needs; connections are opened inside the ServerApp's process."""

    settings: TaskConfig
    task: TaskId
    chain_id: int
    market: str
    open_ledger: Callable[[], Ledger]
    open_store: Callable[[], ContentStore]
    state_path: Path
    evaluation_home: Path  # where the task's held-out evaluation split is computed
    devices: int  # wait for this many SuperNodes before round 1 (the task's cohort)
    connect_timeout: float = 300.0
    on_round: Callable[[RoundResult], None] | None = None


_role: ServerRole | None = None


def server_main(grid: Grid, context: Context) -> None:
    """The ServerApp's main: run and publish the task's remaining rounds."""
    if _role is None:
        raise DeploymentError("this ServerApp runs only under `fedmarket server start`")
    role = _role
    publisher = RoundPublisher(
        store=role.open_store(),
        ledger=role.open_ledger(),
        task=role.task,
        chain_id=role.chain_id,
        market=role.market,
        state_path=role.state_path,
    )
    plan = FederationPlan.from_config(
        role.settings,
        market=publisher.terms,
        connect_timeout=role.connect_timeout,
    )
    if publisher.next_round > plan.rounds:
        log.info("task %d: all %d rounds are committed", role.task, plan.rounds)
        return
    _, held_out = SimulatedFleet.from_config(role.settings, role.evaluation_home).split()
    first, initial, evaluator = starting_point(plan, held_out, resume_point(publisher))
    wait_for_nodes(grid, role.devices, role.connect_timeout)
    run_rounds(
        grid,
        plan,
        make_strategy(role.settings.federation.strategy),
        initial,
        evaluator,
        role.on_round,
        publishing(publisher),
        first_round=first,
        payer=publisher,
    )


def make_deployed_server_app() -> ServerApp:
    app = ServerApp()
    app.main()(server_main)
    return app


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> None:
    """Until ``count`` SuperNodes are connected; after ``timeout`` go on with those there
    (the round itself refuses fewer than secure aggregation needs)."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    log.info("%d of %d devices connected", len(list(grid.get_node_ids())), count)


def start_server(
    role: ServerRole,
    *,
    host: str,
    port: int,
    certificates: CertificatePaths,
    authorized_keys: Sequence[Path],
    workdir: Path,
    on_started: Callable[[str], None] = lambda address: None,
) -> None:
    """Run the task on a SuperLink at ``host:port`` until the ServerApp ends; raises
    RoundFailed when it ended in failure. The SuperLink's state lives in ``workdir``."""
    global _role
    secret_file = workdir / "superexec.secret"
    secret = superexec_secret(secret_file)
    superlink = start_superlink(
        host=host,
        port=port,
        certificates=certificates,
        database=workdir / "superlink.db",
        secret_file=secret_file,
        log_path=workdir / "superlink.log",
    )
    address = dial_address(host, port)
    try:
        flwr = FlwrCli(workdir / "flwr", address, certificates.ca)
        flwr.configure()
        for key in authorized_keys:
            flwr.register_node(key)
        _stop_stale_runs(flwr)
        _role = role
        os.environ["FLWR_HOME"] = str(flwr.home)  # task processes install the FAB here
        flwr.submit_run(app_dir(workdir / "app"), {"task": role.task})
        on_started(address)
        ended: list[int] = []
        serve_tasks(
            address,
            task_types=[TaskType.SERVER_APP],
            secret=secret,
            root_certificates=str(certificates.ca),
            should_stop=lambda: bool(ended),
            on_exit=lambda pid, status: ended.append(status),
        )
        if ended[0] != 0:
            raise RoundFailed(
                f"the ServerApp ended with status {ended[0]}; rounds committed so far are kept "
                "and `fedmarket server start` resumes after them"
            )
    finally:
        _role = None
        superlink.stop()


def _stop_stale_runs(flwr: FlwrCli) -> None:
    """Stop runs a killed server left behind, so devices never train for a dead ServerApp."""
    for run in flwr.runs():
        if not str(run.get("status", "")).startswith("finished"):
            flwr.stop_run(int(run["run-id"]))
