"""Feldman verifiable secret sharing of scalars over the Ed25519 prime-order group.

A dealer shares a secret s, a nonzero scalar mod L, with Shamir's scheme (Shamir 1979, "How to
share a secret"): it draws f(x) = s + a_1 x + ... + a_{t-1} x^{t-1} with random nonzero
coefficients and gives holder i (1 <= i <= n) the share f(i). With Feldman's commitments
(Feldman 1987, "A practical scheme for non-interactive verifiable secret sharing"),
C_j = a_j * G for j = 0..t-1, anyone can check a share: f(i) * G == sum_j i^j * C_j. Each holder
checks its share on receipt, which catches a dealer that hands out a share off its committed
polynomial, and the server checks the shares holders reveal later, which catches a holder that
lies. Any t valid shares rebuild s. Fewer say nothing about s beyond C_0 = s * G, which is
public, so the hiding is computational: a secret must be a random scalar (:func:`random_scalar`),
never a guessable value.

G is the base point of edwards25519 and L = 2^252 + 27742317777372353535851937790883648493 is
the order of the group it generates (RFC 8032). Scalars are 32 bytes, little-endian and canonical
(< L). Points are 32-byte encodings that libsodium's ``crypto_core_ed25519_is_valid_point``
accepts: canonical, in the prime-order subgroup and not the identity. Group operations are
libsodium's (``nacl.bindings``); only the polynomial and Lagrange arithmetic mod L, on Python ints,
is done here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nacl.bindings import (
    crypto_core_ed25519_add,
    crypto_core_ed25519_is_valid_point,
    crypto_core_ed25519_scalar_reduce,
    crypto_scalarmult_ed25519_base_noclamp,
    crypto_scalarmult_ed25519_noclamp,
)
from nacl.exceptions import CryptoError

from fedmarket.exceptions import InvalidInput, ProtocolViolation

SCALAR_BYTES = 32
POINT_BYTES = 32
MAX_HOLDERS = 2**16 - 1
L = 2**252 + 27742317777372353535851937790883648493  # the order of G
IDENTITY = (1).to_bytes(POINT_BYTES, "little")  # the neutral element (x = 0, y = 1), encoded


@dataclass(frozen=True)
class Dealing:
    """What a dealer publishes and sends.

    ``commitments``: t points, ``t * POINT_BYTES`` bytes, C_j = a_j * G (C_0 = secret * G).
    ``shares``: ``shares[i - 1]`` = f(i), the 32-byte scalar for holder i = 1..holders.
    """

    commitments: bytes
    shares: tuple[bytes, ...]

    @property
    def threshold(self) -> int:
        """t: the number of commitments, and of shares that rebuild the secret."""
        return len(self.commitments) // POINT_BYTES


@dataclass(frozen=True)
class Rebuilt:
    """A secret rebuilt by :func:`rebuild` and the indices (ascending) of the holders whose
    shares failed verification."""

    secret: bytes
    liars: tuple[int, ...]


def random_scalar() -> bytes:
    """A uniformly random nonzero scalar (32 bytes): 64 bytes of ``os.urandom`` reduced mod L
    by libsodium, so its distance from uniform is below 2^-259."""
    while True:
        scalar = crypto_core_ed25519_scalar_reduce(os.urandom(64))
        if any(scalar):
            return scalar


def commitment_count(commitments: bytes) -> int:
    """t, the number of 32-byte points in ``commitments``.

    This checks the length only; :func:`verify_share` checks the points. A holder must also
    check that t is the round's threshold: a dealer that commits to more coefficients deals
    shares that all verify yet that t of them do not rebuild.

    Raises
    ------
    ProtocolViolation
        if ``commitments`` is not bytes, or its length is not a multiple of ``POINT_BYTES``
        holding 1 to ``MAX_HOLDERS`` points.
    """
    if not isinstance(commitments, bytes):
        raise ProtocolViolation("VSS commitments must be bytes")
    count, rest = divmod(len(commitments), POINT_BYTES)
    if rest or not 1 <= count <= MAX_HOLDERS:
        raise ProtocolViolation(
            f"VSS commitments must be 1 to {MAX_HOLDERS} points of {POINT_BYTES} bytes, "
            f"got {len(commitments)} bytes"
        )
    return count


def deal(secret: bytes, threshold: int, holders: int) -> Dealing:
    """Share ``secret`` among holders 1..``holders`` so that any ``threshold`` shares rebuild it.

    No dealt share is zero (a polynomial with a zero share, probability below holders / L, is
    drawn again), so every share of an honest dealing verifies.

    Raises
    ------
    InvalidInput
        unless 1 <= ``threshold`` <= ``holders`` <= ``MAX_HOLDERS``, and ``secret`` is a
        canonical nonzero 32-byte scalar.
    """
    if not (_is_int(threshold) and _is_int(holders) and 1 <= threshold <= holders <= MAX_HOLDERS):
        raise InvalidInput(
            f"VSS needs 1 <= threshold <= holders <= {MAX_HOLDERS}, "
            f"got threshold={threshold!r}, holders={holders!r}"
        )
    value = _scalar(secret)
    if not value:
        raise InvalidInput("a VSS secret must be a nonzero 32-byte scalar below L")
    while True:
        coefficients = [value] + [_int(random_scalar()) for _ in range(threshold - 1)]
        values = [_evaluate(coefficients, index) for index in range(1, holders + 1)]
        if all(values):
            break
    return Dealing(
        commitments=b"".join(_base(a) for a in coefficients),
        shares=tuple(_bytes(y) for y in values),
    )


def verify_share(commitments: bytes, index: int, share: bytes) -> bool:
    """Whether ``share`` is f(``index``) on the polynomial ``commitments`` commit to:
    share * G == sum_j (index^j mod L) * C_j.

    Never raises: malformed input is False (commitments that are not 1 to ``MAX_HOLDERS``
    valid points, an index outside 1..``MAX_HOLDERS``, a share that is not a canonical nonzero
    scalar). Costs one libsodium scalar multiplication per commitment, each of which also checks
    its point; the sum is taken term by term rather than by Horner's rule in the
    group, because Horner multiplies running sums, which would need a point check each and may be
    the identity, which libsodium refuses to multiply.
    """
    points = _points(commitments)
    value = _scalar(share)
    if points is None or not value or not _is_index(index):
        return False
    powers = []
    power = 1
    for _ in points:
        powers.append(power)
        power = power * index % L
    expected = _combination(points, powers)
    return expected is not None and expected == _base(value)


def secret_matches(commitments: bytes, secret: bytes) -> bool:
    """Whether ``secret`` * G == C_0, i.e. ``secret`` is the one ``commitments`` commit to.
    False, never an exception, for malformed input."""
    points = _points(commitments)
    value = _scalar(secret)
    if points is None or not value:
        return False
    return _base(value) == points[0]


def combine(shares: Mapping[int, bytes]) -> bytes:
    """Lagrange interpolation at 0 over exactly these (index -> share) points, as a 32-byte
    scalar. Verifies nothing: :func:`rebuild` does.

    Raises
    ------
    ProtocolViolation
        if there are no shares, an index is not an int in 1..``MAX_HOLDERS`` or appears twice,
        or a share is not a canonical 32-byte scalar.
    """
    points: dict[int, int] = {}
    for index, share in shares.items():
        if not _is_index(index):
            raise ProtocolViolation(f"a VSS share index must be in 1..{MAX_HOLDERS}, got {index!r}")
        if index in points:
            raise ProtocolViolation(f"VSS share index {index} appears twice")
        value = _scalar(share)
        if value is None:
            raise ProtocolViolation(f"VSS share {index} is not a canonical 32-byte scalar")
        points[index] = value
    if not points:
        raise ProtocolViolation("no VSS shares to combine")
    return _bytes(_interpolate_at_zero(points.items()))


def rebuild(commitments: bytes, shares: Mapping[int, bytes], threshold: int) -> Rebuilt:
    """The secret from revealed ``shares`` (index -> share), naming the holders that lied.

    First all shares are checked at once with random weights r_i (the small-exponents batch test
    of Bellare, Garay and Rabin 1998): (sum_i r_i y_i) * G == sum_j (sum_i r_i i^j) * C_j holds
    for every choice of weights if all shares are valid, and for a fraction 1/L of them
    otherwise. That costs about one :func:`verify_share`, whatever the number of shares. If it
    fails, every share is verified on its own and the invalid ones are named in ``liars``; the
    secret is combined from the ``threshold`` valid shares of lowest index. Merely checking that
    ``threshold`` shares combine to C_0's secret would not do: it leaves the other shares
    unchecked, and two colluding holders can shift their shares so that the secret stays right.

    Raises
    ------
    InvalidInput
        if ``threshold`` is not in 1..``MAX_HOLDERS``.
    ProtocolViolation
        if an index is not an int in 1..``MAX_HOLDERS``; if the dealer's commitments are
        malformed, invalid points, or not ``threshold`` of them; if fewer than ``threshold``
        shares are valid (the message says how many were).
    """
    if not (_is_int(threshold) and 1 <= threshold <= MAX_HOLDERS):
        raise InvalidInput(f"a VSS threshold must be in 1..{MAX_HOLDERS}, got {threshold!r}")
    count = commitment_count(commitments)
    if count != threshold:
        raise ProtocolViolation(
            f"the dealer committed to {count} coefficients, the threshold is {threshold}"
        )
    points = _split(commitments)
    values: dict[int, int] = {}
    liars: list[int] = []
    for index, share in shares.items():
        if not _is_index(index):
            raise ProtocolViolation(f"a VSS share index must be in 1..{MAX_HOLDERS}, got {index!r}")
        value = _scalar(share)
        if value:
            values[index] = value
        else:
            liars.append(index)
    if not _batch_valid(points, values):
        if not all(crypto_core_ed25519_is_valid_point(point) for point in points):
            raise ProtocolViolation("the dealer's VSS commitments are not valid points")
        for index, value in list(values.items()):
            if not verify_share(commitments, index, _bytes(value)):
                liars.append(index)
                del values[index]
    if len(values) < threshold:
        raise ProtocolViolation(
            f"only {len(values)} of {len(shares)} VSS shares are valid, the threshold is "
            f"{threshold} (invalid: {sorted(liars)})"
        )
    chosen = sorted(values.items())[:threshold]
    return Rebuilt(secret=_bytes(_interpolate_at_zero(chosen)), liars=tuple(sorted(liars)))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_index(index: object) -> bool:
    return isinstance(index, int) and not isinstance(index, bool) and 1 <= index <= MAX_HOLDERS


def _scalar(data: object) -> int | None:
    """The canonical scalar ``data`` encodes, or None."""
    if not isinstance(data, bytes) or len(data) != SCALAR_BYTES:
        return None
    value = int.from_bytes(data, "little")
    return value if value < L else None


def _int(scalar: bytes) -> int:
    return int.from_bytes(scalar, "little")


def _bytes(value: int) -> bytes:
    return value.to_bytes(SCALAR_BYTES, "little")


def _split(commitments: bytes) -> list[bytes]:
    return [commitments[i : i + POINT_BYTES] for i in range(0, len(commitments), POINT_BYTES)]


def _points(commitments: object) -> list[bytes] | None:
    """The commitments as 32-byte chunks (not yet checked as points), or None if malformed."""
    if not isinstance(commitments, bytes):
        return None
    try:
        commitment_count(commitments)
    except ProtocolViolation:
        return None
    return _split(commitments)


def _base(value: int) -> bytes:
    """value * G; libsodium refuses 0, whose product is the identity."""
    return crypto_scalarmult_ed25519_base_noclamp(_bytes(value)) if value else IDENTITY


def _combination(points: Sequence[bytes], scalars: Sequence[int]) -> bytes | None:
    """sum_j scalars[j] * points[j] (scalars reduced mod L), or None if a point is not valid.

    libsodium's multiplication rejects a point that is not canonical, of small order or outside
    the prime-order subgroup, so a nonzero scalar's term is never the identity; a zero scalar's
    term is, and its point is checked on its own.
    """
    total: bytes | None = None
    for point, scalar in zip(points, scalars, strict=True):
        if not scalar:
            if not crypto_core_ed25519_is_valid_point(point):
                return None
            continue
        try:
            term = crypto_scalarmult_ed25519_noclamp(_bytes(scalar), point)
        except CryptoError:
            return None
        total = term if total is None else crypto_core_ed25519_add(total, term)
    return IDENTITY if total is None else total


def _batch_valid(points: Sequence[bytes], values: Mapping[int, int]) -> bool:
    """Whether every (index, value) is a valid share, but for a chance of 1/L (see
    :func:`rebuild`); True for no shares."""
    left = 0
    weights = [0] * len(points)
    for index, value in values.items():
        weight = _int(random_scalar())
        left += weight * value
        for j in range(len(points)):
            weights[j] += weight
            weight = weight * index % L
    right = _combination(points, [w % L for w in weights])
    return right is not None and right == _base(left % L)


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) mod L by Horner's rule, f given by its coefficients a_0, a_1, ..."""
    result = 0
    for a in reversed(coefficients):
        result = (result * x + a) % L
    return result


def _interpolate_at_zero(points: Iterable[tuple[int, int]]) -> int:
    """f(0) mod L for the polynomial of least degree through distinct (x, y) points:
    sum_k y_k * prod_{m != k} x_m / (x_m - x_k)."""
    pairs = list(points)
    total = 0
    for k, (x_k, y_k) in enumerate(pairs):
        numerator = denominator = 1
        for m, (x_m, _) in enumerate(pairs):
            if m != k:
                numerator = numerator * x_m % L
                denominator = denominator * (x_m - x_k) % L
        total += y_k * numerator * pow(denominator, -1, L)
    return total % L
