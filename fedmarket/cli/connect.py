"""What the market, device and server commands share: chain, deployment, keys, store."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount

from fedmarket.cli.chain import deployment_path
from fedmarket.cli.keys import key_store, passphrase
from fedmarket.cli.store import Backend
from fedmarket.exceptions import InvalidInput
from fedmarket.ledger import Deployment, Web3Ledger
from fedmarket.ledger.chain import DEFAULT_PORT, DEV_CHAIN_ID, dev_accounts, rpc

RpcOption = Annotated[
    str | None,
    typer.Option(help="EVM JSON-RPC URL (default: the local chain, `fedmarket chain up`)."),
]
KeyOption = Annotated[
    str,
    typer.Option(
        help="Key name (`fedmarket keys`; passphrase from $FEDMARKET_PASSPHRASE or a prompt), "
        "or dev:N for anvil's development account N on a local chain."
    ),
]
BackendOption = Annotated[
    Backend,
    typer.Option(help="Content store: local ($FEDMARKET_HOME/store) or an IPFS node's RPC."),
]
ApiOption = Annotated[
    str | None, typer.Option("--ipfs-api", help="IPFS RPC multiaddr (with --backend ipfs).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]

_DEV_KEY = re.compile(r"dev:(\d{1,2})")


@dataclass(frozen=True)
class Market:
    """A connection to the deployed market, signing as one account."""

    ledger: Web3Ledger
    deployment: Deployment
    rpc_url: str
    account: LocalAccount

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    @property
    def address(self) -> str:
        return self.deployment.market


def connect(rpc_url: str | None, key: str | None, *, timeout: float = 30.0) -> Market:
    """The market on ``rpc_url`` as ``key`` (None: a throwaway key that only reads)."""
    url = rpc_url or f"http://127.0.0.1:{DEFAULT_PORT}"
    chain_id = int(str(rpc(url, "eth_chainId")), 16)
    deployment = Deployment.load(deployment_path(chain_id))
    account = load_account(key, chain_id) if key is not None else Account.create()
    ledger = Web3Ledger.connect(url, deployment, account, timeout=timeout)
    return Market(ledger, deployment, url, account)


def load_account(key: str, chain_id: int) -> LocalAccount:
    """A keystore key by name, or ``dev:N`` (anvil's development accounts, local chain only)."""
    if match := _DEV_KEY.fullmatch(key):
        if chain_id != DEV_CHAIN_ID:
            raise InvalidInput(
                f"{key} names a development account, but chain {chain_id} is not a local "
                "development chain; use a key from `fedmarket keys`"
            )
        return dev_accounts(int(match.group(1)) + 1)[-1]
    store = key_store()
    store.address(key)  # a missing key fails before the passphrase prompt
    return store.load(key, passphrase(confirm=False))


def emit(payload: Any, as_json: bool, text: str) -> None:
    """One JSON document with --json, else human text."""
    typer.echo(json.dumps(payload, sort_keys=True) if as_json else text)
