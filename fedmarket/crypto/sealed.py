"""Sealed key delivery: an asset key sealed to a buyer's X25519 public key (libsodium SealedBox).

The seller learns nothing about the buyer beyond the public key given at purchase; only the
holder of the matching private key can open the sealed key, and anyone can check the opened
key against the listing's sha256 commitment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from fedmarket.crypto.asset import KEY_BYTES, AssetKey
from fedmarket.exceptions import InvalidInput, WrongRecipient
from fedmarket.files import read_hex_secret, write_secret

PUBLIC_KEY_BYTES = PublicKey.SIZE
SEALED_KEY_BYTES = KEY_BYTES + sodium.crypto_box_SEALBYTES


@dataclass(frozen=True, slots=True)
class Identity:
    """A buyer's X25519 key pair for receiving sealed keys. Its repr shows only the public key."""

    private_key: PrivateKey

    def __repr__(self) -> str:
        return f"Identity(public={self.public_key.hex()})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return bytes(self.private_key.public_key)

    def save(self, path: Path) -> None:
        """Write the private key as hex to a new 0600 file."""
        write_secret(path, bytes(self.private_key).hex().encode() + b"\n")

    @classmethod
    def load(cls, path: Path) -> Identity:
        return cls(PrivateKey(read_hex_secret(path, PrivateKey.SIZE, what="an X25519 identity")))


def parse_public_key(text: str) -> bytes:
    """A recipient's public key from its 64-hex-character form."""
    try:
        key = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        key = b""
    if len(key) != PUBLIC_KEY_BYTES:
        raise InvalidInput(
            f"{text!r} is not an X25519 public key (64 hex characters); "
            "use the one printed by `fedmarket crypto keygen`"
        )
    return key


def seal_key(key: AssetKey, recipient: bytes) -> bytes:
    """Seal ``key`` to the recipient's X25519 public key."""
    if len(recipient) != PUBLIC_KEY_BYTES:
        raise InvalidInput(
            f"a recipient public key is {PUBLIC_KEY_BYTES} bytes, got {len(recipient)}"
        )
    return bytes(SealedBox(PublicKey(recipient)).encrypt(key.secret))


def open_sealed_key(sealed: bytes, identity: Identity) -> AssetKey:
    """Open a sealed key; raise :class:`WrongRecipient` if it was sealed to another key."""
    if len(sealed) != SEALED_KEY_BYTES:
        raise WrongRecipient(
            f"a sealed key is {SEALED_KEY_BYTES} bytes, got {len(sealed)}; "
            "copy the whole sealed key from the delivery"
        )
    try:
        secret = SealedBox(identity.private_key).decrypt(sealed)
    except CryptoError:
        raise WrongRecipient(
            f"the sealed key was not sealed to this identity (public key "
            f"{identity.public_key.hex()}); use the identity you bought with"
        ) from None
    return AssetKey(secret)
