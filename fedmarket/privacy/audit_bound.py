"""An empirical lower bound on epsilon from a membership test's scores (Clopper-Pearson).

If a mechanism is (epsilon, delta)-DP, every test that guesses "the canary was in" when a score
is at least ``t`` has false-positive and false-negative rates with ``FPR + e^eps FNR >= 1 - delta``
and ``FNR + e^eps FPR >= 1 - delta`` (Kairouz et al. 2015). From one-sided Clopper-Pearson upper
bounds on both rates, ``eps >= log((1 - delta - FNR_ub) / FPR_ub)`` and likewise with the rates
swapped: the bound of Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine
Learning" (NeurIPS 2020), as used by Nasr et al., "Adversary Instantiation" (S&P 2021).

Picking the best of many thresholds on the same scores would overstate the bound. Here the
trials are split: the first half picks the statistic and the threshold, the second half,
independent of that choice, is the only data the reported bound rests on. Each of the two rate
bounds is taken at ``1 - (1 - confidence) / 2``, so that both hold together, and the bound
with them, with probability at least ``confidence`` (a union bound).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from fedmarket.exceptions import InvalidInput
from fedmarket.privacy.accounting import check_delta

SELECTION_CONFIDENCE = 0.95
"""The level the selection half scores thresholds at; fixed, so that the reported bound is
monotone in the requested confidence (any rule that ignores the evaluation half is valid)."""

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class ThresholdBound:
    """The bound and the test it comes from.

    Attributes
    ----------
    statistic : the name of the score picked on the selection half
    threshold : "member" when the score is at least this
    epsilon_lower_bound : from the evaluation half alone, >= 0
    selection_epsilon : the same bound on the selection half (optimistic: it picked the test)
    evaluation_trials : (non-members, members) in the evaluation half
    """

    statistic: str
    threshold: float
    epsilon_lower_bound: float
    selection_epsilon: float
    evaluation_trials: tuple[int, int]


def check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise InvalidInput(f"confidence must lie strictly between 0 and 1, got {confidence}")


def clopper_pearson_upper(failures: int, trials: int, *, confidence: float) -> float:
    """One-sided upper confidence bound at level ``confidence`` on a binomial rate.

    The exact (Clopper-Pearson) bound: ``Beta.ppf(confidence, k + 1, n - k)``, 1 when
    ``k = n``; for ``k = 0`` it is ``1 - (1 - confidence) ** (1 / n)``. Raises
    :class:`InvalidInput` unless ``0 <= failures <= trials`` and ``trials >= 1``.
    """
    if trials < 1 or not 0 <= failures <= trials:
        raise InvalidInput(f"need 0 <= failures <= trials and trials >= 1, got {failures}/{trials}")
    check_confidence(confidence)
    return float(_cp_upper(np.array([failures]), trials, confidence)[0])


def epsilon_from_rates(fpr: float, fnr: float, *, delta: float) -> float:
    """The largest epsilon that rates ``fpr`` and ``fnr`` force on an (epsilon, delta)-DP
    mechanism: ``max(log((1 - delta - fnr) / fpr), log((1 - delta - fpr) / fnr), 0)``.

    A zero rate with a positive numerator gives infinity (only raw rates can be zero).
    Raises :class:`InvalidInput` for rates outside [0, 1] or delta outside (0, 1)."""
    if not (0 <= fpr <= 1 and 0 <= fnr <= 1):
        raise InvalidInput(f"rates must lie in [0, 1], got fpr={fpr}, fnr={fnr}")
    check_delta(delta)
    return float(_epsilon(np.array([fpr]), np.array([fnr]), delta)[0])


def epsilon_at_threshold(
    negatives: ArrayLike, positives: ArrayLike, threshold: float, *, delta: float, confidence: float
) -> float:
    """The bound, valid with probability >= ``confidence``, of the one test "member iff
    score >= ``threshold``" fixed before ``negatives`` (scores without the canary) and
    ``positives`` (with it) were drawn. In nats; 0 when the scores show nothing."""
    neg, pos = _scores(negatives, "negatives"), _scores(positives, "positives")
    check_delta(delta)
    check_confidence(confidence)
    return float(_bounds(neg, pos, np.array([threshold]), delta, confidence)[0][0])


def best_threshold(
    negatives: ArrayLike, positives: ArrayLike, *, delta: float, confidence: float
) -> tuple[float, float]:
    """(threshold, bound) of the best threshold between observed scores: optimistic, since
    the threshold is chosen on the scores it is scored on (use it only to select)."""
    neg, pos = _scores(negatives, "negatives"), _scores(positives, "positives")
    check_delta(delta)
    check_confidence(confidence)
    candidates = _candidates(np.concatenate([neg, pos]))
    bounds, fpr, fnr = _bounds(neg, pos, candidates, delta, confidence)
    # Ties (all 0 when the scores are few) go to the fewest errors, a separating threshold.
    best = int(np.lexsort((fpr + fnr, -bounds))[0])
    return float(candidates[best]), float(bounds[best])


def epsilon_lower_bound(
    scores: Mapping[str, tuple[ArrayLike, ArrayLike]], *, delta: float, confidence: float
) -> ThresholdBound:
    """The audit's bound from ``{statistic: (negatives, positives)}``, one score per trial.

    Trial ``i`` of every statistic must come from the same run. The first ``n // 2`` trials
    of each side select the statistic and threshold (best :func:`best_threshold` at
    :data:`SELECTION_CONFIDENCE`); the rest give the bound (:func:`epsilon_at_threshold`).
    Raises :class:`InvalidInput` for no statistics, fewer than 2 trials a side, or
    statistics with different numbers of trials.
    """
    if not scores:
        raise InvalidInput("no statistics to bound epsilon with")
    check_delta(delta)
    check_confidence(confidence)
    pairs = {
        name: (_scores(neg, f"{name} negatives"), _scores(pos, f"{name} positives"))
        for name, (neg, pos) in scores.items()
    }
    sizes = {(len(neg), len(pos)) for neg, pos in pairs.values()}
    if len(sizes) != 1:
        raise InvalidInput(f"every statistic needs the same trials, got sizes {sorted(sizes)}")
    ((n_neg, n_pos),) = sizes
    if min(n_neg, n_pos) < 2:
        raise InvalidInput(f"need at least 2 trials a side to split, got {n_neg} and {n_pos}")
    cut_neg, cut_pos = n_neg // 2, n_pos // 2
    selected = {
        name: best_threshold(
            neg[:cut_neg], pos[:cut_pos], delta=delta, confidence=SELECTION_CONFIDENCE
        )
        for name, (neg, pos) in pairs.items()
    }
    name = max(selected, key=lambda s: selected[s][1])  # first listed wins a tie
    threshold, selection_epsilon = selected[name]
    neg, pos = pairs[name]
    bound = epsilon_at_threshold(
        neg[cut_neg:], pos[cut_pos:], threshold, delta=delta, confidence=confidence
    )
    return ThresholdBound(
        statistic=name,
        threshold=threshold,
        epsilon_lower_bound=bound,
        selection_epsilon=selection_epsilon,
        evaluation_trials=(n_neg - cut_neg, n_pos - cut_pos),
    )


def _scores(values: ArrayLike, what: str) -> Floats:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise InvalidInput(f"{what}: need a non-empty 1-d array of scores, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInput(f"{what}: scores must be finite")
    return array


def _candidates(values: Floats) -> Floats:
    """Thresholds that split ``values`` every way: midpoints of neighbours and both ends."""
    distinct = np.unique(values)
    middles = distinct[:-1] + (distinct[1:] - distinct[:-1]) / 2
    return np.concatenate([[distinct[0] - 1.0], middles, [distinct[-1] + 1.0]])


def _bounds(
    neg: Floats, pos: Floats, thresholds: Floats, delta: float, confidence: float
) -> tuple[Floats, Floats, Floats]:
    """(bound, FPR upper bound, FNR upper bound) at each threshold (member iff score >=
    threshold)."""
    false_pos = len(neg) - np.searchsorted(np.sort(neg), thresholds, side="left")
    false_neg = np.searchsorted(np.sort(pos), thresholds, side="left")
    level = 1 - (1 - confidence) / 2  # both rate bounds hold together w.p. >= confidence
    fpr = _cp_upper(false_pos, len(neg), level)
    fnr = _cp_upper(false_neg, len(pos), level)
    return _epsilon(fpr, fnr, delta), fpr, fnr


def _cp_upper(failures: NDArray[np.int64], trials: int, level: float) -> Floats:
    below = failures < trials
    k = np.where(below, failures, 0)
    upper = stats.beta.ppf(level, k + 1, np.where(below, trials - k, 1))
    return np.where(below, upper, 1.0).astype(np.float64)


def _epsilon(fpr: Floats, fnr: Floats, delta: float) -> Floats:
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.log((1 - delta - fnr) / fpr)
        other = np.log((1 - delta - fpr) / fnr)
    eps = np.fmax(one, other)  # NaN (a non-positive numerator) says nothing
    return np.where(np.isnan(eps), 0.0, np.maximum(eps, 0.0))
