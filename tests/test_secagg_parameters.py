"""SecAgg+ k and t (Bell et al. 2020, malicious server): bounds match an exact reference."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.exceptions import InvalidInput
from fedmarket.secagg.parameters import Assumptions, Bounds, bounds, check, choose, table

# --- an independent reference: exact integers and fractions, no logs, no scipy -------------


def exact_tail(population: int, successes: int, draws: int, at_least: int) -> Fraction:
    """P[X >= at_least] for X ~ Hypergeometric(population, successes, draws), exactly."""
    ways = sum(
        math.comb(successes, c) * math.comb(population - successes, draws - c)
        for c in range(max(at_least, 0), draws + 1)
    )
    return Fraction(ways, math.comb(population, draws))


def exact_bounds(
    n: int, k: int, t: int, gamma: float, delta: float
) -> tuple[Fraction, Fraction, Fraction]:
    """(exposure, disconnection, abort) union bounds, uncapped; gamma, delta as decimals."""
    corrupt = math.ceil(Fraction(str(gamma)) * n)
    removed = corrupt + math.ceil(Fraction(str(delta)) * n)
    exposure = n * exact_tail(n - 1, min(corrupt, n - 1), k, 2 * t - k - 1)
    disconnection = Fraction(0)
    if k < n - 1:
        disconnection = Fraction(math.comb(n, 2))
        for j in range(k):
            disconnection *= Fraction(max(min(removed, n) - j, 0), n - j)
    abort = n * exact_tail(n - 1, min(removed, n - 1), k, k + 2 - t)
    return exposure, disconnection, abort


def exact_bits(probability: Fraction) -> float:
    probability = min(probability, Fraction(1))
    if probability == 0:
        return math.inf
    return math.log2(probability.denominator) - math.log2(probability.numerator)


def assume(gamma: float, delta: float) -> Assumptions:
    return Assumptions(corrupt_fraction=gamma, dropout_fraction=delta)


def valid_ks(n: int) -> list[int]:
    return [*range(2, n - 1, 2), n - 1]


# --- the bounds --------------------------------------------------------------------------

GRID = [
    # (n, gamma, delta, ks): small cohorts, the complete graph, tiny and huge probabilities
    (3, 0.0, 0.0, [2]),
    (4, 0.2, 0.1, [2, 3]),
    (5, 0.2, 0.1, [2, 4]),
    (10, 0.1, 0.1, [2, 4, 6, 8, 9]),
    (20, 0.05, 0.1, [4, 8, 12, 18, 19]),
    (50, 0.2, 0.05, [10, 36, 48, 49]),
    (101, 1 / 3, 0.1, [6, 40, 100]),
    (300, 0.1, 0.1, [20, 116, 200, 299]),
    (1000, 0.05, 0.1, [10, 106, 400]),
]


@pytest.mark.parametrize(("n", "gamma", "delta", "ks"), GRID)
def test_bounds_match_the_exact_reference(
    n: int, gamma: float, delta: float, ks: list[int]
) -> None:
    assumptions = assume(gamma, delta)
    for k in ks:
        for t in sorted({1, 2, k // 2 + 1, (2 * k) // 3, (2 * k) // 3 + 1, (3 * k) // 4, k, k + 1}):
            if not 1 <= t <= k + 1:
                continue
            exposure, disconnection, abort = exact_bounds(n, k, t, gamma, delta)
            result = bounds(n, k, t, assumptions)
            where = f"n={n} k={k} t={t}"
            assert result.privacy_bits == pytest.approx(
                exact_bits(exposure + disconnection), rel=1e-9, abs=2e-6
            ), where
            assert result.correctness_bits == pytest.approx(
                exact_bits(abort), rel=1e-9, abs=2e-6
            ), where
            for got, want in [
                (result.exposure, exposure),
                (result.disconnection, disconnection),
                (result.abort, abort),
            ]:
                assert got == pytest.approx(float(min(want, Fraction(1))), rel=1e-6), where


def test_the_grid_reaches_tiny_and_certain_probabilities() -> None:
    """The grid above covers bounds far below 2^-1000 (floats underflow, bits do not) and 1."""
    tiny = bounds(1000, 400, 301, assume(0.05, 0.1))
    exposure, disconnection, _ = exact_bounds(1000, 400, 301, 0.05, 0.1)
    assert tiny.exposure == 0.0  # underflows as a float ...
    assert 1000 < tiny.privacy_bits == pytest.approx(exact_bits(exposure + disconnection))
    assert bounds(10, 9, 7, assume(0.1, 0.1)).privacy_bits == math.inf  # C = 1 < 2t - k - 1 = 4
    assert bounds(10, 9, 7, assume(0.4, 0.1)).privacy_bits == 0.0  # C = 4 >= 2t - k - 1
    assert bounds(1000, 106, 68, assume(0.05, 0.1)).exposure == pytest.approx(
        float(exact_bounds(1000, 106, 68, 0.05, 0.1)[0]), rel=1e-6
    )
    assert exact_bits(exact_bounds(1000, 106, 68, 0.05, 0.1)[0]) == pytest.approx(45.9, abs=0.1)


def test_the_complete_graph_is_exact() -> None:
    """k = n - 1: every device sees all C corrupt devices, so each bound is 0 or 1."""
    assumptions = assume(0.2, 0.1)  # n = 20: C = 4, C + D = 6
    assert bounds(20, 19, 11, assumptions) == Bounds(
        privacy_bits=0.0, correctness_bits=math.inf, exposure=1.0, disconnection=0.0, abort=0.0
    )  # 2t - k - 1 = 2 <= C
    assert bounds(20, 19, 12, assumptions).privacy_bits == 0.0  # 2t - k - 1 = 4 <= C
    assert bounds(20, 19, 13, assumptions).privacy_bits == math.inf  # 2t - k - 1 = 6 > C
    assert bounds(20, 19, 14, assumptions).correctness_bits == math.inf  # k + 2 - t = 7 > 6
    assert bounds(20, 19, 15, assumptions).correctness_bits == 0.0  # k + 2 - t = 6 <= 6


@given(
    n=st.integers(3, 400),
    k_index=st.integers(0, 10**6),
    t_pair=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    gamma=st.floats(0, 0.5),
    delta=st.floats(0, 0.45),
    draws=st.integers(1, 8),
)
@settings(max_examples=150, deadline=None)
def test_bits_are_monotone_in_t(
    n: int, k_index: int, t_pair: tuple[int, int], gamma: float, delta: float, draws: int
) -> None:
    assumptions = Assumptions(corrupt_fraction=gamma, dropout_fraction=delta, draws=draws)
    ks = valid_ks(n)
    k = ks[k_index % len(ks)]
    low, high = sorted(1 + i % (k + 1) for i in t_pair)
    weak, strong = bounds(n, k, low, assumptions), bounds(n, k, high, assumptions)
    assert 0 <= weak.privacy_bits <= strong.privacy_bits
    assert weak.correctness_bits >= strong.correctness_bits >= 0


# --- choosing k and t --------------------------------------------------------------------

CHOICES = [
    (n, gamma, delta)
    for n in (6, 10, 11, 20, 50, 100, 300, 1000)
    for gamma, delta in ((0.05, 0.1), (0.1, 0.1), (0.2, 0.05), (0.0, 0.0))
]


@pytest.mark.parametrize(("n", "gamma", "delta"), CHOICES)
def test_choose_is_the_sparsest_graph_then_the_lowest_threshold(
    n: int, gamma: float, delta: float
) -> None:
    """Its (k, t) passes check(); every sparser graph (the next one for n > 50) has no t that
    does, nor does any graph when choose() refuses (n = 6 and 11 at gamma = 0.2 do)."""
    assumptions = assume(gamma, delta)
    try:
        k, t = choose(n, assumptions)
    except InvalidInput:
        assert n <= 50
        k = n + 1  # every graph must fail
    else:
        check(n, k, t, assumptions)
        assert bounds(n, k, t - 1, assumptions).privacy_bits < assumptions.privacy_target_bits
    sparser = [j for j in valid_ks(n) if j < k]
    for j in sparser if n <= 50 else sparser[-1:]:
        for u in range(1, j + 2):
            with pytest.raises(InvalidInput):
                check(n, j, u, assumptions)


def test_the_default_table_is_pinned() -> None:
    """The README's table: defaults gamma = 0.05, delta = 0.1, 40 bits + log2(3), 20 bits."""
    rows = table([10, 20, 50, 100, 300, 1000, 10000], Assumptions())
    assert [(row["n"], row["k"], row["t"]) for row in rows] == [
        (10, 6, 5),
        (20, 8, 6),
        (50, 20, 13),
        (100, 34, 21),
        (300, 70, 44),
        (1000, 106, 68),
        (10000, 136, 87),
    ]
    for row in rows:
        assert row["privacy_bits"] >= 40 + math.log2(3)
        assert row["correctness_bits"] >= 20


def test_the_old_log_n_rule_is_refused() -> None:
    """k = 2 ceil(log2(n) / 2), t = k / 2 + 1: one corrupt neighbour of 10 exposes a device."""
    n, gamma = 1000, 1 / 3
    k = 2 * math.ceil(math.log2(n) / 2)
    t = k // 2 + 1
    assert (k, t) == (10, 6)
    per_device = exact_tail(n - 1, 334, k, 2 * t - k - 1)  # P[c >= 1]
    assert float(per_device) == pytest.approx(0.983, abs=1e-3)
    with pytest.raises(InvalidInput, match=r"k=10, t=6 at n=1000 .* 2\^-0\.0 privacy failure"):
        check(n, k, t, assume(gamma, 0.1))
    with pytest.raises(InvalidInput, match="privacy"):
        check(n, k, t, Assumptions())  # refused under the defaults too


def test_check_names_a_correctness_failure() -> None:
    with pytest.raises(InvalidInput, match=r"k=106, t=100 at n=1000 .* correctness"):
        check(1000, 106, 100, Assumptions())


def test_draws_cost_log2_draws_bits() -> None:
    once = Assumptions(draws=1)
    often = Assumptions(draws=1024)
    assert once.privacy_target_bits == 40
    assert often.privacy_target_bits == 50
    k_once, _ = choose(1000, once)
    k_often, _ = choose(1000, often)
    assert k_once <= k_often


def test_choose_is_fast_for_large_cohorts() -> None:
    """Large, near-infeasible and infeasible cohorts are decided without scanning every k."""
    assert choose(10000, assume(0.2, 0.1)) == (1790, 1141)
    assert choose(10000, assume(0.3, 0.04))[0] > 9000
    with pytest.raises(InvalidInput, match="no k, t reach"):
        choose(10000, assume(0.3, 0.1))


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"corrupt_fraction": 1.0}, r"corrupt_fraction must be a finite number in \[0, 1\)"),
        ({"corrupt_fraction": -0.1}, "corrupt_fraction must be"),
        ({"dropout_fraction": math.nan}, "dropout_fraction must be a finite number"),
        ({"corrupt_fraction": 0.6, "dropout_fraction": 0.4}, "sum|must be < 1"),
        ({"security_bits": math.inf}, "security_bits must be a finite number >= 1"),
        ({"security_bits": 0.5}, "security_bits must be"),
        ({"correctness_bits": math.nan}, "correctness_bits must be"),
        ({"draws": 0}, "draws must be an integer >= 1"),
        ({"draws": 2.5}, "draws must be an integer"),
    ],
)
def test_bad_assumptions_are_refused_at_construction(
    fields: dict[str, float], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        Assumptions(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "k", "t", "message"),
    [
        (2, 1, 1, r"n >= 3 devices, got n=2"),
        (20, 5, 3, r"k must be an even number in \[2, n - 2\] or n - 1 = 19.*got k=5"),
        (20, 0, 1, "k must be"),
        (20, 20, 3, "k must be"),
        (20, 6, 8, r"t must be in \[1, k \+ 1\] = \[1, 7\].*got t=8"),
        (20, 6, 0, "t must be in"),
    ],
)
def test_bad_graphs_are_refused(n: int, k: int, t: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        bounds(n, k, t, Assumptions())


def test_an_infeasible_cohort_says_what_to_change() -> None:
    with pytest.raises(InvalidInput, match=r"at n=5 .* no k, t reach .* grow the cohort"):
        choose(5, Assumptions())
    with pytest.raises(InvalidInput, match="n >= 3"):
        choose(2, Assumptions())
    with pytest.raises(InvalidInput, match="lower the fractions"):
        choose(1000, assume(0.34, 0.0))  # 3 gamma + 2 delta > 1
