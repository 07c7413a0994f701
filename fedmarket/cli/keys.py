"""``fedmarket keys``: Ethereum keys for devices, aggregators, sponsors and buyers."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from fedmarket.config import fedmarket_home
from fedmarket.keys import PASSPHRASE_ENV, KeyStore

app = typer.Typer(
    help="Ethereum keys, stored as Web3 Secret Storage keystores.", no_args_is_help=True
)


def key_store() -> KeyStore:
    return KeyStore(fedmarket_home() / "keys")


def passphrase(*, confirm: bool) -> str:
    """From $FEDMARKET_PASSPHRASE, else a hidden prompt; never echoed."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is not None:
        return value
    entered: str = typer.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)
    return entered


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="Name of the new key, e.g. device-1.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create a key and print its address; passphrase from $FEDMARKET_PASSPHRASE or a prompt."""
    store = key_store()
    store.check_name(name)  # a bad name fails before the passphrase prompt
    address = store.new(name, passphrase(confirm=True))
    typer.echo(json.dumps({"name": name, "address": address}) if as_json else address)


@app.command(name="list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List keys and their addresses (no passphrase needed)."""
    names = key_store().names()
    if as_json:
        typer.echo(json.dumps([{"name": n, "address": a} for n, a in names]))
        return
    for name, address in names:
        typer.echo(f"{name}\t{address}")


@app.command()
def address(name: Annotated[str, typer.Argument(help="Key name.")]) -> None:
    """Print one key's address."""
    typer.echo(key_store().address(name))
