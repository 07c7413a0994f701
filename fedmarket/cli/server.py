"""``fedmarket server``: run a task's paid rounds as its aggregator, resumably.

``server start`` runs the task on Flower's deployment engine: a SuperLink (TLS, SuperNode
authentication) that devices on other machines join with ``fedmarket device join``.
``server run`` drives the task's rounds with simulated devices on this machine (Flower's
simulation engine). Both store and commit every round. Its state lives under
``$FEDMARKET_HOME/server/<chain>-<market>/task-<id>.json``: run it again after a crash and it
resumes after the last committed round, never committing a round twice nor paying twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmarket.cli.connect import (
    ApiOption,
    BackendOption,
    JsonOption,
    KeyOption,
    Market,
    RpcOption,
    connect,
    emit,
)
from fedmarket.cli.store import Backend, open_store
from fedmarket.config import TaskConfig, fedmarket_home
from fedmarket.deploy.server import ServerRole, start_server
from fedmarket.deploy.tls import CertificatePaths, make_certificates
from fedmarket.exceptions import InvalidInput
from fedmarket.ledger import Web3Ledger
from fedmarket.market.amounts import to_tokens
from fedmarket.market.publisher import RoundPublisher
from fedmarket.server.paid import run_paid_federation
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import RoundResult
from fedmarket.server.rounds import RoundObserver
from fedmarket.simulation import SimulatedFleet
from fedmarket.types import TaskId
from strategies import make_strategy

app = typer.Typer(
    help="For aggregator operators: run and inspect a task's rounds.", no_args_is_help=True
)

TaskOption = Annotated[
    int, typer.Option(min=1, help="The task on the market this server aggregates.")
]


def _publisher(market: Market, task: int, backend: Backend, ipfs_api: str | None) -> RoundPublisher:
    """The task's round publisher: its store, this key's ledger and its saved state."""
    return RoundPublisher(
        store=open_store(backend, ipfs_api, 30.0),
        ledger=market.ledger,
        task=TaskId(task),
        chain_id=market.chain_id,
        market=market.address,
        state_path=state_path(market, task),
    )


def state_path(market: Market, task: int) -> Path:
    return fedmarket_home() / "server" / f"{market.chain_id}-{market.address}" / f"task-{task}.json"


def paid_task(config: Path) -> TaskConfig:
    """The task config a server runs: its rounds are paid, so its market must be enabled."""
    settings = TaskConfig.load(config)
    if not settings.market.enabled:
        raise InvalidInput(f"{config}: [market] enabled = false; a server commits paid rounds")
    return settings


def round_printer(as_json: bool) -> RoundObserver:
    """One line per finished round: accuracy, devices paid, seconds."""

    def on_round(r: RoundResult) -> None:
        line = {"round": r.round, "accuracy": r.accuracy, "paid": len(r.receipts)}
        emit(
            line | {"seconds": r.seconds},
            as_json,
            f"round {r.round}: accuracy {r.accuracy:.3f}, {len(r.receipts)} paid, "
            f"{r.seconds:.1f} s",
        )

    return on_round


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Empty folder for ca.crt, server.pem, server.key.")],
    host: Annotated[
        list[str], typer.Option(help="DNS name or IP devices dial (repeat for several).")
    ],
    as_json: JsonOption = False,
) -> None:
    """Make a CA and the SuperLink's TLS certificate; give devices ca.crt only."""
    paths = make_certificates(out, host)
    emit(
        {"ca": str(paths.ca), "certificate": str(paths.certificate)},
        as_json,
        f"CA {paths.ca} (give it to devices); server certificate {paths.certificate}",
    )


@app.command()
def start(
    config: Annotated[Path, typer.Option(help="Task config (TOML).")],
    task: TaskOption,
    key: KeyOption,
    certificates: Annotated[
        Path, typer.Option("--certs", help="Folder from `fedmarket server certs`.")
    ],
    authorized_keys: Annotated[
        Path,
        typer.Option(help="Folder of devices' node public keys (*.pub) to admit."),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port devices dial (Fleet API).")] = 9092,
    connect_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the task's devices before round 1.")
    ] = 300.0,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Start a SuperLink and run the task's remaining rounds on the devices that join it."""
    settings = paid_task(config)
    paths = CertificatePaths.in_folder(certificates)
    paths.check()
    public_keys = sorted(authorized_keys.glob("*.pub")) if authorized_keys.is_dir() else []
    if not public_keys:
        raise InvalidInput(
            f"no node public keys (*.pub) in {authorized_keys}; collect each device's "
            "node.pub (`fedmarket device node-key`) there"
        )
    market = connect(rpc_url, key)
    on_chain = market.ledger.task(TaskId(task))  # an unknown task fails here, before starting
    url, deployment, account = market.rpc_url, market.deployment, market.account
    state = state_path(market, task)

    role = ServerRole(
        settings=settings,
        task=TaskId(task),
        chain_id=market.chain_id,
        market=market.address,
        open_ledger=lambda: Web3Ledger.connect(url, deployment, account),
        open_store=lambda: open_store(backend, ipfs_api, 30.0),
        state_path=state,
        evaluation_home=fedmarket_home() / "server-evaluation",
        devices=settings.federation.devices,
        connect_timeout=connect_timeout,
        on_round=round_printer(as_json),
    )
    typer.echo(
        f"task {task}: round {on_chain.last_round} of {settings.federation.rounds} on chain",
        err=True,
    )
    start_server(
        role,
        host=host,
        port=port,
        certificates=paths,
        authorized_keys=public_keys,
        workdir=state.with_suffix(""),
        on_started=lambda address: typer.echo(f"SuperLink listening on {address}", err=True),
    )


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="Task config (TOML).")],
    task: TaskOption,
    key: KeyOption,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the task's remaining rounds with simulated devices; store and commit each round."""
    settings = paid_task(config)
    market = connect(rpc_url, key)
    publisher = _publisher(market, task, backend, ipfs_api)
    fleet = SimulatedFleet.from_config(settings, fedmarket_home() / "simulated-devices")
    fleet.split()
    plan = FederationPlan.from_config(settings, market=publisher.terms)
    if publisher.next_round > 1:
        typer.echo(f"resuming task {task} at round {publisher.next_round}", err=True)

    result = run_paid_federation(
        fleet,
        plan,
        make_strategy(settings.federation.strategy),
        publisher,
        on_round=round_printer(as_json),
    )
    if not result.rounds:
        typer.echo(f"task {task}: all {plan.rounds} rounds are already committed", err=True)


@app.command()
def answer(
    task: TaskOption,
    key: KeyOption,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer every open challenge of this task's roots from the stored receipts bundles (a
    running server does this after each round); an unanswered challenge voids its root."""
    market = connect(rpc_url, key)
    publisher = _publisher(market, task, backend, ipfs_api)
    answered = publisher.answer_challenges()
    emit(
        {"task": task, "answered": [{"round": r, "account": a} for r, a in answered]},
        as_json,
        "\n".join(f"answered {a}'s challenge of round {r}" for r, a in answered)
        or f"task {task}: no open challenge to answer",
    )


@app.command()
def status(
    task: TaskOption,
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rounds this server committed for the task, and what the chain says."""
    market = connect(rpc_url, None)
    on_chain = market.ledger.task(TaskId(task))
    path = state_path(market, task)
    local = RoundPublisher.read_state(path)
    payload = {
        "task": task,
        "last_round_on_chain": on_chain.last_round,
        "committed_rewards": to_tokens(on_chain.committed),
        "escrow": to_tokens(on_chain.escrow),
        "rounds_here": [r.round for r in local.rounds] if local else [],
        "pending_commit": bool(local and local.pending),
        "last_model_cid": local.rounds[-1].model_cid if local and local.rounds else None,
    }
    emit(
        payload,
        as_json,
        f"task {task}: round {on_chain.last_round} on chain, "
        f"{to_tokens(on_chain.committed)} tokens committed; state {path}",
    )
