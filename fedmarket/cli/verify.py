"""``fedmarket verify --task T``: check a task's lineage on chain and in the store."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

from fedmarket.cli.connect import connect
from fedmarket.cli.store import ApiOption, Backend, BackendOption, TimeoutOption, open_store
from fedmarket.market.lineage import verify_lineage
from fedmarket.types import TaskId


def verify(
    task: Annotated[int, typer.Option(min=1, help="The task whose rounds to trace.")],
    round_: Annotated[
        int | None, typer.Option("--round", help="Up to this round (default: the last).")
    ] = None,
    rpc_url: Annotated[
        str | None, typer.Option(help="EVM JSON-RPC URL (default: the local chain).")
    ] = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    timeout: TimeoutOption = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Walk a task's commits, receipts bundles, signatures and rewards roots back to round 1.

    Models are committed by hiding commitments and stored encrypted: a buyer checks the model
    itself against the commitment after decrypting (`market buy` does)."""
    market = connect(rpc_url, None, timeout=timeout)  # reads only: a throwaway key
    lineage = verify_lineage(
        market.ledger,
        open_store(backend, ipfs_api, timeout),
        TaskId(task),
        round_,
        chain_id=market.chain_id,
        market=market.address,
    )
    if as_json:
        typer.echo(json.dumps({"ok": True, **asdict(lineage)}, default=_hex))
        return
    for r in lineage.rounds:
        typer.echo(
            f"round {r.round}: model 0x{r.model_commitment.hex()[:16]}… (ciphertext "
            f"{r.model_cid}) bundle {r.bundle_cid} ({r.receipts} receipts, cumulative rewards "
            f"{r.cumulative_total}) ok"
        )
    typer.echo(f"OK: task {lineage.task} round {lineage.round} verifies back to round 1")


def _hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
