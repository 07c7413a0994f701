"""``fedmarket store``: add, fetch and verify content by CID, locally or on an IPFS node."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fedmarket.config import fedmarket_home
from fedmarket.exceptions import InvalidInput
from fedmarket.store import ContentStore, IpfsStore, LocalStore, canonical, parse_cid
from fedmarket.store.ipfs import DEFAULT_API

IPFS_API_ENV = "FEDMARKET_IPFS_API"

app = typer.Typer(
    help="Content-addressed storage: CIDs identical to `ipfs add --cid-version=1 --raw-leaves`.",
    no_args_is_help=True,
)


class Backend(StrEnum):
    local = "local"
    ipfs = "ipfs"


BackendOption = Annotated[
    Backend,
    typer.Option(help="local: blocks under $FEDMARKET_HOME/store; ipfs: an IPFS node's RPC."),
]
ApiOption = Annotated[
    str | None,
    typer.Option(
        "--ipfs-api", help=f"IPFS RPC multiaddr (default ${IPFS_API_ENV} or {DEFAULT_API})."
    ),
]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for the IPFS node per call.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def open_store(backend: Backend, ipfs_api: str | None, timeout: float) -> ContentStore:
    if backend is Backend.local:
        return LocalStore(fedmarket_home() / "store")
    if timeout <= 0:
        raise InvalidInput(f"--timeout must be > 0 seconds, got {timeout:g}")
    return IpfsStore(ipfs_api or os.environ.get(IPFS_API_ENV, DEFAULT_API), timeout=timeout)


def _print(payload: dict[str, object], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(payload, sort_keys=True) if as_json else text)


@app.command()
def add(
    path: Annotated[Path, typer.Argument(help="File to store.")],
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Store a file (streamed, constant memory) and print its CID."""
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file; pass the path of a file to store")
    store = open_store(backend, ipfs_api, timeout)
    cid = store.put_file(path)
    size = path.stat().st_size
    _print({"cid": cid, "size": size, "backend": backend.value}, as_json, cid)


@app.command()
def get(
    cid: Annotated[str, typer.Argument(help="CID to fetch.")],
    out: Annotated[Path, typer.Option(help="Where to write the content.")],
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Fetch content by CID; --out appears only once every block has verified."""
    root = canonical(parse_cid(cid))
    if out.exists() and not force:
        raise InvalidInput(f"{out} exists; pass --force to replace it or choose another --out")
    store = open_store(backend, ipfs_api, timeout)
    size = store.get_file(root, out)
    _print({"cid": root, "size": size, "out": str(out)}, as_json, f"{root} -> {out} ({size} B)")


@app.command()
def verify(
    cid: Annotated[str, typer.Argument(help="CID to check.")],
    backend: BackendOption = Backend.local,
    ipfs_api: ApiOption = None,
    timeout: TimeoutOption = 30.0,
    as_json: JsonOption = False,
) -> None:
    """Read every block of a CID and check it against its hash."""
    root = canonical(parse_cid(cid))
    size = open_store(backend, ipfs_api, timeout).verify(root)
    _print({"cid": root, "size": size, "ok": True}, as_json, f"{root} ok ({size} B)")
