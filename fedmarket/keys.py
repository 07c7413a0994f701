"""Ethereum keys as Web3 Secret Storage keystores (scrypt), one 0600 file per named key.

Passphrases come from ``$FEDMARKET_PASSPHRASE`` or a hidden prompt; they and the keys never
reach logs, messages or tracebacks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from fedmarket.exceptions import InvalidInput, KeystoreError
from fedmarket.files import read_secret, write_secret
from fedmarket.types import Address

PASSPHRASE_ENV = "FEDMARKET_PASSPHRASE"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class KeyStore:
    """Named keystores in ``folder`` (``<name>.json``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def new(self, name: str, passphrase: str, *, private_key: bytes | None = None) -> Address:
        """Create (or import) a key; return its address."""
        path = self._path(name)
        if path.exists():
            raise InvalidInput(f"a key named {name!r} exists ({path}); choose another name")
        if len(passphrase) < 8:
            raise InvalidInput("the passphrase must have at least 8 characters")
        account = Account.from_key(private_key) if private_key else Account.create()
        keystore = Account.encrypt(account.key, passphrase)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_secret(path, json.dumps(keystore).encode())
        return Address(account.address)

    def names(self) -> list[tuple[str, Address]]:
        if not self.folder.is_dir():
            return []
        return [(path.stem, self.address(path.stem)) for path in sorted(self.folder.glob("*.json"))]

    def address(self, name: str) -> Address:
        document = self._read(name)
        try:
            return Address(to_checksum_address("0x" + str(document["address"]).removeprefix("0x")))
        except (KeyError, ValueError):
            raise KeystoreError(f"key {name!r} is not a valid keystore (no address)") from None

    def load(self, name: str, passphrase: str) -> LocalAccount:
        self._read(name)  # a missing or malformed key says so by name
        return load_keystore(self._path(name), passphrase, name=name)

    def _read(self, name: str) -> dict[str, object]:
        path = self._path(name)
        if not path.exists():
            raise KeystoreError(
                f"no key named {name!r} in {self.folder}; see `fedmarket keys list`"
            )
        try:
            document: dict[str, object] = json.loads(read_secret(path))
        except ValueError:
            raise KeystoreError(f"{path} is not a keystore (invalid JSON)") from None
        return document

    def check_name(self, name: str) -> None:
        self._path(name)

    def _path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"key name {name!r} must be 1-64 letters, digits, '-' or '_'")
        return self.folder / f"{name}.json"


def load_keystore(path: Path, passphrase: str, *, name: str | None = None) -> LocalAccount:
    """Unlock the keystore file at ``path``; errors name the key, never the passphrase."""
    label = name or str(path)
    if not path.is_file():
        raise KeystoreError(f"no keystore at {path}; see `fedmarket keys list`")
    try:
        document = json.loads(read_secret(path))
        secret = Account.decrypt(document, passphrase)
    except ValueError:
        raise KeystoreError(
            f"cannot unlock key {label!r}: wrong passphrase (or a damaged keystore)"
        ) from None
    account: LocalAccount = Account.from_key(secret)
    return account
