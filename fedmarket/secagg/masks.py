"""Masks: ChaCha20 keystreams keyed with 32-byte secrets, read as uint32, added mod 2^32.

Every key is derived for one purpose in one round (:func:`mask_key`) and expands exactly one
stream, so the all-zero nonce is never reused under a key. The vector is masked block by block
so that the keystream and the block it is added to stay in cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms

from fedmarket.secagg.codec import Vector

_NONCE = bytes(16)
_BLOCK = 1 << 14  # coordinates per block
_ZEROS = memoryview(bytes(4 * _BLOCK))

Purpose = Literal["self", "pair"]


def mask_key(secret: bytes, session: bytes, purpose: Purpose) -> bytes:
    """The stream key for ``secret`` in round ``session``: BLAKE2b keyed by the secret."""
    person = b"fedmarket-" + purpose.encode()
    return hashlib.blake2b(session, key=secret, digest_size=32, person=person).digest()


def apply_masks(vector: Vector, add: Sequence[bytes], subtract: Sequence[bytes] = ()) -> None:
    """In place: ``vector`` += the streams of ``add`` - the streams of ``subtract``, mod 2^32."""
    if vector.dtype != np.uint32 or not vector.flags.c_contiguous:
        raise TypeError("masks apply to contiguous uint32 vectors")
    streams = [(_encryptor(k), np.add) for k in add] + [
        (_encryptor(k), np.subtract) for k in subtract
    ]
    buffer = bytearray(4 * _BLOCK)
    keystream = np.frombuffer(buffer, dtype=np.uint32)
    for start in range(0, vector.size, _BLOCK):
        block = vector[start : start + _BLOCK]
        for encryptor, op in streams:
            encryptor.update_into(_ZEROS[: 4 * block.size], buffer)
            op(block, keystream[: block.size], out=block)


def stream(key: bytes, length: int) -> Vector:
    """The first ``length`` uint32 words of ``key``'s stream."""
    vector = np.zeros(length, dtype=np.uint32)
    apply_masks(vector, [key])
    return vector


def _encryptor(key: bytes) -> CipherContext:
    return Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
