"""``fedmarket market``: tasks, rewards and encrypted model sales, for sponsors, sellers, buyers.

Amounts are in whole tokens (decimal text, 18 decimals). Every command checks what it can
before it signs (existence, balances, prices, CIDs), so a bad request sends no transaction.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from eth_utils.address import is_address, to_checksum_address
from rich.console import Console
from rich.table import Table

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
from fedmarket.cli.server import state_path
from fedmarket.cli.store import Backend, open_store
from fedmarket.config import fedmarket_home
from fedmarket.crypto.key_delivery import OneTimeKey
from fedmarket.device.acks import AckBook
from fedmarket.exceptions import (
    FedmarketError,
    InvalidInput,
    KeyCommitmentMismatch,
    LineageBroken,
)
from fedmarket.files import atomic_write
from fedmarket.ledger.base import PurchaseState
from fedmarket.market.amounts import to_base_units, to_tokens
from fedmarket.market.bundle import canonical_json
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.lineage import verify_lineage
from fedmarket.market.publisher import stored_model
from fedmarket.market.sales import (
    Keyring,
    check_listing,
    dispute_key,
    list_model,
    listing_metadata,
    model_metadata,
    pay_for,
    receive,
    serve,
    settle_due,
    verify_bought,
)
from fedmarket.privacy.accounting import ADJACENCY, PRIVACY_UNIT
from fedmarket.store import ContentStore
from fedmarket.types import ListingId, PurchaseId, TaskId

app = typer.Typer(
    help="The data market: tasks, rewards and encrypted model sales.", no_args_is_help=True
)
_console = Console(stderr=True)


def market_folder(market: Market, role: str) -> Path:
    """Per-market local state (seller keyring, buyer identities) under $FEDMARKET_HOME."""
    return fedmarket_home() / "market" / f"{market.chain_id}-{market.address}" / role


def keyring(market: Market) -> Keyring:
    return Keyring(market_folder(market, "seller-keys"))


def _address(text: str, what: str) -> str:
    if not is_address(text):
        raise InvalidInput(f"{what} {text!r} is not an Ethereum address (0x and 40 hex digits)")
    return to_checksum_address(text)


# -- tasks and rewards -----------------------------------------------------------------------------


@app.command()
def tasks(rpc_url: RpcOption = None, as_json: JsonOption = False) -> None:
    """Every task: sponsor, aggregator, reward per update, escrow, committed rewards, rounds."""
    ledger = connect(rpc_url, None).ledger
    rows = []
    for task in ledger.task_ids():
        t = ledger.task(task)
        rows.append(
            {
                "task": task,
                "sponsor": t.sponsor,
                "aggregator": t.aggregator,
                "reward_per_update": to_tokens(t.reward_per_update),
                "escrow": to_tokens(t.escrow),
                "committed": to_tokens(t.committed),
                "paid": to_tokens(t.paid),
                "rounds": t.last_round,
                "closes_at": t.closes_at or None,
                "frozen_at": t.frozen_at or None,
                "paid_on_acks": to_tokens(t.paid_on_acks),
                "refund_opens_at": t.refund_opens_at or None,
                "sale_share": t.contributors_bps / 10_000,
            }
        )
    if as_json:
        emit(rows, True, "")
        return
    _table("Tasks", rows)


@app.command("create-task")
def create_task(
    key: KeyOption,
    aggregator: Annotated[str, typer.Option(help="Address of the task's aggregator.")],
    reward: Annotated[str, typer.Option(help="Tokens paid per contributed update.")],
    budget: Annotated[str, typer.Option(help="Tokens escrowed for rewards now.")],
    spec: Annotated[
        Path | None, typer.Option(help="Task description to store by CID (e.g. its TOML).")
    ] = None,
    contributors_share: Annotated[
        float,
        typer.Option(help="Least share of every sale of the task's models paid to its devices."),
    ] = 0.2,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Open a task and escrow its budget with a permit, in one transaction."""
    aggregator = _address(aggregator, "--aggregator")
    reward_units = to_base_units(reward, what="--reward")
    budget_units = to_base_units(budget, what="--budget")
    if reward_units == 0 or budget_units < reward_units:
        raise InvalidInput("--reward must be > 0 and --budget must cover at least one update")
    if spec is not None and not spec.is_file():
        raise InvalidInput(f"--spec {spec} is not a file")
    if not 0 <= contributors_share <= 1:
        raise InvalidInput(f"--contributors-share must be in 0..1, got {contributors_share}")
    market = connect(rpc_url, key)
    ledger = market.ledger
    held = ledger.balance(ledger.address)
    if held < budget_units:
        raise InvalidInput(
            f"{ledger.address} holds {to_tokens(held)} tokens, less than the budget "
            f"{to_tokens(budget_units)}; top up first (nothing was sent)"
        )
    store = open_store(backend, ipfs_api, 30.0)
    spec_cid = (
        store.put_file(spec)
        if spec is not None
        else store.put_bytes(canonical_json({"reward_per_update": reward, "budget": budget}))
    )
    task = ledger.create_task(
        aggregator=aggregator,
        reward_per_update=reward_units,
        budget=budget_units,
        spec_cid=spec_cid,
        contributors_bps=round(contributors_share * 10_000),
    )
    emit({"task": task, "spec_cid": spec_cid}, as_json, f"task {task} (spec {spec_cid})")


@app.command()
def claim(
    key: KeyOption,
    task: Annotated[
        int | None, typer.Option(min=1, help="Only this task (default: every task).")
    ] = None,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Claim every reward and sale share due to this key: committed rewards for all rounds in
    one transaction per task (or the aggregator's acknowledgement, if it pays more)."""
    claim_rewards(key, task, rpc_url, backend, ipfs_api, as_json)


def claim_rewards(
    key: str,
    task: int | None,
    rpc_url: str | None,
    backend: Backend,
    ipfs_api: str | None,
    as_json: bool,
) -> None:
    """Rebuild this key's rewards from chain, store and its acknowledgements (verified), then
    claim what is due."""
    market = connect(rpc_url, key)
    rewards = rewards_of(
        market.ledger,
        open_store(backend, ipfs_api, 30.0),
        market.ledger.address,
        acks=AckBook(fedmarket_home(), market.ledger.address),
        tasks=None if task is None else [TaskId(task)],
    )
    failed: dict[TaskId, FedmarketError] = {}
    paid = claim_all(market.ledger, rewards, failed=failed)
    waiting = {r.task: r for r in rewards if r.pending > r.claimed}
    payload = {
        "account": market.ledger.address,
        "claimed": {str(t): to_tokens(amount) for t, amount in paid.items()},
        "total": to_tokens(sum(paid.values())),
        "pending": {
            str(t): {"amount": to_tokens(r.pending - r.claimed), "final_at": r.final_at}
            for t, r in waiting.items()
        },
        "failed": {str(t): str(exc) for t, exc in failed.items()},
    }
    lines = [f"task {t}: claimed {to_tokens(a)} tokens" for t, a in paid.items()]
    lines += [
        f"task {t}: {to_tokens(r.pending - r.claimed)} more tokens once its latest root is "
        f"final (chain time {r.final_at})"
        for t, r in waiting.items()
    ]
    lines += [f"task {t}: not claimed: {exc}" for t, exc in failed.items()]
    text = "\n".join(lines) if lines else f"nothing to claim for {market.ledger.address}"
    emit(payload, as_json, text)
    if failed:  # the report above says what was paid; the exit code says something was not
        raise next(iter(failed.values()))


@app.command()
def balance(
    key: Annotated[str | None, typer.Option(help="Key name or dev:N.")] = None,
    address: Annotated[str | None, typer.Option(help="Any address (instead of --key).")] = None,
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Token balance and proceeds waiting to be withdrawn."""
    if (key is None) == (address is None):
        raise InvalidInput("give exactly one of --key and --address")
    market = connect(rpc_url, key)
    account = _address(address, "--address") if address else market.ledger.address
    payload = {
        "address": account,
        "tokens": to_tokens(market.ledger.balance(account)),
        "withdrawable": to_tokens(market.ledger.owed(account)),
    }
    emit(
        payload,
        as_json,
        f"{account}: {payload['tokens']} tokens, {payload['withdrawable']} to withdraw",
    )


@app.command()
def withdraw(key: KeyOption, rpc_url: RpcOption = None, as_json: JsonOption = False) -> None:
    """Settle your sales whose dispute window has passed, then withdraw the proceeds."""
    ledger = connect(rpc_url, key).ledger
    settle_due(ledger)
    if ledger.owed(ledger.address) == 0:
        raise InvalidInput(
            f"nothing to withdraw for {ledger.address}: proceeds are released once a sale's "
            "dispute window has passed (nothing was sent)"
        )
    amount = ledger.withdraw()
    emit({"withdrawn": to_tokens(amount)}, as_json, f"withdrew {to_tokens(amount)} tokens")


@app.command("close-task")
def close_task(
    key: KeyOption,
    task: Annotated[int, typer.Option(min=1, help="Your task to close.")],
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Close your task: its aggregator may still commit, and devices claim, during the grace;
    then devices claim their acknowledgements for one more grace, and `market reclaim`
    returns the unspent escrow."""
    ledger = connect(rpc_url, key).ledger
    state = ledger.task(TaskId(task))
    if state.sponsor != ledger.address:
        raise InvalidInput(f"task {task}'s sponsor is {state.sponsor}, not {ledger.address}")
    if state.closing:
        raise InvalidInput(f"task {task} is already closing (at unix time {state.closes_at})")
    closes_at = ledger.close_task(TaskId(task))
    opens = ledger.task(TaskId(task)).refund_opens_at
    emit(
        {"task": task, "closes_at": closes_at, "refund_opens_at": opens},
        as_json,
        f"task {task} takes its last commits until unix time {closes_at}; then its devices' "
        f"acknowledgements are paid; reclaim its unspent escrow from unix time {opens}",
    )


@app.command()
def reclaim(
    key: KeyOption,
    task: Annotated[int, typer.Option(min=1, help="A closed task of yours.")],
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Return a closed task's escrow that no device is owed to its sponsor."""
    ledger = connect(rpc_url, key).ledger
    state = ledger.task(TaskId(task))
    now = ledger.now()
    if not state.closing:
        raise InvalidInput(
            f"task {task} is not closing: close it with `market close-task`, wait out the "
            "grace, then reclaim (nothing was sent)"
        )
    if now < state.refund_opens_at:
        raise InvalidInput(
            f"task {task}'s refund opens at unix time {state.refund_opens_at} "
            f"({state.refund_opens_at - now} s from now: a close grace after its commits stop, "
            "and after any voided root, so that acknowledgements are paid first); reclaim after "
            "that (nothing was sent)"
        )
    if state.escrow <= state.reserved:
        raise InvalidInput(f"task {task} has nothing unspent to return (nothing was sent)")
    amount = ledger.refund_unspent(TaskId(task))
    emit({"task": task, "refund": to_tokens(amount)}, as_json, f"returned {to_tokens(amount)}")


# -- sales -----------------------------------------------------------------------------------------


@app.command()
def listings(
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every active listing: price, and epsilon max/median, delta, devices and rounds from its
    verified lineage (a listing whose lineage is broken says so); accuracy as its seller
    declares it."""
    ledger = connect(rpc_url, None).ledger
    store = open_store(backend, ipfs_api, 30.0)
    rows = []
    for listing in ledger.listing_ids():
        offer = ledger.listing(listing)
        if not offer.active:
            continue
        try:  # one hostile listing must not hide the others
            facts = model_metadata(check_listing(ledger, store, listing))
            declared = listing_metadata(store, ledger, listing)
            problem = None
        except FedmarketError as exc:
            facts, declared, problem = {}, {}, str(exc)
        rows.append(
            {
                "listing": listing,
                "seller": offer.seller,
                "task": offer.task,
                "round": offer.round,
                "price": to_tokens(offer.price),
                "epsilon_max": facts.get("epsilon_max"),
                "epsilon_median": facts.get("epsilon_median"),
                "delta": facts.get("delta"),
                "privacy_unit": facts.get("privacy_unit"),
                "adjacency": facts.get("adjacency"),
                "devices": facts.get("devices"),
                "rounds": facts.get("rounds"),
                "accuracy": declared.get("accuracy"),
                "share": offer.contributors_bps / 10_000,
                "verified": problem is None,
                "problem": problem,
            }
        )
    if as_json:
        emit(rows, True, "")
        return
    _table("Listings", rows, skip=("seller", "problem", "privacy_unit", "adjacency"))
    typer.echo(f"ε, δ: the unit of privacy is {PRIVACY_UNIT} ({ADJACENCY}; DP-SGD on devices)")


@app.command(name="list")
def list_command(
    key: KeyOption,
    task: Annotated[
        int, typer.Option(min=1, help="The task whose model you sell (you aggregate it).")
    ],
    price: Annotated[str, typer.Option(help="Price in tokens.")],
    round_: Annotated[
        int | None, typer.Option("--round", help="The committed round (default: the last).")
    ] = None,
    contributors_share: Annotated[
        float | None,
        typer.Option(
            help="Share of each sale paid to the round's contributors (0..1; at least the "
            "task's, which is the default)."
        ),
    ] = None,
    accuracy: Annotated[
        float | None, typer.Option(help="Accuracy you declare for the model (shown to buyers).")
    ] = None,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a committed round's model: decrypted from your server's state, checked against its
    commitment and lineage, encrypted with a fresh key, stored and listed (task, round)."""
    price_units = to_base_units(price, what="--price")
    if price_units == 0:
        raise InvalidInput("--price must be > 0")
    if contributors_share is not None and not 0 <= contributors_share <= 1:
        raise InvalidInput(f"--contributors-share must be in 0..1, got {contributors_share}")
    market = connect(rpc_url, key)
    minimum = market.ledger.task(TaskId(task)).contributors_bps
    bps = minimum if contributors_share is None else round(contributors_share * 10_000)
    if bps < minimum:
        raise InvalidInput(
            f"task {task} promises its devices at least {minimum / 10_000:g} of every sale; "
            f"--contributors-share {contributors_share} is below it (nothing was sent)"
        )
    store = open_store(backend, ipfs_api, 30.0)
    round_, sealed = stored_model(state_path(market, task), store, round_)
    lineage = verify_lineage(
        market.ledger,
        store,
        TaskId(task),
        round_,
        chain_id=market.chain_id,
        market=market.address,
        model=sealed,
    )
    listing = list_model(
        market.ledger,
        store,
        keyring(market),
        task=TaskId(task),
        round=round_,
        model=sealed,
        price=price_units,
        metadata=model_metadata(lineage, accuracy=accuracy),
        contributors_bps=bps,
    )
    emit(
        {"listing": listing, "task": task, "round": round_},
        as_json,
        f"listing {listing}: task {task} round {round_}",
    )


@app.command(name="serve")
def serve_keys(
    key: KeyOption,
    once: Annotated[bool, typer.Option(help="Deliver what is pending, then exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between checks.")] = 2.0,
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deliver keys for paid purchases of your listings and settle sales whose dispute window
    has passed (idempotent; safe to restart)."""
    if interval <= 0:
        raise InvalidInput(f"--interval must be > 0 seconds, got {interval}")
    market = connect(rpc_url, key)
    ring = keyring(market)
    while True:
        for purchase in serve(market.ledger, ring):
            emit({"delivered": purchase}, as_json, f"delivered the key of purchase {purchase}")
        for purchase in settle_due(market.ledger):
            emit({"settled": purchase}, as_json, f"settled purchase {purchase}")
        if once:
            return
        time.sleep(interval)


@app.command()
def buy(
    listing: Annotated[int, typer.Argument(min=1, help="Listing to buy.")],
    key: KeyOption,
    out: Annotated[Path, typer.Option(help="Where to write the decrypted model.")],
    max_price: Annotated[
        str | None, typer.Option(help="Refuse to pay more than this many tokens.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the seller's key.")] = 120.0,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Buy in one transaction, wait for the key, fetch, decrypt, check, verify lineage, write."""
    if timeout <= 0:
        raise InvalidInput(f"--timeout must be > 0 seconds, got {timeout}")
    if out.exists():
        raise InvalidInput(f"--out {out} exists; choose a new path")
    cap = None if max_price is None else to_base_units(max_price, what="--max-price")
    market = connect(rpc_url, key)
    store = open_store(backend, ipfs_api, 30.0)
    identity = OneTimeKey.generate()
    # Saved before paying, so a paid purchase can always be completed (`market fetch`) or
    # disputed (`market dispute`) later.
    folder = market_folder(market, "buyer-identities")
    folder.mkdir(parents=True, exist_ok=True)
    unpaid = folder / f"unpaid-{identity.public.to_text()[2:18]}.id"
    identity.save(unpaid)
    check_listing(market.ledger, store, ListingId(listing))  # a broken lineage: nothing paid
    try:
        purchase = pay_for(market.ledger, ListingId(listing), identity, max_price=cap)
    except BaseException:
        unpaid.unlink()
        raise
    unpaid.rename(_identity_path(market, purchase))
    _finish(market, store, purchase, identity, out, timeout, as_json)


@app.command()
def fetch(
    purchase: Annotated[
        int, typer.Argument(min=1, help="A purchase of yours whose key came late.")
    ],
    key: KeyOption,
    out: Annotated[Path, typer.Option(help="Where to write the decrypted model.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the seller's key.")] = 120.0,
    rpc_url: RpcOption = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    as_json: JsonOption = False,
) -> None:
    """Complete an earlier purchase: wait for its key, then decrypt, check and write."""
    if out.exists():
        raise InvalidInput(f"--out {out} exists; choose a new path")
    market = connect(rpc_url, key)
    identity = _own_identity(market, PurchaseId(purchase))
    store = open_store(backend, ipfs_api, 30.0)
    _finish(market, store, PurchaseId(purchase), identity, out, timeout, as_json)


@app.command()
def dispute(
    purchase: Annotated[int, typer.Argument(min=1, help="Your purchase whose key does not match.")],
    key: KeyOption,
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Prove on chain that a delivered key misses the listing's commitment; get a full refund.

    `market buy` and `market fetch` do this themselves when they find a wrong key."""
    market = connect(rpc_url, key)
    identity = _own_identity(market, PurchaseId(purchase))
    amount = dispute_key(market.ledger, PurchaseId(purchase), identity)
    emit(
        {"purchase": purchase, "refunded": to_tokens(amount)},
        as_json,
        f"the key was wrong: refunded {to_tokens(amount)} tokens",
    )


@app.command()
def refund(
    purchase: Annotated[int, typer.Argument(min=1, help="Your purchase whose key never came.")],
    key: KeyOption,
    rpc_url: RpcOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take your payment back once the seller's delivery deadline has passed without a key."""
    ledger = connect(rpc_url, key).ledger
    record = ledger.purchase(PurchaseId(purchase))
    if record.buyer != ledger.address:
        raise InvalidInput(f"purchase {purchase} was made by {record.buyer}, not {ledger.address}")
    if record.state is not PurchaseState.PENDING:
        raise InvalidInput(f"purchase {purchase} is {record.state.name.lower()}; no refund is due")
    now = ledger.now()
    if now <= record.deadline:
        raise InvalidInput(
            f"the seller has until unix time {record.deadline} ({record.deadline - now} s from "
            f"now) to deliver the key of purchase {purchase}; refund after that (nothing was sent)"
        )
    amount = ledger.refund(PurchaseId(purchase))
    emit(
        {"purchase": purchase, "refunded": to_tokens(amount)},
        as_json,
        f"refunded {to_tokens(amount)} tokens",
    )


# -- helpers ---------------------------------------------------------------------------------------


def _identity_path(market: Market, purchase: PurchaseId) -> Path:
    return market_folder(market, "buyer-identities") / f"purchase-{purchase}.id"


def _own_identity(market: Market, purchase: PurchaseId) -> OneTimeKey:
    """The one-time key this account bought ``purchase`` with; an unknown purchase, another
    buyer's or one without a saved key is refused by name before anything is sent."""
    record = market.ledger.purchase(purchase)  # unknown: "purchase N does not exist"
    if record.buyer != market.ledger.address:
        raise InvalidInput(
            f"purchase {purchase} was made by {record.buyer}, not {market.ledger.address}; "
            "use the buyer's key (nothing was sent)"
        )
    path = _identity_path(market, purchase)
    if not path.exists():
        raise InvalidInput(
            f"no buyer identity for purchase {purchase} in {path.parent}: it was bought "
            "elsewhere; run the command where it was bought (nothing was sent)"
        )
    return OneTimeKey.load(path)


def _finish(
    market: Market,
    store: ContentStore,
    purchase: PurchaseId,
    identity: OneTimeKey,
    out: Path,
    timeout: float,
    as_json: bool,
) -> None:
    with _console.status(f"purchase {purchase}: waiting for the seller's key") as status:

        def progress(waited: float) -> None:
            status.update(
                f"purchase {purchase}: waiting for the seller's key ({waited:.0f}/{timeout:g} s)"
            )

        try:
            bought = receive(
                market.ledger, store, purchase, identity, timeout=timeout, progress=progress
            )
        except KeyCommitmentMismatch:
            refunded = dispute_key(market.ledger, purchase, identity)
            raise KeyCommitmentMismatch(
                f"purchase {purchase}: the seller's key does not match the listing's "
                f"commitment; disputed on chain and refunded {to_tokens(refunded)} tokens"
            ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda handle: handle.write(bought.model))  # paid for: keep it first
    try:
        verify_bought(market.ledger, store, bought)
    except LineageBroken as exc:
        raise LineageBroken(
            f"the model is written, but its lineage does not verify: {exc}"
        ) from None
    payload = {
        "listing": bought.listing,
        "purchase": purchase,
        "task": bought.task,
        "round": bought.round,
        "price": to_tokens(bought.price),
        "model_commitment": bought.sealed.commitment.hex(),
        "out": str(out),
        "verified": True,
        "metadata": bought.metadata,
    }
    emit(
        payload,
        as_json,
        f"wrote {out} (task {bought.task} round {bought.round}); lineage verified after decryption",
    )


def _table(title: str, rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> None:
    if not rows:
        typer.echo(f"no {title.lower()}")
        return
    table = Table(title=title)
    columns = [c for c in rows[0] if c not in skip]
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*("-" if row[c] is None else _cell(row[c]) for c in columns))
    Console().print(table)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return value[:8] + "…"
    return str(value)
