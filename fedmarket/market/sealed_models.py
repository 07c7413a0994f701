"""Round models that are never public: a hiding commitment on chain, ciphertext in the store.

A round's model is committed as ``sha256("fedmarket/model/v1" || salt || model)`` with a
32-byte secret salt, so the chain reveals nothing a guess could be checked against, and stored
only as an asset (:mod:`fedmarket.crypto.asset`) whose plaintext is the *sealed model*::

    magic "FMMODEL\\x01" (8) | salt (32) | safetensors model

Whoever decrypts it (the aggregator resuming, a buyer after paying) gets the salt with the model
and can check the commitment. Salts and per-round keys come from the aggregator's 32-byte task
secret by keyed BLAKE2b (RFC 7693), so a restarted server derives the same commitments.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from fedmarket.crypto.asset import KEY_BYTES, AssetKey, decrypt_bytes, encrypt_bytes
from fedmarket.exceptions import DataError
from fedmarket.files import read_hex_secret, write_secret

SALT_BYTES = 32
_DOMAIN = b"fedmarket/model/v1"
_MAGIC = b"FMMODEL\x01"


def model_commitment(salt: bytes, model: bytes) -> bytes:
    """The hiding commitment to ``model`` (32 bytes) under a 32-byte ``salt``."""
    if len(salt) != SALT_BYTES:
        raise DataError(f"a model salt is {SALT_BYTES} bytes, got {len(salt)}")
    return hashlib.sha256(_DOMAIN + salt + model).digest()


@dataclass(frozen=True, slots=True)
class SealedModel:
    """A model with the salt of its commitment: the plaintext of a stored or sold model."""

    salt: bytes
    model: bytes  # safetensors

    def __repr__(self) -> str:
        return f"SealedModel(commitment={self.commitment.hex()}, {len(self.model)} bytes)"

    @property
    def commitment(self) -> bytes:
        return model_commitment(self.salt, self.model)

    def to_bytes(self) -> bytes:
        return _MAGIC + self.salt + self.model

    @classmethod
    def from_bytes(cls, data: bytes) -> SealedModel:
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + SALT_BYTES:
            raise DataError("not a sealed model (wrong magic or too short)")
        body = data[len(_MAGIC) :]
        return cls(body[:SALT_BYTES], body[SALT_BYTES:])

    def check(self, commitment: bytes, *, what: str) -> None:
        """Raise :class:`DataError` unless this model is the one ``commitment`` names."""
        if not hmac.compare_digest(self.commitment, commitment):
            raise DataError(
                f"{what}: the model does not match the committed 0x{commitment.hex()}; "
                "it is not the model that was committed"
            )


class TaskSecret:
    """The aggregator's secret for one task: derives each round's salt and storage key.

    Kept in a 0600 file beside the publisher's state; its repr never shows it.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise DataError(f"a task secret is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret

    def __repr__(self) -> str:
        return "TaskSecret(<redacted>)"

    @classmethod
    def load(cls, path: Path) -> TaskSecret:
        return cls(read_hex_secret(path, KEY_BYTES, what="a task secret"))

    @classmethod
    def load_or_create(cls, path: Path) -> TaskSecret:
        if path.exists():
            return cls.load(path)
        secret = secrets.token_bytes(KEY_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret(path, secret.hex().encode() + b"\n")
        return cls(secret)

    def _derive(self, purpose: bytes, round: int) -> bytes:
        return hashlib.blake2b(
            round.to_bytes(8, "big"), key=self._secret, person=purpose, digest_size=32
        ).digest()

    def salt(self, round: int) -> bytes:
        return self._derive(b"fedmarket-salt", round)

    def key(self, round: int) -> AssetKey:
        return AssetKey(self._derive(b"fedmarket-key", round))

    def seal(self, round: int, model: bytes) -> SealedModel:
        """``model`` (the global model after ``round``; 0: the initial one) with its salt."""
        return SealedModel(self.salt(round), model)

    def encrypt(self, round: int, model: bytes) -> tuple[bytes, bytes]:
        """(ciphertext to store, commitment to publish) for the model after ``round``."""
        sealed = self.seal(round, model)
        return encrypt_bytes(sealed.to_bytes(), self.key(round)), sealed.commitment

    def decrypt(self, round: int, ciphertext: bytes) -> SealedModel:
        return SealedModel.from_bytes(decrypt_bytes(ciphertext, self.key(round)))
