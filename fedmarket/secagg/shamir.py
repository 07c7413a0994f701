"""Shamir sharing of 32-byte secrets with pycryptodome (GF(2^128), one split per 16-byte half).

A share is its 1-based index (2 bytes, big-endian) followed by the two 16-byte half shares.
"""

from __future__ import annotations

from Crypto.Protocol.SecretSharing import Shamir

from fedmarket.exceptions import ProtocolViolation

SECRET_BYTES = 32
SHARE_BYTES = 2 + SECRET_BYTES


def split(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """``holders`` shares of ``secret``; any ``threshold`` of them rebuild it, fewer say nothing."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes")
    halves = [Shamir.split(threshold, holders, secret[i : i + 16], ssss=False) for i in (0, 16)]
    return [
        index.to_bytes(2, "big") + low + high
        for (index, low), (_, high) in zip(halves[0], halves[1], strict=True)
    ]


def combine(shares: list[bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` distinct well-formed shares (extra shares are not used)."""
    by_index: dict[int, bytes] = {}
    for share in shares:
        if len(share) != SHARE_BYTES:
            raise ProtocolViolation(f"a Shamir share must be {SHARE_BYTES} bytes, got {len(share)}")
        by_index.setdefault(int.from_bytes(share[:2], "big"), share)
    if 0 in by_index:
        raise ProtocolViolation("Shamir share index 0 is not allowed")
    if len(by_index) < threshold:
        raise ProtocolViolation(f"{len(by_index)} distinct shares, the threshold is {threshold}")
    chosen = sorted(by_index.items())[:threshold]
    low = Shamir.combine([(i, s[2:18]) for i, s in chosen], ssss=False)
    high = Shamir.combine([(i, s[18:]) for i, s in chosen], ssss=False)
    return bytes(low + high)
