"""``fedmarket audit privacy``: an empirical lower bound on a task's per-round epsilon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedmarket.config import TaskConfig
from fedmarket.exceptions import InvalidInput
from fedmarket.privacy.audit_bound import check_confidence
from fedmarket.report import write_json

if TYPE_CHECKING:
    from fedmarket.privacy.audit import AuditResult

app = typer.Typer(help="Empirical checks of what fedmarket promises.", no_args_is_help=True)

DEFAULT_TRIALS = 200


@app.command()
def privacy(
    config: Annotated[
        Path | None, typer.Option(help="Task config (TOML). Default: the demo's embedded one.")
    ] = None,
    device: Annotated[int, typer.Option(help="Which simulated device's data to audit.")] = 0,
    trials: Annotated[
        int, typer.Option(help="Local rounds on the data, and as many with the canary.")
    ] = DEFAULT_TRIALS,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    dp: Annotated[
        bool, typer.Option("--dp/--no-dp", help="Audit the task's DP-SGD, or plain SGD.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the result as JSON here.")] = None,
) -> None:
    """Plant a canary record in a device's data and try to tell, from the round's update alone,
    whether it was there. The bound can show that the accounting is wrong, never that it is
    right; a bound above the accounted epsilon is reported loudly."""
    task = TaskConfig.load(config) if config else TaskConfig()
    # Validated here, before minutes of training, as well as where they are used.
    if trials < 2:
        raise InvalidInput(
            f"--trials must be >= 2 (half select the test, half bound), got {trials}"
        )
    check_confidence(confidence)
    if out is not None and out.is_dir():
        raise InvalidInput(f"--out {out} is a folder; name a file")
    import torch

    from fedmarket.privacy.audit import audit_task  # imports torch: only when auditing

    torch.set_num_threads(1)  # a round of a small model: more threads only contend

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("local rounds", total=2 * trials)
        result = audit_task(
            task,
            device=device,
            trials=trials,
            confidence=confidence,
            private=dp,
            on_trial=lambda done: progress.update(bar, completed=done),
        )
    document = result.to_json()
    if out is not None:
        write_json(out, document)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        Console().print(_table(result))
    if result.accounted_epsilon is not None and result.reachable < result.accounted_epsilon:
        console.print(
            f"note: {trials} trials can show at most {result.reachable:.2f}, below the "
            f"accounted {result.accounted_epsilon:.2f}: an accounting error smaller than the "
            "difference goes unseen. Raise --trials (the ceiling grows like log(trials / 2))."
        )
    if result.exceeds_accounting:
        console.print(
            f"[bold red]WARNING: the empirical lower bound {result.epsilon_lower_bound:.3f} "
            f"exceeds the accounted epsilon {result.accounted_epsilon:.3f} (confidence "
            f"{confidence:g}): the privacy accounting, or the training it describes, is wrong."
        )


def _table(result: AuditResult) -> Table:
    s, accounted = result.settings, result.accounted_epsilon
    table = Table(title="Privacy audit: one local round, canary membership", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        (
            "round audited",
            f"sigma {s.noise_multiplier:g}, q {s.sample_rate:.3g}, {s.steps} steps, "
            f"clip {s.max_grad_norm:g}, {s.examples} records"
            if s.private
            else f"plain SGD (no DP), {s.examples} records",
        ),
        (
            f"accounted epsilon, this round (delta={s.delta:g})",
            "none (no DP)" if accounted is None else f"{accounted:.3f}",
        ),
        (
            f"empirical epsilon lower bound ({result.confidence:.0%} confidence)",
            f"{result.epsilon_lower_bound:.3f}",
        ),
        ("largest bound these trials can show", f"{result.reachable:.3f}"),
        ("AUC (evaluation half)", f"{result.auc:.3f}"),
        ("trials (each side)", str(result.trials)),
        ("statistic", result.statistic),
    ]
    for row in rows:
        table.add_row(*row)
    return table
