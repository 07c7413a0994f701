"""Asset encryption: a fresh 32-byte key, libsodium secretstream (XChaCha20-Poly1305), chunked.

File format (all integers big-endian)::

    magic "FMASSET\\x01" (8) | chunk size (4) | plaintext size (8) | key id (16)
    | secretstream header (24)
    chunk 1 … chunk n      each = chunk-size plaintext bytes + 17; the last is shorter and FINAL

The first chunk authenticates the header fields as associated data, so chunk size and length
cannot be altered. The key id (BLAKE2b of the key) lets a wrong key fail as :class:`WrongKey`
before any decryption; the plaintext size tells a truncated file from a tampered one. The
stream state chains the chunks, so reordering, dropping or duplicating one fails too.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nacl.bindings as sodium
from nacl.exceptions import CryptoError

from fedmarket.exceptions import (
    DataError,
    InvalidInput,
    KeyCommitmentMismatch,
    NotAnAsset,
    TamperedCiphertext,
    TruncatedCiphertext,
    WrongKey,
)
from fedmarket.files import atomic_write, read_hex_secret, write_secret

KEY_BYTES = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES
CHUNK_SIZE = 262_144
_ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_MAGIC = b"FMASSET\x01"
_FIELDS = struct.Struct(">8sIQ16s")
_STREAM_HEADER_BYTES = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
HEADER_BYTES = _FIELDS.size + _STREAM_HEADER_BYTES
_MAX_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AssetKey:
    """A 32-byte symmetric key for one asset. Its repr never shows the key."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise InvalidInput(f"an asset key is {KEY_BYTES} bytes, got {len(self.secret)}")

    def __repr__(self) -> str:
        return "AssetKey(<secret>)"

    @classmethod
    def generate(cls) -> AssetKey:
        return cls(sodium.crypto_secretstream_xchacha20poly1305_keygen())

    @property
    def commitment(self) -> bytes:
        """sha256(key): published with a listing, checked by the buyer on delivery."""
        return hashlib.sha256(self.secret).digest()

    @property
    def key_id(self) -> bytes:
        return hashlib.blake2b(self.secret, digest_size=16, person=b"fedmarket-keyid").digest()

    def save(self, path: Path) -> None:
        """Write the key as hex to a new 0600 file."""
        write_secret(path, self.secret.hex().encode() + b"\n")

    @classmethod
    def load(cls, path: Path) -> AssetKey:
        return cls(read_hex_secret(path, KEY_BYTES, what="an asset key"))

    def check_commitment(self, commitment: bytes) -> None:
        """Raise :class:`KeyCommitmentMismatch` unless sha256(key) equals ``commitment``."""
        if not hmac.compare_digest(self.commitment, commitment):
            raise KeyCommitmentMismatch(
                "the delivered key does not hash to the listing's key commitment "
                f"({commitment.hex()}); do not use it — dispute it on chain for a full refund "
                "(`fedmarket market dispute`)"
            )


def encrypt_stream(
    source: BinaryIO, sink: BinaryIO, key: AssetKey, *, size: int, chunk_size: int = CHUNK_SIZE
) -> int:
    """Encrypt exactly ``size`` bytes from ``source`` into ``sink``; return bytes written."""
    if not 0 < chunk_size <= _MAX_CHUNK:
        raise InvalidInput(f"chunk_size must be in 1..{_MAX_CHUNK}, got {chunk_size}")
    if size < 0:
        raise InvalidInput(f"size must be >= 0, got {size}")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    stream_header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key.secret)
    fields = _FIELDS.pack(_MAGIC, chunk_size, size, key.key_id)
    sink.write(fields + stream_header)
    written = HEADER_BYTES
    chunks = _chunk_count(size, chunk_size)
    remaining = size
    for index in range(chunks):
        want = min(chunk_size, remaining)
        plain = source.read(want)
        if len(plain) != want:
            raise DataError(f"the input shrank while it was being encrypted ({index=}); retry")
        remaining -= want
        last = index == chunks - 1
        cipher = sodium.crypto_secretstream_xchacha20poly1305_push(
            state, plain, fields if index == 0 else None, _TAG_FINAL if last else _TAG_MESSAGE
        )
        sink.write(cipher)
        written += len(cipher)
    return written


def decrypt_stream(source: BinaryIO, sink: BinaryIO, key: AssetKey) -> int:
    """Decrypt an asset from ``source`` into ``sink``; return plaintext bytes written.

    Raises a :class:`~fedmarket.exceptions.DecryptionFailed` subclass naming the failed check.
    ``sink`` may hold a prefix of authenticated plaintext when that happens; use
    :func:`decrypt_file` for all-or-nothing output.
    """
    header = source.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[: len(_MAGIC)] != _MAGIC:
        raise NotAnAsset(
            "the input is not a fedmarket encrypted asset (missing FMASSET header); "
            "check you passed the ciphertext, not the plain file"
        )
    fields = header[: _FIELDS.size]
    chunk_size: int
    size: int
    _, chunk_size, size, key_id = _FIELDS.unpack(fields)
    if not 0 < chunk_size <= _MAX_CHUNK:
        raise NotAnAsset(f"the asset header names an invalid chunk size {chunk_size}")
    if not hmac.compare_digest(key_id, key.key_id):
        raise WrongKey("this key is not the one the asset was encrypted with; check the key file")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(
        state, header[_FIELDS.size :], key.secret
    )
    chunks = _chunk_count(size, chunk_size)
    remaining = size
    for index in range(chunks):
        want = min(chunk_size, remaining) + _ABYTES
        cipher = source.read(want)
        if len(cipher) < want:
            raise TruncatedCiphertext(
                f"the ciphertext ends inside chunk {index + 1} of {chunks} ({size} bytes "
                "expected); download it again"
            )
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                state, cipher, fields if index == 0 else None
            )
        except CryptoError:
            raise TamperedCiphertext(
                f"chunk {index + 1} of {chunks} failed authentication: the ciphertext was "
                "modified, or its chunks reordered; do not use it, fetch it again"
            ) from None
        if (tag == _TAG_FINAL) != (index == chunks - 1):
            raise TamperedCiphertext(f"chunk {index + 1} of {chunks} carries the wrong stream tag")
        sink.write(plain)
        remaining -= len(plain)
    if source.read(1):
        raise TamperedCiphertext("bytes follow the final chunk: the ciphertext was modified")
    return size


def encrypt_file(source: Path, dest: Path, key: AssetKey) -> int:
    """Encrypt ``source`` into ``dest`` (written atomically); return ciphertext bytes."""
    try:
        with source.open("rb") as plain:
            size = os.fstat(plain.fileno()).st_size
            return atomic_write(dest, lambda out: encrypt_stream(plain, out, key, size=size))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise DataError(f"cannot read {source}: {exc.strerror}; pass an existing file") from None


def decrypt_file(source: Path, dest: Path, key: AssetKey) -> int:
    """Decrypt ``source`` into ``dest``; ``dest`` appears only if every chunk authenticated."""
    try:
        with source.open("rb") as cipher:
            return atomic_write(dest, lambda out: decrypt_stream(cipher, out, key))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise DataError(f"cannot read {source}: {exc.strerror}; pass an existing file") from None


def encrypt_bytes(data: bytes, key: AssetKey) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, size=len(data))
    return out.getvalue()


def decrypt_bytes(data: bytes, key: AssetKey) -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(data), out, key)
    return out.getvalue()


def _chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))  # an empty asset is one empty FINAL chunk
