"""Thin PyNaCl wrappers: asset encryption (secretstream) and sealed key delivery (X25519)."""

from fedmarket.crypto.asset import (
    AssetKey,
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
)
from fedmarket.crypto.sealed import Identity, open_sealed_key, parse_public_key, seal_key

__all__ = [
    "AssetKey",
    "Identity",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_stream",
    "open_sealed_key",
    "parse_public_key",
    "seal_key",
]
