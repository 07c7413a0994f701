"""SecAgg+ neighbours k and threshold t that meet stated privacy and correctness targets.

Implements the parameter analysis of Bell, Bonawitz, Gascón, Lepoint and Raykova, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020 (ePrint 2020/704), for the
variant secure against a malicious server, with a consistency round.

Model. ``n`` devices sit on a ring in a uniformly random order; each device's neighbours are the
k / 2 devices on each side (k even, 2 <= k <= n - 2), or every other device (k = n - 1, the
complete graph). Each device Shamir-shares its two secrets (mask seed and key) among its k + 1
holders (its neighbours and itself) with threshold t. The server colludes with
C = ceil(corrupt_fraction * n) devices and D = ceil(dropout_fraction * n) devices drop out. After
the consistency round an honest holder reveals, per owner, a share of at most one of its two
secrets. Union bounds over the random order give three failure probabilities:

- exposure (privacy): some honest device has c >= 2t - k - 1 corrupt neighbours, enough for the
  server to collect t shares of both its secrets; c ~ Hypergeometric(n - 1, C, k), so
  P = n * P[c >= 2t - k - 1].
- disconnection (privacy): the honest survivors' graph splits, revealing a partial sum; this
  needs two disjoint runs of k / 2 removed ring positions among R = C + D removed devices, so
  P = comb(n, 2) * prod_{j < k} (R - j) / (n - j); zero for the complete graph.
- abort (correctness): some survivor misses more than k + 1 - t of its k neighbours (corrupt
  devices may withhold), missing ~ Hypergeometric(n - 1, C + D, k), so
  P = n * P[missing >= k + 2 - t].

Each union bound is capped at 1. All are computed in log space, so bounds far below 2^-1000
keep their bits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

from fedmarket.exceptions import InvalidInput

MIN_COHORT = 3
# gamma = 0.05, delta = 0.1 give k = 106 at n = 1,000 and 136 at 10,000; gamma = 0.1 would need
# k = 196 and 276 (see table()).
DEFAULT_CORRUPT_FRACTION = 0.05
DEFAULT_DROPOUT_FRACTION = 0.1
_LN2 = math.log(2.0)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """What the operator assumes about one round, and the failure probabilities it accepts.

    ``corrupt_fraction`` (gamma, in [0, 1)) of the cohort colludes with the server and
    ``dropout_fraction`` (delta, in [0, 1)) drops out; both are rounded up to whole devices, with
    ``fraction * n`` first rounded to 9 decimals so that 0.07 * 100 counts 7 devices, not 8.
    Their sum must be below 1. Privacy must fail with probability at most
    2^-(``security_bits`` + log2(``draws``)): a device joins up to ``draws`` neighbour graphs that
    end without its masked upload per window (:data:`fedmarket.secagg.mod.DRAW_WINDOW_S`), and a
    server grinding over them gains log2(draws) bits. A round may
    abort with probability at most 2^-``correctness_bits``. Invalid values raise
    :class:`InvalidInput` at construction.
    """

    corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION
    security_bits: float = 40.0
    correctness_bits: float = 20.0
    draws: int = 3

    def __post_init__(self) -> None:
        for name in ("corrupt_fraction", "dropout_fraction"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value < 1):
                raise InvalidInput(f"secagg {name} must be a finite number in [0, 1), got {value}")
        if self.corrupt_fraction + self.dropout_fraction >= 1:
            raise InvalidInput(
                f"secagg corrupt_fraction + dropout_fraction must be < 1 (no honest survivor "
                f"is left otherwise), got {self.corrupt_fraction} + {self.dropout_fraction}"
            )
        for name in ("security_bits", "correctness_bits"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 1):
                raise InvalidInput(f"secagg {name} must be a finite number >= 1, got {value}")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise InvalidInput(f"secagg draws must be an integer >= 1, got {self.draws!r}")

    @property
    def privacy_target_bits(self) -> float:
        """Bits of privacy a round needs: ``security_bits`` + log2(``draws``)."""
        return self.security_bits + math.log2(self.draws)

    def corrupt(self, n: int) -> int:
        """C: devices colluding with the server in a cohort of ``n``."""
        return _count(self.corrupt_fraction, n)

    def dropped(self, n: int) -> int:
        """D: devices that drop out of a cohort of ``n``."""
        return _count(self.dropout_fraction, n)


@dataclass(frozen=True)
class Bounds:
    """Union bounds on one round's failure probabilities, each capped at 1.

    ``exposure`` and ``disconnection`` are the privacy failures, ``abort`` the correctness
    failure (see the module docstring). They are floats and may underflow to 0.0;
    ``privacy_bits`` = -log2(min(1, exposure + disconnection)) and ``correctness_bits`` =
    -log2(abort) are computed in log space and do not (``inf`` only for a probability of 0).
    """

    privacy_bits: float
    correctness_bits: float
    exposure: float
    disconnection: float
    abort: float


class TableRow(TypedDict):
    """One row of :func:`table`."""

    n: int
    k: int
    t: int
    privacy_bits: float
    correctness_bits: float


def bounds(n: int, k: int, t: int, assumptions: Assumptions) -> Bounds:
    """The failure bounds of SecAgg+ with ``k`` neighbours and threshold ``t`` over ``n`` devices.

    ``k`` is even with 2 <= k <= n - 2, or n - 1 (the complete graph); 1 <= t <= k + 1. Raises
    :class:`InvalidInput` otherwise. Source: Bell et al., CCS 2020 (module docstring).
    """
    _check_graph(n, k, t)
    curves = _curves(n, k, assumptions)
    ln_privacy = min(0.0, float(np.logaddexp(curves.ln_exposure[t], curves.ln_disconnection)))
    ln_abort = min(0.0, float(curves.ln_abort[t]))
    return Bounds(
        privacy_bits=_bits(ln_privacy),
        correctness_bits=_bits(ln_abort),
        exposure=math.exp(min(0.0, float(curves.ln_exposure[t]))),
        disconnection=math.exp(min(0.0, curves.ln_disconnection)),
        abort=math.exp(ln_abort),
    )


def check(n: int, k: int, t: int, assumptions: Assumptions) -> Bounds:
    """:func:`bounds`, raising :class:`InvalidInput` unless both targets of ``assumptions`` hold.

    The message names the failed bound (privacy first) and its bits against the target.
    """
    result = bounds(n, k, t, assumptions)
    where = f"k={k}, t={t} at n={n} with {_describe(assumptions)}"
    if result.privacy_bits < assumptions.privacy_target_bits:
        raise InvalidInput(
            f"{where} give a 2^-{result.privacy_bits:.1f} privacy failure bound, the assumptions "
            f"need 2^-{assumptions.privacy_target_bits:.1f}: raise t or k, or use choose()"
        )
    if result.correctness_bits < assumptions.correctness_bits:
        raise InvalidInput(
            f"{where} give a 2^-{result.correctness_bits:.1f} correctness (abort) bound, the "
            f"assumptions need 2^-{assumptions.correctness_bits:.1f}: lower t or raise k, "
            "or use choose()"
        )
    return result


@functools.lru_cache(maxsize=1024)
def choose(n: int, assumptions: Assumptions) -> tuple[int, int]:
    """(k, t): the sparsest graph, then the threshold, meeting both targets over ``n`` devices.

    k is the smallest even number in [2, n - 2], else n - 1 (the complete graph), for which some
    t in [1, k + 1] meets both targets; t is the smallest that meets privacy, which maximises
    correctness. Raises :class:`InvalidInput` if no (k, t) does, or if n < 3. Feasibility needs
    roughly 3 * corrupt_fraction + 2 * dropout_fraction < 1.
    """
    _check_cohort(n)
    privacy_target = assumptions.privacy_target_bits
    corrupt = min(assumptions.corrupt(n), n - 1)
    missing = min(assumptions.corrupt(n) + assumptions.dropped(n), n - 1)
    ln_exposure_limit = -privacy_target * _LN2 - math.log(n)
    ln_abort_limit = -assumptions.correctness_bits * _LN2 - math.log(n)
    for k in [*range(2, n - 1, 2), n - 1]:
        # Privacy needs 2t - k - 1 >= least_exposure, correctness k + 2 - t >= least_missing:
        # an O(log k) test that skips most k before the exact O(k) bounds.
        least_exposure = _least_possible(n - 1, corrupt, k, ln_exposure_limit)
        least_missing = _least_possible(n - 1, missing, k, ln_abort_limit)
        if (least_exposure + k + 2) // 2 > k + 2 - least_missing:
            continue
        curves = _curves(n, k, assumptions)
        ln_privacy = np.logaddexp(curves.ln_exposure, curves.ln_disconnection)
        private = np.flatnonzero(-ln_privacy[1:] / _LN2 >= privacy_target)
        if private.size == 0:
            continue
        t = int(private[0]) + 1
        if _bits(min(0.0, float(curves.ln_abort[t]))) >= assumptions.correctness_bits:
            return k, t
    raise InvalidInput(
        f"at n={n} with {_describe(assumptions)} no k, t reach both 2^-{privacy_target:.1f} "
        f"privacy and 2^-{assumptions.correctness_bits:g} correctness failure: lower the "
        "fractions ([federation] colluding_fraction, dropout_fraction), or grow the cohort"
    )


def table(ns: Iterable[int], assumptions: Assumptions) -> list[TableRow]:
    """:func:`choose` and its :func:`bounds` for each cohort size in ``ns``, e.g. for a README.

    Raises :class:`InvalidInput` as :func:`choose` does.
    """
    rows: list[TableRow] = []
    for n in ns:
        k, t = choose(n, assumptions)
        result = bounds(n, k, t, assumptions)
        rows.append(
            TableRow(
                n=n,
                k=k,
                t=t,
                privacy_bits=result.privacy_bits,
                correctness_bits=result.correctness_bits,
            )
        )
    return rows


@dataclass(frozen=True)
class _Curves:
    """Natural logs of the union bounds (uncapped), indexed by t = 0..k + 1 where they vary."""

    ln_exposure: FloatArray
    ln_disconnection: float
    ln_abort: FloatArray


def _curves(n: int, k: int, assumptions: Assumptions) -> _Curves:
    corrupt = min(assumptions.corrupt(n), n - 1)
    removed = assumptions.corrupt(n) + assumptions.dropped(n)
    ln_n = math.log(n)
    t = np.arange(k + 2)
    # exposure needs c >= 2t - k - 1 corrupt neighbours; P[c >= m] = 1 for m <= 0.
    exposure_tail = _ln_tail(n - 1, corrupt, k)
    ln_exposure = ln_n + exposure_tail[np.clip(2 * t - k - 1, 0, k + 1)]
    # abort needs missing >= k + 2 - t, which lies in [1, k + 2] for t in [0, k + 1].
    abort_tail = _ln_tail(n - 1, min(removed, n - 1), k)
    ln_abort = ln_n + abort_tail[np.minimum(k + 2 - t, k + 1)]
    return _Curves(
        ln_exposure=ln_exposure,
        ln_disconnection=_ln_disconnection(n, k, min(removed, n)),
        ln_abort=ln_abort,
    )


def _ln_tail(population: int, successes: int, draws: int) -> FloatArray:
    """ln P[X >= m] for m = 0..draws + 1, X ~ Hypergeometric(population, successes, draws)."""
    support = _support(population, successes, draws)
    ln_pmf = _ln_pmf(population, successes, draws, np.arange(support.start, support.stop))
    tail = np.full(draws + 2, -np.inf)
    tail[support] = np.logaddexp.accumulate(ln_pmf[::-1])[::-1]
    tail[: support.start + 1] = 0.0  # exactly: X >= support.start always
    return tail


def _least_possible(population: int, successes: int, draws: int, ln_limit: float) -> int:
    """A lower bound on every m with P[X >= m] <= e^ln_limit, X ~ Hypergeometric(...).

    Needs e^ln_limit < 1 / (draws + 1). P[X >= m] >= pmf(max(m, mode)), and pmf(mode) >=
    1 / (draws + 1), so m > mode; above the mode pmf is non-increasing, so a binary search finds
    the least m with pmf(m) <= e^ln_limit (with slack for rounding). O(log draws).
    """
    support = _support(population, successes, draws)
    # pmf(x) / pmf(x - 1) = (successes - x + 1)(draws - x + 1) / (x (population - successes -
    # draws + x)) >= 1 iff x <= (draws + 1)(successes + 1) / (population + 2): the mode.
    low = (draws + 1) * (successes + 1) // (population + 2) + 1
    high = support.stop  # pmf = 0 from here on
    while low < high:
        middle = (low + high) // 2
        if _ln_pmf_at(population, successes, draws, middle) <= ln_limit + 1e-9:
            high = middle
        else:
            low = middle + 1
    return low


def _support(population: int, successes: int, draws: int) -> range:
    return range(max(0, draws - population + successes), min(draws, successes) + 1)


def _ln_pmf(population: int, successes: int, draws: int, x: IntArray) -> FloatArray:
    """ln P[X = x] for x in the support; ln n! from gammaln, ~1e-11 relative error at n = 10^4."""
    ln_fact = _ln_factorials(population)
    failures = population - successes
    ln_pmf: FloatArray = (
        ln_fact[successes]
        - ln_fact[x]
        - ln_fact[successes - x]
        + ln_fact[failures]
        - ln_fact[draws - x]
        - ln_fact[failures - draws + x]
        - (ln_fact[population] - ln_fact[draws] - ln_fact[population - draws])
    )
    return ln_pmf


def _ln_pmf_at(population: int, successes: int, draws: int, x: int) -> float:
    """:func:`_ln_pmf` at one point of the support, in plain floats (fast for scalars)."""
    failures = population - successes
    return _ln_comb(successes, x) + _ln_comb(failures, draws - x) - _ln_comb(population, draws)


def _ln_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


@functools.lru_cache(maxsize=4)
def _ln_factorials(n: int) -> FloatArray:
    """ln(i!) for i = 0..n, read-only."""
    ln_fact: FloatArray = gammaln(np.arange(n + 1, dtype=np.float64) + 1)
    ln_fact.flags.writeable = False
    return ln_fact


def _ln_disconnection(n: int, k: int, removed: int) -> float:
    if k == n - 1 or removed < k:
        return -math.inf
    # comb(n, 2) * removed! / (removed - k)! / (n! / (n - k)!)
    return (
        math.log(n * (n - 1) / 2)
        + math.lgamma(removed + 1)
        - math.lgamma(removed - k + 1)
        - math.lgamma(n + 1)
        + math.lgamma(n - k + 1)
    )


def _bits(ln_probability: float) -> float:
    return math.inf if ln_probability == -math.inf else max(0.0, -ln_probability / _LN2)


def _count(fraction: float, n: int) -> int:
    return math.ceil(round(fraction * n, 9))


def _describe(assumptions: Assumptions) -> str:
    return (
        f"corrupt_fraction={assumptions.corrupt_fraction:g}, "
        f"dropout_fraction={assumptions.dropout_fraction:g}"
    )


def _check_cohort(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < MIN_COHORT:
        raise InvalidInput(f"SecAgg+ needs a cohort of n >= {MIN_COHORT} devices, got n={n!r}")


def _check_graph(n: int, k: int, t: int) -> None:
    _check_cohort(n)
    if (
        isinstance(k, bool)
        or not isinstance(k, int)
        or not (k == n - 1 or (k % 2 == 0 and 2 <= k <= n - 2))
    ):
        raise InvalidInput(
            f"k must be an even number in [2, n - 2] or n - 1 = {n - 1} (the complete graph), "
            f"got k={k!r} at n={n}"
        )
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= k + 1:
        raise InvalidInput(
            f"t must be in [1, k + 1] = [1, {k + 1}] (k + 1 holders per secret), got t={t!r}"
        )


DEFAULT_ASSUMPTIONS = Assumptions()
"""What rounds assume and devices require unless told otherwise."""
