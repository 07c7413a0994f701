"""``fedmarket verify MODEL_CID``: check a model's lineage on chain and in the store."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from eth_account import Account
from web3 import Web3

from fedmarket.cli.chain import deployment_path
from fedmarket.cli.store import ApiOption, Backend, BackendOption, TimeoutOption, open_store
from fedmarket.ledger import Deployment, Web3Ledger
from fedmarket.ledger.chain import DEFAULT_PORT, rpc
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
    url = rpc_url or f"http://127.0.0.1:{DEFAULT_PORT}"
    chain_id = int(str(rpc(url, "eth_chainId")), 16)
    deployment = Deployment.load(deployment_path(chain_id))
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    reader = Web3Ledger(w3, deployment, Account.create())  # reads only: a throwaway key
    lineage = verify_lineage(
        reader,
        open_store(backend, ipfs_api, timeout),
        model_cid,
        chain_id=chain_id,
        market=deployment.market,
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
