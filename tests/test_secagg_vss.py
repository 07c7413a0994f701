"""Feldman VSS: honest shares verify and rebuild, liars are named, malformed input is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_core_ed25519_add,
    crypto_core_ed25519_is_valid_point,
    crypto_scalarmult_ed25519_base_noclamp,
)

from fedmarket.exceptions import InvalidInput, ProtocolViolation
from fedmarket.secagg import vss
from fedmarket.secagg.vss import (
    IDENTITY,
    MAX_HOLDERS,
    Dealing,
    L,
    Rebuilt,
    combine,
    commitment_count,
    deal,
    random_scalar,
    rebuild,
    secret_matches,
    verify_share,
)

# Points outside the prime-order subgroup, and encodings that are no point at all.
ORDER_2 = bytes.fromhex("ec" + "ff" * 30 + "7f")  # y = -1
ORDER_4 = bytes(32)  # y = 0
ORDER_8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
NOT_CANONICAL = b"\xff" * 32  # y = 2^255 - 1 >= p


def enc(value: int) -> bytes:
    return value.to_bytes(32, "little")


def dec(scalar: bytes) -> int:
    return int.from_bytes(scalar, "little")


def base(value: int) -> bytes:
    return crypto_scalarmult_ed25519_base_noclamp(enc(value % L))


def dealing_of(coefficients: list[int], holders: int) -> Dealing:
    """A dealing of a chosen polynomial, built here from the definition."""
    shares = tuple(
        enc(sum(a * pow(i, j, L) for j, a in enumerate(coefficients)) % L)
        for i in range(1, holders + 1)
    )
    return Dealing(b"".join(base(a) for a in coefficients), shares)


def shift(share: bytes, delta: int) -> bytes:
    return enc((dec(share) + delta) % L)


def with_point(commitments: bytes, position: int, point: bytes) -> bytes:
    return commitments[: 32 * position] + point + commitments[32 * (position + 1) :]


secrets = st.integers(1, L - 1).map(enc)


@st.composite
def sizes(draw: st.DrawFn, min_threshold: int = 1) -> tuple[int, int]:
    threshold = draw(st.integers(min_threshold, 5))
    return threshold, draw(st.integers(threshold, 8))


@settings(max_examples=100, deadline=None)
@given(secret=secrets, size=sizes(), data=st.data())
def test_any_threshold_shares_rebuild_the_secret(
    secret: bytes, size: tuple[int, int], data: st.DataObject
) -> None:
    threshold, holders = size
    dealing = deal(secret, threshold, holders)
    assert dealing.threshold == commitment_count(dealing.commitments) == threshold
    assert len(dealing.shares) == holders
    chosen = data.draw(
        st.lists(st.integers(1, holders), min_size=threshold, max_size=threshold, unique=True)
    )
    subset = {i: dealing.shares[i - 1] for i in chosen}
    assert combine(subset) == secret
    assert rebuild(dealing.commitments, subset, threshold) == Rebuilt(secret, ())
    assert secret_matches(dealing.commitments, secret)


@settings(max_examples=50, deadline=None)
@given(secret=secrets, size=sizes(min_threshold=2), other_secret=secrets)
def test_honest_shares_verify_and_altered_ones_do_not(
    secret: bytes, size: tuple[int, int], other_secret: bytes
) -> None:
    threshold, holders = size
    dealing = deal(secret, threshold, holders)
    other = deal(other_secret, threshold, holders)
    for index, share in enumerate(dealing.shares, start=1):
        assert verify_share(dealing.commitments, index, share)
        assert not verify_share(dealing.commitments, index % holders + 1, share)
        assert not verify_share(dealing.commitments, index, shift(share, 1))
        assert not verify_share(other.commitments, index, share)


def test_a_threshold_of_one_gives_every_holder_the_secret() -> None:
    secret = random_scalar()
    dealing = deal(secret, 1, 3)
    assert dealing.shares == (secret,) * 3
    assert all(verify_share(dealing.commitments, i, secret) for i in (1, 2, 3))
    assert rebuild(dealing.commitments, {2: secret}, 1) == Rebuilt(secret, ())


def test_the_last_holder_index_verifies() -> None:
    dealing = deal(random_scalar(), 2, MAX_HOLDERS)
    assert verify_share(dealing.commitments, MAX_HOLDERS, dealing.shares[-1])


LIES = ("random", "shifted", "other_index", "zero", "short", "unreduced")


def lie(kind: str, dealing: Dealing, index: int, noise: bytes, delta: int) -> bytes:
    share = dealing.shares[index - 1]
    return {
        "random": noise,
        "shifted": shift(share, delta),
        "other_index": dealing.shares[index % len(dealing.shares)],
        "zero": bytes(32),
        "short": share[:31],
        "unreduced": enc(dec(share) + L),  # the same value mod L, not canonical
    }[kind]


@settings(max_examples=100, deadline=None)
@given(secret=secrets, size=sizes(min_threshold=2), data=st.data())
def test_rebuild_names_exactly_the_liars(
    secret: bytes, size: tuple[int, int], data: st.DataObject
) -> None:
    threshold, holders = size
    dealing = deal(secret, threshold, holders)
    liars = data.draw(
        st.lists(st.integers(1, holders), max_size=holders - threshold, unique=True), label="liars"
    )
    revealed = dict(enumerate(dealing.shares, start=1))
    for index in liars:
        kind = data.draw(st.sampled_from(LIES), label=f"lie of {index}")
        noise = data.draw(st.binary(min_size=32, max_size=32), label="noise")
        delta = data.draw(st.integers(1, L - 1), label="delta")
        revealed[index] = lie(kind, dealing, index, noise, delta)
    assert rebuild(dealing.commitments, revealed, threshold) == Rebuilt(
        secret, tuple(sorted(liars))
    )


def test_colluding_liars_that_keep_the_secret_are_still_named() -> None:
    # Lagrange weights at 0 of indices 1, 2, 3 are 3, -3, 1: shifting share 1 by d and share 3
    # by -3d leaves the combination of shares 1..3 at the secret.
    secret = random_scalar()
    dealing = deal(secret, 3, 5)
    d = dec(random_scalar())
    revealed = dict(enumerate(dealing.shares, start=1))
    revealed[1] = shift(revealed[1], d)
    revealed[3] = shift(revealed[3], -3 * d)
    assert combine({i: revealed[i] for i in (1, 2, 3)}) == secret
    assert rebuild(dealing.commitments, revealed, 3) == Rebuilt(secret, (1, 3))
    with pytest.raises(ProtocolViolation, match="only 1 of 3 VSS shares are valid"):
        rebuild(dealing.commitments, {i: revealed[i] for i in (1, 2, 3)}, 3)


def test_too_few_valid_shares_are_refused_with_the_counts() -> None:
    dealing = deal(random_scalar(), 3, 5)
    revealed = {1: dealing.shares[0], 2: dealing.shares[1], 4: shift(dealing.shares[3], 7)}
    with pytest.raises(
        ProtocolViolation, match=r"only 2 of 3 .* threshold is 3 \(invalid: \[4\]\)"
    ):
        rebuild(dealing.commitments, revealed, 3)
    with pytest.raises(ProtocolViolation, match="only 0 of 0"):
        rebuild(dealing.commitments, {}, 3)


def test_a_lying_dealer_is_caught_by_the_holder_it_lied_to() -> None:
    dealing = deal(random_scalar(), 3, 5)
    shares = list(dealing.shares)
    shares[2] = random_scalar()  # holder 3's share is off the committed polynomial
    lying = Dealing(dealing.commitments, tuple(shares))
    verdicts = [verify_share(lying.commitments, i, s) for i, s in enumerate(lying.shares, 1)]
    assert verdicts == [True, True, False, True, True]


def test_a_dealer_committing_to_the_wrong_degree_is_refused() -> None:
    secret = random_scalar()
    dealing = deal(secret, 4, 6)  # the round's threshold is 3
    assert commitment_count(dealing.commitments) == 4
    with pytest.raises(ProtocolViolation, match="committed to 4 coefficients, the threshold is 3"):
        rebuild(dealing.commitments, dict(enumerate(dealing.shares, 1)), 3)


def test_invalid_commitments_blame_the_dealer_not_the_holders() -> None:
    dealing = deal(random_scalar(), 3, 5)
    broken = with_point(dealing.commitments, 1, ORDER_8)
    with pytest.raises(ProtocolViolation, match="commitments are not valid points"):
        rebuild(broken, dict(enumerate(dealing.shares, 1)), 3)


def test_a_running_sum_at_the_identity_does_not_fail_an_honest_share() -> None:
    # f(x) = s - i*a x + a x^2: Horner's rule in the group at x = i reaches i*C_2 + C_1 = identity,
    # and f(i) = s is a valid share.
    s, a, i = dec(random_scalar()), dec(random_scalar()), 4
    dealing = dealing_of([s, -i * a % L, a], holders=5)
    assert dealing.shares[i - 1] == enc(s)
    assert verify_share(dealing.commitments, i, enc(s))
    assert rebuild(dealing.commitments, dict(enumerate(dealing.shares, 1)), 3).liars == ()


def test_a_zero_share_never_verifies_and_is_never_dealt() -> None:
    # f(x) = a (x - 2): f(2) = 0 is on the polynomial, but deal never hands out a zero share.
    a = dec(random_scalar())
    dealing = dealing_of([-2 * a % L, a], holders=3)
    assert dealing.shares[1] == bytes(32)
    assert not verify_share(dealing.commitments, 2, bytes(32))
    assert verify_share(dealing.commitments, 3, dealing.shares[2])


def test_test_points_are_what_they_claim() -> None:
    for point in (ORDER_2, ORDER_4, ORDER_8, NOT_CANONICAL, IDENTITY):
        assert not crypto_core_ed25519_is_valid_point(point)


@pytest.fixture(scope="module")
def honest() -> Dealing:
    return deal(random_scalar(), 3, 4)


MIXED_ORDER = crypto_core_ed25519_add(base(5), ORDER_4)  # on the curve, outside the subgroup

BAD_COMMITMENTS: dict[str, Callable[[bytes], bytes | bytearray]] = {
    "empty": lambda c: b"",
    "one byte short": lambda c: c[:-1],
    "one byte long": lambda c: c + b"\x00",
    "too many points": lambda c: c[:32] * (MAX_HOLDERS + 1),
    "not bytes": lambda c: bytearray(c),
    "C_0 not canonical": lambda c: with_point(c, 0, NOT_CANONICAL),
    "C_1 not canonical": lambda c: with_point(c, 1, NOT_CANONICAL),
    "C_2 identity": lambda c: with_point(c, 2, IDENTITY),
    "C_0 of order 2": lambda c: with_point(c, 0, ORDER_2),
    "C_1 of order 4": lambda c: with_point(c, 1, ORDER_4),
    "C_2 of order 8": lambda c: with_point(c, 2, ORDER_8),
    "C_0 of mixed order": lambda c: with_point(c, 0, MIXED_ORDER),
}


@pytest.mark.parametrize("name", BAD_COMMITMENTS)
def test_verify_share_is_false_for_bad_commitments(honest: Dealing, name: str) -> None:
    commitments = BAD_COMMITMENTS[name](honest.commitments)
    assert not verify_share(commitments, 1, honest.shares[0])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("index", "share"),
    [
        (0, None),
        (-1, None),
        (MAX_HOLDERS + 1, None),
        (True, None),
        (1.0, None),
        (1, b""),
        (1, b"\x01" * 31),
        (1, b"\x01" * 33),
        (1, bytes(32)),
        (1, enc(L)),
        (1, b"\xff" * 32),
        (1, "unreduced"),
        (1, "text"),
    ],
)
def test_verify_share_is_false_for_bad_index_or_share(
    honest: Dealing, index: object, share: object
) -> None:
    if share is None:
        share = honest.shares[0]
    elif share == "unreduced":
        share = enc(dec(honest.shares[0]) + L)
    assert verify_share(honest.commitments, index, share) is False  # type: ignore[arg-type]


class Repeating(Mapping[int, bytes]):
    """A mapping whose iteration yields an index twice (as a decoded message could)."""

    def __init__(self, shares: dict[int, bytes], order: list[int]) -> None:
        self.shares, self.order = shares, order

    def __getitem__(self, index: int) -> bytes:
        return self.shares[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def test_combine_refuses_bad_indices_and_shares(honest: Dealing) -> None:
    one, two = honest.shares[0], honest.shares[1]
    with pytest.raises(ProtocolViolation, match="appears twice"):
        combine(Repeating({1: one, 2: two}, [1, 2, 1]))
    for index in (0, -3, MAX_HOLDERS + 1, True):
        with pytest.raises(ProtocolViolation, match="index"):
            combine({index: one, 2: two})
    with pytest.raises(ProtocolViolation, match="not a canonical"):
        combine({1: one, 2: enc(L)})
    with pytest.raises(ProtocolViolation, match="not a canonical"):
        combine({1: one, 2: two[:31]})
    with pytest.raises(ProtocolViolation, match="no VSS shares"):
        combine({})
    with pytest.raises(ProtocolViolation, match="index"):
        rebuild(honest.commitments, {0: one}, 3)


@pytest.mark.parametrize(
    ("secret", "threshold", "holders"),
    [
        (None, 0, 3),
        (None, 4, 3),
        (None, 2, MAX_HOLDERS + 1),
        (None, True, 3),
        (None, 2, 3.0),
        (bytes(32), 2, 3),
        (enc(L), 2, 3),
        (b"\x01" * 31, 2, 3),
        ("text", 2, 3),
    ],
)
def test_deal_refuses_bad_arguments(secret: object, threshold: object, holders: object) -> None:
    with pytest.raises(InvalidInput):
        deal(secret or random_scalar(), threshold, holders)  # type: ignore[arg-type]


def test_rebuild_refuses_a_bad_threshold(honest: Dealing) -> None:
    with pytest.raises(InvalidInput):
        rebuild(honest.commitments, {}, 0)


def test_secret_matches_only_the_secret() -> None:
    secret = random_scalar()
    dealing = deal(secret, 3, 4)
    assert secret_matches(dealing.commitments, secret)
    assert not secret_matches(dealing.commitments, shift(secret, 1))
    assert not secret_matches(dealing.commitments, dealing.shares[0])
    assert not secret_matches(dealing.commitments, bytes(32))
    assert not secret_matches(dealing.commitments, enc(dec(secret) + L))
    assert not secret_matches(dealing.commitments, secret[:31])
    assert not secret_matches(dealing.commitments[:31], secret)
    assert not secret_matches(b"", secret)
    assert not secret_matches(with_point(dealing.commitments, 0, ORDER_8), secret)
    assert not secret_matches(deal(random_scalar(), 3, 4).commitments, secret)


def test_commitment_count_checks_the_length() -> None:
    assert commitment_count(b"\x00" * 96) == 3
    for bad in (b"", b"\x00" * 33, bytearray(32), b"\x00" * 32 * (MAX_HOLDERS + 1)):
        with pytest.raises(ProtocolViolation):
            commitment_count(bad)  # type: ignore[arg-type]


def test_random_scalars_are_canonical_nonzero_and_distinct() -> None:
    drawn = [random_scalar() for _ in range(200)]
    assert all(len(s) == 32 and 0 < dec(s) < L for s in drawn)
    assert len(set(drawn)) == len(drawn)
    assert any(s[31] & 0x0F for s in drawn)  # the top byte is used, not only the low 31


def test_deal_draws_again_a_polynomial_with_a_zero_share(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = random_scalar()
    forced = enc(-dec(secret) * pow(2, -1, L) % L)  # f(x) = s + a x with f(2) = 0
    draws = iter([forced, random_scalar()])
    monkeypatch.setattr(vss, "random_scalar", lambda: next(draws))
    dealing = deal(secret, 2, 3)
    assert bytes(32) not in dealing.shares
    assert dealing.commitments[32:] != base(dec(forced))
    assert all(verify_share(dealing.commitments, i, s) for i, s in enumerate(dealing.shares, 1))
