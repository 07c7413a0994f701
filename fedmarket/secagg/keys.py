"""Keys of SecAgg+: per-round X25519 keys (PyNaCl) and each device's long-term Ed25519 node key.

The X25519 keys encrypt shares and agree pairwise mask secrets; the node key signs what a
device says about a round (its announcement, its dealing, the survivor set it agrees to), so
that the server cannot swap a device's keys or show devices different survivor sets unseen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from nacl import bindings
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.exceptions import ValueError as NaclValueError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

KEY_BYTES = 32
SIGNATURE_BYTES = 64
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


def valid_cipher_key(public: bytes) -> bool:
    """An X25519 public key that :func:`agree` accepts: 32 bytes and not of small order
    (libsodium refuses those: the shared secret would not depend on the private key)."""
    if len(public) != KEY_BYTES:
        return False
    try:
        bindings.crypto_scalarmult(bytes([9]) * KEY_BYTES, public)
    except CryptoError:
        return False
    return True


def node_key_from_identity(identity_key: bytes) -> SigningKey:
    """The device's node key, derived from its identity key (the secp256k1 key its receipts
    and ledger are signed with) so that a device has one secret to keep."""
    seed = hashlib.blake2b(identity_key, digest_size=32, person=b"fedmarket-node").digest()
    return SigningKey(seed)


def sign(key: SigningKey, domain: bytes, payload: bytes) -> bytes:
    """Ed25519 signature over ``domain || payload`` (64 bytes)."""
    return bytes(key.sign(domain + payload).signature)


def verify(node_key: bytes, domain: bytes, payload: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``node_key``'s over ``domain || payload``; never raises."""
    if len(node_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        VerifyKey(node_key).verify(domain + payload, signature)
    except (BadSignatureError, NaclValueError, TypeError):
        return False
    return True


def mask_public(mask_sk: bytes) -> bytes:
    """The mask public key: ``mask_sk * G`` on the Ed25519 prime-order group.

    Mask keys live on this group (not X25519) so that the mask secret a device Shamir-shares
    is checked against its Feldman commitments: the commitment to the secret *is* this key.
    """
    return bytes(bindings.crypto_scalarmult_ed25519_base_noclamp(mask_sk))


def valid_point(point: bytes) -> bool:
    """A canonical Ed25519 point of the prime-order subgroup (never the identity)."""
    return len(point) == KEY_BYTES and bool(bindings.crypto_core_ed25519_is_valid_point(point))


def pair_secret(mask_sk: bytes, mine: bytes, theirs: bytes) -> bytes:
    """The 32-byte secret two devices share: BLAKE2b of both public keys and ``mask_sk * theirs``
    (Diffie-Hellman on Ed25519). Both ends get the same bytes."""
    shared = bytes(bindings.crypto_scalarmult_ed25519_noclamp(mask_sk, theirs))
    low, high = sorted((mine, theirs))
    return hashlib.blake2b(low + high + shared, digest_size=32, person=b"fedmarket-pair").digest()
