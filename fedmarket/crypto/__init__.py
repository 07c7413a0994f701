"""Asset encryption and key delivery: secretstream, X25519 sealed boxes, ElGamal on alt_bn128."""

from fedmarket.crypto.asset import (
    AssetKey,
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
)
from fedmarket.crypto.key_delivery import (
    G1Point,
    KeyDelivery,
    OneTimeKey,
    deliver_key,
    key_mask,
    open_delivery,
)
from fedmarket.crypto.sealed import Identity, open_sealed_key, parse_public_key, seal_key

__all__ = [
    "AssetKey",
    "G1Point",
    "Identity",
    "KeyDelivery",
    "OneTimeKey",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "deliver_key",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_stream",
    "key_mask",
    "open_delivery",
    "open_sealed_key",
    "parse_public_key",
    "seal_key",
]
