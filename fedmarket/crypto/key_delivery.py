"""On-chain-checkable key delivery: hashed ElGamal (ECDH KEM) on alt_bn128 G1.

The buyer posts ``B = b·G`` with a one-time secret ``b``; the seller posts ``E = e·G`` and
``key XOR keccak256(abi.encode(chainId, market, purchase, S.x, S.y))`` with ``S = e·B``; the buyer
recovers ``S = b·E``. Revealing ``b`` lets ``DataMarket.dispute`` recompute the key with the
EIP-196 ``ecMul`` precompile and refund a key that fails the listing's commitment, so ``b``
must never be reused. The mask matches the contract's ``keyMask(purchase, sx, sy)`` view.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_abi.abi import encode
from eth_utils.address import is_address
from eth_utils.crypto import keccak
from py_ecc.fields import optimized_bn128_FQ as FQ
from py_ecc.optimized_bn128.optimized_curve import (
    G1,
    b,
    curve_order,
    field_modulus,
    is_on_curve,
    multiply,
    normalize,
)

from fedmarket.crypto.asset import KEY_BYTES, AssetKey
from fedmarket.exceptions import InvalidInput
from fedmarket.files import read_hex_secret, write_secret

ORDER: int = curve_order
FIELD: int = field_modulus
_WORD = 32


@dataclass(frozen=True, slots=True)
class G1Point:
    """An affine alt_bn128 G1 point other than infinity, checked as ``_checkPoint`` does.

    Parameters
    ----------
    x, y : int
        Coordinates in ``0..FIELD-1`` with ``y² = x³ + 3 (mod FIELD)``; ``(0, 0)`` (the EIP-196
        encoding of infinity) is refused.

    Raises
    ------
    InvalidInput
        If the point is out of range, infinity or off the curve.
    """

    x: int
    y: int

    def __post_init__(self) -> None:
        if not (0 <= self.x < FIELD and 0 <= self.y < FIELD):
            raise InvalidInput(
                f"G1 point coordinates must be in 0..FIELD-1, got ({self.x}, {self.y})"
            )
        if (self.x, self.y) == (0, 0):
            raise InvalidInput("G1 point (0, 0) is the point at infinity; use a fresh key")
        if not is_on_curve((FQ(self.x), FQ(self.y), FQ.one()), b):
            raise InvalidInput(
                f"({self.x}, {self.y}) is not on alt_bn128 G1 (y² = x³ + 3); check the copy"
            )

    def as_tuple(self) -> tuple[int, int]:
        return (self.x, self.y)

    def to_text(self) -> str:
        """``0x`` and 128 hex characters: x then y, 32 bytes each, big-endian (``abi.encode``)."""
        return "0x" + self.x.to_bytes(_WORD, "big").hex() + self.y.to_bytes(_WORD, "big").hex()

    @classmethod
    def parse(cls, text: str) -> G1Point:
        """The inverse of :meth:`to_text`; raise :class:`InvalidInput` on anything else."""
        try:
            raw = bytes.fromhex(text.strip().removeprefix("0x"))
        except ValueError:
            raw = b""
        if len(raw) != 2 * _WORD:
            raise InvalidInput(f"{text!r} is not a G1 point (0x and 128 hex characters: x then y)")
        return cls(int.from_bytes(raw[:_WORD], "big"), int.from_bytes(raw[_WORD:], "big"))


def _mul(point: G1Point, scalar: int) -> G1Point:
    x, y = normalize(multiply((FQ(point.x), FQ(point.y), FQ.one()), scalar))
    return G1Point(x.n, y.n)


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ c for a, c in zip(left, right, strict=True))


GENERATOR = G1Point(G1[0].n, G1[1].n)  # (1, 2), as G1 is stored with z = 1


class OneTimeKey:
    """A buyer's one-time secret ``b`` in ``1..ORDER-1``; its repr shows only ``B = b·G``."""

    __slots__ = ("_public", "_secret")

    def __init__(self, secret: int) -> None:
        if not 0 < secret < ORDER:
            raise InvalidInput("a one-time key must be in 1..ORDER-1; generate a fresh one")
        self._secret = secret
        self._public = _mul(GENERATOR, secret)

    def __repr__(self) -> str:
        return f"OneTimeKey(public={self._public.to_text()})"

    @classmethod
    def generate(cls) -> OneTimeKey:
        """A fresh key from the OS CSPRNG (:mod:`secrets`); use it for one purchase only."""
        return cls(secrets.randbelow(ORDER - 1) + 1)

    @property
    def secret(self) -> int:
        return self._secret

    @property
    def public(self) -> G1Point:
        return self._public

    def save(self, path: Path) -> None:
        """Write the secret as 64 hex characters to a new 0600 file."""
        write_secret(path, self._secret.to_bytes(_WORD, "big").hex().encode() + b"\n")

    @classmethod
    def load(cls, path: Path) -> OneTimeKey:
        return cls(int.from_bytes(read_hex_secret(path, _WORD, what="a one-time key"), "big"))


@dataclass(frozen=True, slots=True)
class KeyDelivery:
    """What ``deliverKey`` posts: the ephemeral key ``E`` and the 32-byte masked asset key."""

    ephemeral: G1Point
    masked_key: bytes

    def __post_init__(self) -> None:
        if len(self.masked_key) != KEY_BYTES:
            raise InvalidInput(f"a masked key is {KEY_BYTES} bytes, got {len(self.masked_key)}")


def key_mask(shared: G1Point, *, purchase: int, chain_id: int, market: str) -> bytes:
    """The 32-byte mask ``keccak256(abi.encode(chainId, market, purchase, S.x, S.y))``.

    Raises
    ------
    InvalidInput
        If ``purchase`` or ``chain_id`` is not a uint256, or ``market`` is not an address.
    """
    for name, value in (("purchase", purchase), ("chain_id", chain_id)):
        if not 0 <= value < 2**256:
            raise InvalidInput(f"{name} must be a uint256, got {value}")
    if not is_address(market):
        raise InvalidInput(f"{market!r} is not an address; pass the deployment's market address")
    types = ["uint256", "address", "uint256", "uint256", "uint256"]
    return keccak(encode(types, [chain_id, market, purchase, shared.x, shared.y]))


def deliver_key(
    key: AssetKey, buyer: G1Point, *, purchase: int, chain_id: int, market: str
) -> KeyDelivery:
    """Mask ``key`` for the buyer's public key ``B`` (seller side).

    Parameters
    ----------
    key : AssetKey
        The listing's 32-byte asset key.
    buyer : G1Point
        ``B`` from the purchase's ``Purchased`` event.
    purchase, chain_id, market
        The purchase id, the chain id and the market address the delivery is bound to.

    Returns
    -------
    KeyDelivery
        ``E = e·G`` for a fresh ephemeral ``e`` from :mod:`secrets`, and ``key XOR mask(e·B)``.
    """
    ephemeral = secrets.randbelow(ORDER - 1) + 1
    mask = key_mask(_mul(buyer, ephemeral), purchase=purchase, chain_id=chain_id, market=market)
    return KeyDelivery(_mul(GENERATOR, ephemeral), _xor(key.secret, mask))


def open_delivery(
    delivery: KeyDelivery, secret: OneTimeKey, *, purchase: int, chain_id: int, market: str
) -> AssetKey:
    """Unmask a delivered key with the buyer's one-time secret ``b`` (``S = b·E``).

    A wrong secret, purchase, chain or market yields a wrong key, not an error: check the result
    with :meth:`AssetKey.check_commitment` before use, and dispute the delivery if it fails.

    Raises
    ------
    InvalidInput
        As :func:`key_mask` does.
    """
    mask = key_mask(
        _mul(delivery.ephemeral, secret.secret), purchase=purchase, chain_id=chain_id, market=market
    )
    return AssetKey(_xor(delivery.masked_key, mask))
