"""``fedmarket verify MODEL_CID``: check a model's lineage on chain and in the store."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from fedmarket.cli.connect import connect
from fedmarket.cli.store import ApiOption, Backend, BackendOption, TimeoutOption, open_store
from fedmarket.market.lineage import verify_lineage


def verify(
    model_cid: Annotated[str, typer.Argument(help="CID of the model to trace.")],
    rpc_url: Annotated[
        str | None, typer.Option(help="EVM JSON-RPC URL (default: the local chain).")
    ] = None,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    timeout: TimeoutOption = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Walk commits, receipts bundles, signatures and rewards roots back to round 1."""
    market = connect(rpc_url, None, timeout=timeout)  # reads only: a throwaway key
    lineage = verify_lineage(
        market.ledger,
        open_store(backend, ipfs_api, timeout),
        model_cid,
        chain_id=market.chain_id,
        market=market.address,
    )
    if as_json:
        typer.echo(json.dumps({"ok": True, **asdict(lineage)}))
        return
    for r in lineage.rounds:
        typer.echo(
            f"round {r.round}: model {r.model_cid} bundle {r.bundle_cid} "
            f"({r.receipts} receipts, cumulative rewards {r.cumulative_total}) ok"
        )
    typer.echo(f"OK: {lineage.model_cid} of task {lineage.task} verifies back to round 1")
