"""X25519 keys of one SecAgg+ round (PyNaCl): share encryption and pairwise mask agreement."""

from __future__ import annotations

from dataclasses import dataclass

from nacl.public import Box, PrivateKey, PublicKey

KEY_BYTES = 32
NODE_ID_LIMIT = 1 << 64  # Flower node ids are unsigned 64-bit


@dataclass(frozen=True)
class PublicKeys:
    cipher: bytes  # encrypts the shares sent to this node
    mask: bytes  # agrees pairwise mask secrets with this node


def new_private_key() -> bytes:
    return bytes(PrivateKey.generate())


def public_key(private_key: bytes) -> bytes:
    return bytes(PrivateKey(private_key).public_key)


def agree(private_key: bytes, peer_public: bytes) -> bytes:
    """The 32-byte shared secret: X25519 hashed with HSalsa20 (crypto_box_beforenm).

    ``SecretBox(agree(a, B))`` encrypts exactly as ``Box(a, B)`` does.
    """
    return bytes(Box(PrivateKey(private_key), PublicKey(peer_public)).shared_key())
