"""``fedmarket crypto``: encrypt assets, seal their keys to a buyer, decrypt what was bought."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedmarket.crypto import (
    AssetKey,
    Identity,
    decrypt_file,
    encrypt_file,
    open_sealed_key,
    parse_public_key,
    seal_key,
)
from fedmarket.exceptions import InvalidInput

app = typer.Typer(
    help="Asset encryption (XChaCha20-Poly1305 secretstream) and sealed key delivery (X25519).",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _hex(text: str, size: int, what: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != size:
        raise InvalidInput(f"{what} must be {2 * size} hex characters, got {text!r}")
    return value


def _sealed(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise InvalidInput("--sealed-key must be hex, as printed by `crypto seal`") from None


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise InvalidInput(f"{path} exists; choose another path (nothing was written)")


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="New identity file (0600) for receiving sealed keys.")],
    as_json: JsonOption = False,
) -> None:
    """Create an X25519 identity; print its public key (give it when buying)."""
    identity = Identity.generate()
    identity.save(out)
    public = identity.public_key.hex()
    typer.echo(json.dumps({"public_key": public, "identity": str(out)}) if as_json else public)


@app.command()
def encrypt(
    path: Annotated[Path, typer.Argument(help="File to encrypt.")],
    out: Annotated[Path, typer.Option(help="Where to write the ciphertext.")],
    key_out: Annotated[Path, typer.Option(help="New file (0600) for the fresh asset key.")],
    recipient: Annotated[
        str | None, typer.Option(help="Also seal the key to this X25519 public key (hex).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Encrypt a file with a fresh key; print the key commitment sha256(key)."""
    recipient_key = parse_public_key(recipient) if recipient is not None else None
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file; pass the file to encrypt")
    _refuse_existing(out)
    _refuse_existing(key_out)
    key = AssetKey.generate()
    encrypt_file(path, out, key)
    key.save(key_out)
    result = {"commitment": key.commitment.hex(), "ciphertext": str(out), "key": str(key_out)}
    if recipient_key is not None:
        result["sealed_key"] = seal_key(key, recipient_key).hex()
    typer.echo(json.dumps(result) if as_json else result["commitment"])


@app.command()
def seal(
    key: Annotated[Path, typer.Argument(help="Asset key file.")],
    recipient: Annotated[str, typer.Option(help="The buyer's X25519 public key (hex).")],
) -> None:
    """Seal an asset key to a buyer's public key; print the sealed key (hex)."""
    recipient_key = parse_public_key(recipient)
    typer.echo(seal_key(AssetKey.load(key), recipient_key).hex())


@app.command()
def decrypt(
    path: Annotated[Path, typer.Argument(help="Ciphertext to decrypt.")],
    out: Annotated[Path, typer.Option(help="Where to write the plaintext (only if it verifies).")],
    key: Annotated[Path | None, typer.Option(help="Asset key file.")] = None,
    sealed_key: Annotated[
        str | None, typer.Option(help="Sealed key (hex) delivered to your identity.")
    ] = None,
    identity: Annotated[
        Path | None, typer.Option(help="Your identity file, to open --sealed-key.")
    ] = None,
    commitment: Annotated[
        str | None, typer.Option(help="The listing's key commitment (hex) to check the key.")
    ] = None,
) -> None:
    """Decrypt an asset with its key, or with a sealed key and your identity."""
    if (key is None) == (sealed_key is None):
        raise InvalidInput("pass exactly one of --key or --sealed-key (with --identity)")
    expected = _hex(commitment, 32, "--commitment") if commitment is not None else None
    _refuse_existing(out)
    if key is not None:
        asset_key = AssetKey.load(key)
    elif sealed_key is not None and identity is not None:
        asset_key = open_sealed_key(_sealed(sealed_key), Identity.load(identity))
    else:
        raise InvalidInput("--sealed-key needs --identity, the file made by `crypto keygen`")
    if expected is not None:
        asset_key.check_commitment(expected)
    size = decrypt_file(path, out, asset_key)
    typer.echo(f"{out} ({size} B)")
