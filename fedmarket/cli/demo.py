"""``fedmarket demo``: the whole story on one machine, on embedded defaults or a task config."""

from __future__ import annotations

import json
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmarket.config import TaskConfig
from fedmarket.demo import run_demo
from fedmarket.exceptions import InvalidInput
from fedmarket.plots import plot_report
from fedmarket.report import build_report, write_json
from fedmarket.server.results import RoundResult


class StrategyChoice(StrEnum):
    fedavg = "fedavg"
    fedprox = "fedprox"
    fedadam = "fedadam"
    fedyogi = "fedyogi"


def demo(
    config: Annotated[
        Path | None,
        typer.Option(help="Task config (TOML); options below override it. Default: embedded."),
    ] = None,
    devices: Annotated[int | None, typer.Option(help="Number of simulated devices.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    epsilon_cap: Annotated[
        float | None, typer.Option(help="Each device owner's cap on epsilon (at --delta).")
    ] = None,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="DP-SGD noise multiplier sigma.")
    ] = None,
    strategy: Annotated[
        StrategyChoice | None, typer.Option(help="Server aggregation strategy.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for the data split and model init.")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option(help="Dirichlet label-skew alpha (smaller is more skewed).")
    ] = None,
    delta: Annotated[float | None, typer.Option(help="DP delta.")] = None,
    secagg: Annotated[
        bool | None,
        typer.Option(
            help="Sum updates under SecAgg+ so the server sees only the sum "
            "(--no-secagg: plain sum, for comparison; needs --no-market)."
        ),
    ] = None,
    market: Annotated[
        bool | None,
        typer.Option(
            help="Run the market story: local chain, paid rounds, claims, an encrypted sale "
            "(--no-market: the federation only)."
        ),
    ] = None,
    clip_range: Annotated[
        float | None, typer.Option(help="SecAgg+: each delta coordinate is clipped to +-this.")
    ] = None,
    colluding_fraction: Annotated[
        float | None,
        typer.Option(
            help="SecAgg+: the share of devices that may collude with the server; k and t are "
            "sized for it (0 for a few devices you trust not to collude)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/<timestamp>).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Devices train privately, every round is committed, devices are paid, the model is sold."""
    out = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    # Build (and so validate) everything before anything is written.
    task = (TaskConfig.load(config) if config else TaskConfig()).updated(
        data={"alpha": alpha},
        federation={
            "devices": devices,
            "rounds": rounds,
            "strategy": strategy.value if strategy else None,
            "seed": seed,
            "secagg": secagg,
            "clip_range": clip_range,
            "colluding_fraction": colluding_fraction,
        },
        privacy={"epsilon_cap": epsilon_cap, "noise_multiplier": noise_multiplier, "delta": delta},
        market={"enabled": market},
    )
    if (out / "report.json").exists():
        raise InvalidInput(f"{out} already holds a report; choose another --out")

    console = Console(stderr=True)
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(
            "federated rounds", total=task.federation.rounds, status="starting devices"
        )

        def on_round(r: RoundResult) -> None:
            progress.update(
                bar,
                advance=1,
                status=r.error
                or f"accuracy {r.accuracy:.3f}, {len(r.trained)} trained, "
                f"{len(r.declined)} declined, {len(r.dropped)} dropped",
            )

        def on_step(text: str) -> None:
            progress.console.print(f"[cyan]•[/] {text}")

        outcome = run_demo(task, out, on_round=on_round, on_step=on_step, verbose=verbose)
    report = build_report(
        outcome.result,
        outcome.fleet,
        config=task.model_dump(mode="json"),
        seconds=time.monotonic() - started,
    )
    if outcome.market is not None:
        report.update(outcome.market)
    write_json(out / "report.json", report)
    plots = plot_report(report, out)

    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(_rounds_table(report))
    console.print(_devices_table(report))
    if outcome.market is not None:
        console.print(_market_summary(report))
    cap = task.privacy.epsilon_cap
    console.print(
        f"final accuracy [bold]{report['final_accuracy']:.3f}[/]; every device's epsilon "
        f"<= cap {cap:g} (delta={task.privacy.delta:g}): "
        f"{all(d['epsilon'] <= d['epsilon_cap'] for d in report['devices'])}"
    )
    console.print(f"report: {out / 'report.json'}; plots: {', '.join(str(p) for p in plots)}")


def _rounds_table(report: dict[str, Any]) -> Table:
    table = Table(title="Rounds")
    columns = ("round", "accuracy", "loss", "trained", "declined", "dropped", "clipped")
    for column in (*columns, "eps max", "eps median"):
        table.add_column(column, justify="right")
    for r in report["rounds"]:
        clipped = r["clip_fraction"]
        table.add_row(
            str(r["round"]),
            f"{r['accuracy']:.3f}",
            f"{r['loss']:.3f}",
            str(r["trained"]),
            str(r["declined"]),
            str(len(r["dropped"])),
            "-" if clipped is None else f"{clipped:.2%}",
            f"{r['epsilon_max']:.2f}",
            f"{r['epsilon_median']:.2f}",
        )
    return table


def _devices_table(report: dict[str, Any]) -> Table:
    rewards = {r["device"]: r for r in report.get("rewards", [])}
    table = Table(title="Devices")
    columns = ("device", "rounds contributed", "reward", "sale share", "claimed", "epsilon", "cap")
    for column in columns:
        table.add_column(column, justify="right")
    for d in report["devices"]:
        paid = rewards.get(d["device"])
        table.add_row(
            d["device"],
            str(d["rounds_trained"]),
            paid["earned"] if paid else "-",
            _short(paid["sale_share"]) if paid else "-",
            _short(paid["claimed"]) if paid else "-",
            f"{d['epsilon']:.3f}",
            f"{d['epsilon_cap']:g}",
        )
    return table


def _short(tokens: str) -> str:
    """Token amounts to 6 decimals for tables (the report keeps every digit)."""
    whole, _, fraction = tokens.partition(".")
    return f"{whole}.{fraction[:6]}" if fraction else whole


def _market_summary(report: dict[str, Any]) -> Table:
    escrow, sale, chain = report["escrow"], report["purchase"], report["chain"]
    table = Table(title="Market", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("task", str(report["task"]["id"])),
        ("rounds committed on chain", str(chain["rounds_committed"])),
        ("commit gas per paid update", f"{chain['gas_per_update']:,.0f}"),
        ("roots a device found paying it too little", str(chain["objections"])),
        ("escrow budget (tokens)", escrow["budget"]),
        ("paid to devices as rewards", escrow["committed"]),
        ("refunded to the sponsor after the close grace", escrow["refunded"]),
        (
            f"sale of listing {sale['listing']}: task {sale['task']} round {sale['round']}",
            sale["price"],
        ),
        ("  to the seller (after the dispute window)", sale["seller_share"]),
        ("  to the round's contributors", sale["contributors_share"]),
        ("  claimed by the devices", _short(sale["contributors_share_paid_to_devices"])),
        ("buyer's accuracy of the decrypted model", f"{sale['decrypted_accuracy']:.3f}"),
        ("lineage verified after decryption", str(sale["verified"])),
        ("model commitment", "0x" + sale["model_commitment"][:16] + "…"),
    ]
    for row in rows:
        table.add_row(*row)
    return table
