"""``fedmarket device``: join a federation, and see and claim what the device earned.

``device join`` runs this machine as one device of a task on Flower's deployment engine: the
owner's data, ε cap and conditions stay here and are enforced here.
"""

from __future__ import annotations

from pathlib import Path
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
from fedmarket.cli.keys import passphrase
from fedmarket.cli.market import claim as market_claim
from fedmarket.cli.store import Backend, open_store
from fedmarket.config import fedmarket_home
from fedmarket.data.source import DataKind, DataSource
from fedmarket.deploy.device import DeviceRole, load_data
from fedmarket.deploy.device import join as join_federation
from fedmarket.deploy.tls import make_node_key
from fedmarket.device.acks import AckBook
from fedmarket.device.budget import prepare_ledger
from fedmarket.device.eligibility import EligibilityPolicy
from fedmarket.device.inclusion import transcript_problems
from fedmarket.device.signed_epsilon import check_signed_epsilon, published_epsilons
from fedmarket.exceptions import (
    DataError,
    EpsilonMismatch,
    FedmarketError,
    InvalidInput,
    LedgerCorrupted,
    LedgerMissing,
    NotInTranscript,
)
from fedmarket.keys import load_keystore
from fedmarket.ledger.base import Ledger
from fedmarket.market.amounts import to_tokens
from fedmarket.market.claims import rewards_of
from fedmarket.market.watch import watch as watch_roots
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.secagg.keys import node_key_from_identity
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

app = typer.Typer(
    help="For device owners: join federations; privacy ledger, rewards, claims.",
    no_args_is_help=True,
)


@app.command(name="node-key")
def node_key(
    out: Annotated[Path, typer.Option(help="Folder for node.key (private) and node.pub.")],
    as_json: JsonOption = False,
) -> None:
    """Make this device's SuperNode key pair; send node.pub to the server's operator."""
    paths = make_node_key(out)
    emit(
        {"private_key": str(paths.private_key), "public_key": str(paths.public_key)},
        as_json,
        f"give {paths.public_key} to the operator; keep {paths.private_key} here",
    )


@app.command()
def join(
    superlink: Annotated[str, typer.Option(help="The server's SuperLink as HOST:PORT.")],
    data: Annotated[
        str, typer.Option(help="This device's data: a CSV or NPZ file, an image folder, digits.")
    ],
    key: Annotated[
        Path, typer.Option(help="Payout keystore file (passphrase: $FEDMARKET_PASSPHRASE).")
    ],
    epsilon_cap: Annotated[
        float,
        typer.Option(help="The most ε the key's privacy ledger may reach (per generation of data)"),
    ],
    root_certificates: Annotated[
        Path, typer.Option(help="The operator's CA certificate (ca.crt).")
    ],
    node_key_file: Annotated[
        Path, typer.Option("--node-key", help="This device's node.key (`device node-key`).")
    ],
    name: Annotated[str | None, typer.Option(help="Device name (default: key file name).")] = None,
    label_column: Annotated[str, typer.Option(help="CSV label column.")] = "label",
    delta: Annotated[float, typer.Option(help="δ of the device's (ε, δ) guarantee.")] = 1e-5,
    require_power: Annotated[
        bool, typer.Option(help="Train only on mains power (where the OS reports a battery).")
    ] = True,
    max_cpu_busy: Annotated[
        float | None, typer.Option(help="Train only while CPU use is at most this percent.")
    ] = None,
    memory_budget_mb: Annotated[
        int, typer.Option(help="Train only while this much memory (MB) is available.")
    ] = 512,
    colluding_fraction: Annotated[
        float,
        typer.Option(
            help="SecAgg+: join only rounds sized for at least this share of devices colluding "
            "with the server (0 accepts operators who assume no collusion)."
        ),
    ] = DEFAULT_ASSUMPTIONS.corrupt_fraction,
    cold: Annotated[
        bool, typer.Option(help="Start every message's ClientApp as a fresh process (slow).")
    ] = False,
    new_ledger: Annotated[
        bool,
        typer.Option(
            "--new-ledger",
            help="First run of this key only: create its privacy ledger, with ε 0. Right only "
            "if the key never trained; a key that did has a ledger to restore, not to replace.",
        ),
    ] = False,
    new_data: Annotated[
        bool,
        typer.Option(
            "--new-data",
            help="Declare every record in --data new, never used for training by this key: "
            "their ε starts at 0 (a new generation in the ledger). If that is not true, every "
            "ε the device reports from then on is wrong.",
        ),
    ] = False,
) -> None:
    """Run this machine as a device of the federation at --superlink until Ctrl-C.

    The privacy ledger belongs to the key ($FEDMARKET_HOME/privacy/<address>.json): renaming
    the device or changing its data continues the same ε. A missing ledger is refused: give
    --new-ledger on the key's first run, or restore the ledger from a backup."""
    source = data_source(data, label_column)
    device = name or key.stem
    policy = EligibilityPolicy(
        require_power=require_power, max_cpu_busy=max_cpu_busy, memory_budget_mb=memory_budget_mb
    )
    dataset = load_data(source)  # bad data fails before the passphrase prompt
    account = load_keystore(key, passphrase(confirm=False))
    role = DeviceRole(
        name=device,
        data=source,
        home=fedmarket_home(),
        epsilon_cap=epsilon_cap,
        keystore=key.resolve(),
        account=account,
        delta=delta,
        policy=policy,
        colluding_fraction=colluding_fraction,
    )
    ledger = prepare_ledger(
        role.home,
        account,
        epsilon_cap=role.epsilon_cap,
        delta=role.delta,
        accountant=role.accountant,
        device=device,
        dataset=dataset.fingerprint(),
        new_ledger=new_ledger,
        new_data=new_data,
    )
    typer.echo(
        f"privacy ledger {ledger.path}: ε {ledger.epsilon():.3f} of cap {ledger.epsilon_cap:g} "
        f"(generation {ledger.generation})",
        err=True,
    )
    typer.echo(f"device {device} ({account.address}) joining {superlink}", err=True)
    join_federation(
        role,
        superlink=superlink,
        root_certificates=root_certificates,
        node_key=node_key_file,
        workdir=fedmarket_home() / "devices" / device,
        cold=cold,
    )


def data_source(data: str, label_column: str) -> DataSource:
    """``digits`` (scikit-learn's set), a .csv or .npz file, or a folder of class folders."""
    if data == "digits":
        return DataSource()
    path = Path(data).expanduser().resolve()
    if path.is_dir():
        return DataSource(kind="images", path=str(path))
    kinds: dict[str, DataKind] = {".csv": "csv", ".npz": "npz"}
    if path.suffix.lower() not in kinds:
        raise InvalidInput(
            f"--data {data}: use a .csv or .npz file, a folder of class folders, or digits"
        )
    if not path.is_file():
        raise DataError(f"--data {data}: no such file")
    return DataSource(kind=kinds[path.suffix.lower()], path=str(path), label_column=label_column)


@app.command()
def status(
    key: Annotated[
        str | None,
        typer.Option(
            help="Payout key (name or dev:N): also show its rewards and check the ε it signed "
            "into its published receipts against its ledger here."
        ),
    ] = None,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every privacy ledger here, verified: ε spent, cap, δ, remaining; with --key, rewards
    earned and claimable, and the ε in the key's published receipts checked against its ledger.

    Exits nonzero (after printing) if a ledger does not verify (11), was deleted (12), or the
    receipts state an ε the ledger does not explain (13)."""
    home = fedmarket_home()
    failures: list[FedmarketError] = []
    ledgers: list[dict[str, Any]] = []
    for path in PrivacyLedger.find(home):
        try:
            ledger = PrivacyLedger.read(path)
        except (LedgerCorrupted, LedgerMissing) as exc:
            failures.append(exc)
            ledgers.append({"identity": path.stem, "problem": str(exc)})
            continue
        ledgers.append(
            {
                "identity": ledger.identity,
                "device": ledger.device,
                "generation": ledger.generation,
                "rounds": ledger.rounds_spent(),
                "epsilon": ledger.epsilon(),
                "epsilon_cap": ledger.epsilon_cap,
                "delta": ledger.delta,
                "remaining": max(ledger.epsilon_cap - ledger.epsilon(), 0.0),
                "problem": None,
            }
        )
    rewards: list[dict[str, Any]] = []
    receipts: dict[str, Any] | None = None
    if key is not None:
        market = connect(rpc_url, key)
        store = open_store(backend, ipfs_api, 30.0)
        address = market.ledger.address
        for r in rewards_of(market.ledger, store, address, acks=AckBook(home, address)):
            rewards.append(
                {
                    "task": r.task,
                    "account": r.account,
                    "rounds_paid": r.rounds,
                    "earned": to_tokens(r.owed),
                    "claimed": to_tokens(r.claimed),
                    "claimable": to_tokens(r.claimable),
                    "pending": to_tokens(r.pending),
                    "final_at": r.final_at,
                    "sale_shares": to_tokens(r.sale_claimable),
                }
            )
        receipts = _check_receipts(home, market.ledger, store, address, failures)
        node_key = bytes(node_key_from_identity(bytes(market.account.key)).verify_key)
        inclusion = transcript_problems(market.ledger, store, address, node_key)
        receipts["transcripts_checked"] = inclusion.checked
        receipts["transcripts_missing"] = inclusion.missing
        receipts["transcript_problems"] = inclusion.problems
        if inclusion.problems:
            failures.append(NotInTranscript("; ".join(inclusion.problems)))
    if as_json:
        emit({"ledgers": ledgers, "rewards": rewards, "receipts": receipts}, True, "")
    else:
        _print_status(home, ledgers, rewards if key is not None else None, receipts)
    if failures:  # after printing everything: the first failure names itself on stderr
        raise failures[0]


def _check_receipts(
    home: Path, chain: Ledger, store: ContentStore, address: str, failures: list[FedmarketError]
) -> dict[str, Any]:
    """The key's published receipts against its verified ledger here (none here: unchecked)."""
    path = PrivacyLedger.path_for(home, address)
    try:
        ledger = PrivacyLedger.read(path)
    except (LedgerCorrupted, LedgerMissing):  # listed, and failed, with the ledgers above
        return {"identity": address, "receipts": None, "checked": False, "problems": []}
    signed = published_epsilons(chain, store, address)
    problems = check_signed_epsilon(ledger, signed)
    if problems:
        failures.append(EpsilonMismatch("; ".join(problems)))
    return {"identity": address, "receipts": len(signed), "checked": True, "problems": problems}


def _print_status(
    home: Path,
    ledgers: list[dict[str, Any]],
    rewards: list[dict[str, Any]] | None,
    receipts: dict[str, Any] | None,
) -> None:
    console = Console()
    if not ledgers:
        console.print(f"no privacy ledger under {home / 'privacy'}")
    else:
        table = Table(title="Privacy ledgers")
        names = ("identity", "device", "gen", "rounds", "epsilon", "cap", "delta", "remaining")
        for column in names:
            table.add_column(column, justify="right")
        for row in ledgers:
            if row["problem"] is not None:
                continue
            table.add_row(
                f"{row['identity'][:8]}…{row['identity'][-6:]}",  # whole in --json
                row["device"],
                str(row["generation"]),
                str(row["rounds"]),
                f"{row['epsilon']:.3f}",
                f"{row['epsilon_cap']:g}",
                f"{row['delta']:g}",
                f"{row['remaining']:.3f}",
            )
        console.print(table)
        for row in ledgers:
            if row["problem"] is not None:
                console.print(f"[red]REFUSED[/red] {row['identity']}: {row['problem']}")
    if receipts is not None:
        if not receipts["checked"]:
            console.print(
                f"published receipts of {receipts['identity']}: not checked (no verified "
                "ledger of this key here)"
            )
        elif receipts["problems"]:
            for problem in receipts["problems"]:
                console.print(f"[red]RECEIPT ε MISMATCH[/red] {problem}")
        else:
            console.print(
                f"{receipts['receipts']} published receipts of {receipts['identity']}: their ε "
                "agrees with the ledger and never goes down"
            )
        for problem in receipts.get("transcript_problems", []):
            console.print(f"[red]NOT IN THE SUM[/red] {problem}")
        if receipts.get("transcripts_checked") and not receipts.get("transcript_problems"):
            console.print(
                f"{receipts['transcripts_checked']} paid round(s): each SecAgg+ transcript "
                "holds my upload under my signature"
            )
        if receipts.get("transcripts_missing"):
            console.print(
                f"{receipts['transcripts_missing']} paid round(s) published no SecAgg+ "
                "transcript: my inclusion in them is not checked"
            )
    if rewards is not None:
        table = Table(title="Rewards (tokens)")
        columns = (
            "task",
            "rounds paid",
            "earned",
            "claimed",
            "claimable",
            "pending",
            "sale shares",
        )
        for column in columns:
            table.add_column(column, justify="right")
        for row in rewards:
            table.add_row(
                str(row["task"]),
                str(row["rounds_paid"]),
                row["earned"],
                row["claimed"],
                row["claimable"],
                row["pending"],
                row["sale_shares"],
            )
        console.print(table if rewards else "no rewards for this key")


@app.command()
def watch(
    key: Annotated[str, typer.Option(help="Payout key (name or dev:N) whose rewards to guard.")],
    task: Annotated[
        int | None, typer.Option(min=1, help="Only this task (default: every task).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report; send no challenge or void.")
    ] = False,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check every rewards root still in its challenge window against the earlier roots (no
    account's amount may fall) and against this key's acknowledgements; challenge any that pays
    less, answer baseless challenges of honest roots, and void roots whose challenge went
    unanswered. Run it at least once per challenge window
    (6 hours by default) while a task of yours commits rounds, e.g. from cron."""
    market = connect(rpc_url, key)
    objections = watch_roots(
        market.ledger,
        open_store(backend, ipfs_api, 30.0),
        market.ledger.address,
        acks=AckBook(fedmarket_home(), market.ledger.address),
        tasks=None if task is None else [TaskId(task)],
        act=not dry_run,
    )
    rows = [
        {
            "task": o.task,
            "round": o.round,
            "account": o.account,
            "owed": to_tokens(o.owed),
            "root_pays": None if o.pays is None else to_tokens(o.pays),
            "evidence": o.evidence,
            "action": o.action,
        }
        for o in objections
    ]
    text = (
        "\n".join(
            f"task {r['task']} round {r['round']}: {r['account']} is owed {r['owed']} "
            f"({r['evidence']}), the root pays "
            f"{r['root_pays'] if r['root_pays'] is not None else 'unknown (bundle missing)'}: "
            f"{r['action']}"
            for r in rows
        )
        if rows
        else f"every root in its window pays {market.ledger.address} what it is owed"
    )
    emit({"account": market.ledger.address, "objections": rows}, as_json, text)


# The same command as `fedmarket market claim`: one definition, listed where owners look.
app.command(name="claim")(market_claim)
