"""``fedmarket device``: a device owner's privacy spend, cap and rewards, and one-step claims."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedmarket.cli.connect import (
    ApiOption,
    BackendOption,
    JsonOption,
    RpcOption,
    connect,
    emit,
)
from fedmarket.cli.market import claim as market_claim
from fedmarket.cli.store import Backend, open_store
from fedmarket.config import fedmarket_home
from fedmarket.market.amounts import to_tokens
from fedmarket.market.claims import rewards_of
from fedmarket.privacy.ledger import PrivacyLedger

app = typer.Typer(help="For device owners: privacy ledger, rewards, claims.", no_args_is_help=True)


@app.command()
def status(
    device: Annotated[
        str | None, typer.Option(help="Only this device's ledgers (default: every device here).")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Payout key (name or dev:N): also show its rewards.")
    ] = None,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Epsilon spent and the owner's cap per ledger; with --key, rewards earned and claimable."""
    home = fedmarket_home()
    ledgers: list[dict[str, Any]] = []
    for path in PrivacyLedger.find(home, device):
        ledger = PrivacyLedger.open(path)
        ledgers.append(
            {
                "device": ledger.device,
                "dataset": ledger.dataset[:12],
                "rounds": ledger.rounds_spent(),
                "epsilon": ledger.epsilon(),
                "epsilon_cap": ledger.epsilon_cap,
                "delta": ledger.delta,
                "remaining": max(ledger.epsilon_cap - ledger.epsilon(), 0.0),
            }
        )
    rewards: list[dict[str, Any]] = []
    if key is not None:
        market = connect(rpc_url, key)
        for r in rewards_of(
            market.ledger,
            open_store(backend, ipfs_api, 30.0),
            market.ledger.address,
            chain_id=market.chain_id,
            market=market.address,
        ):
            rewards.append(
                {
                    "task": r.task,
                    "account": r.account,
                    "rounds_paid": r.rounds,
                    "earned": to_tokens(r.earned),
                    "claimed": to_tokens(r.claimed),
                    "claimable": to_tokens(r.claimable),
                }
            )
    if as_json:
        emit({"ledgers": ledgers, "rewards": rewards}, True, "")
        return
    console = Console()
    if not ledgers:
        console.print(f"no privacy ledger under {home / 'privacy'}")
    else:
        table = Table(title="Privacy ledgers")
        for column in ("device", "dataset", "rounds", "epsilon", "cap", "delta", "remaining"):
            table.add_column(column, justify="right")
        for row in ledgers:
            table.add_row(
                row["device"],
                row["dataset"],
                str(row["rounds"]),
                f"{row['epsilon']:.3f}",
                f"{row['epsilon_cap']:g}",
                f"{row['delta']:g}",
                f"{row['remaining']:.3f}",
            )
        console.print(table)
    if key is not None:
        table = Table(title="Rewards (tokens)")
        for column in ("task", "rounds paid", "earned", "claimed", "claimable"):
            table.add_column(column, justify="right")
        for row in rewards:
            table.add_row(
                str(row["task"]),
                str(row["rounds_paid"]),
                row["earned"],
                row["claimed"],
                row["claimable"],
            )
        console.print(table if rewards else "no rewards for this key")


# The same command as `fedmarket market claim`: one definition, listed where owners look.
app.command(name="claim")(market_claim)
