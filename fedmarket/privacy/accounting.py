"""Epsilon from a DP-SGD history, computed with Opacus's accountants."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from fedmarket.exceptions import InvalidInput
from fedmarket.privacy.config import AccountantKind

# PRV's cost grows with the privacy loss it must cover, with the number of distinct (sigma, q)
# parts it composes and with their steps (measured here, beyond ~330 MB of imports: RDP 20 with
# 3 parts of 1,666 steps 0.9 s and 170 MB; RDP 25 2.8 s and 360 MB; RDP 32,000 asked for 2.4 GB;
# 8 parts of 200 steps 9.4 s and 500 MB; one part of 10^6 steps at q 1e-6 exhausted 4 GB).
# Beyond any of these limits the ledger reports the RDP bound itself: an upper bound on
# epsilon, found in 12-190 ms per distinct (sigma, q), only looser (by 6-62 % in four cases
# measured: RDP 20.2 vs PRV 19.0 at sigma 10, q 0.33; 2.01 vs 1.24 at sigma 0.7, q 0.001).
PRV_RDP_LIMIT = 20.0
PRV_MAX_PARTS = 3
PRV_MAX_STEPS = 5_000
PRV_FINEST_ERROR = 1e-3  # 1,000 steps: 0.4 s, 120 MB; 5,000: 1.5 s, 260 MB
PRV_FINE_STEPS = 1_000
MAX_PARTS = 16  # the most (sigma, q) parts any accountant composes; see compact()
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS

# What every epsilon here protects: sample-level DP-SGD on each device, so the unit is one
# record on one device, and neighbouring data sets differ by adding or removing that record.
PRIVACY_UNIT = "one record on one device"
ADJACENCY = "add/remove one record"


@dataclass(frozen=True)
class Spend:
    """One round of DP-SGD: ``steps`` Poisson-sampled steps at ``sample_rate`` and ``sigma``."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise InvalidInput(
                f"noise_multiplier must be > 0 for accounting, got {self.noise_multiplier}"
            )
        if not 0 < self.sample_rate <= 1:
            raise InvalidInput(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise InvalidInput(f"steps must be >= 1, got {self.steps}")


def check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise InvalidInput(f"delta must lie strictly between 0 and 1, got {delta}")


def compact(history: Sequence[Spend]) -> tuple[tuple[float, float, int], ...]:
    """(sigma, q, steps) parts whose composition bounds ``history``'s from above.

    Steps are summed per distinct (sigma, q): composition commutes, so rounds of two tasks
    that interleave cost one part each. RDP costs 12-190 ms per distinct part (300: 36 s),
    so past :data:`MAX_PARTS` distinct pairs sigma is rounded down and q up onto the finest
    geometric grid (ratio 1.02, 1.02^2, ...) that leaves at most :data:`MAX_PARTS`: an upper
    bound, since the subsampled Gaussian's privacy loss falls with sigma and grows with q
    (Mironov et al. 2019). 30 honest rounds with 30 calibrated sigmas and 4 sample rates came
    out 12-21 % above their exact RDP."""
    parts, ratio = _grouped(history, ratio=1.0), 1.0
    while len(parts) > MAX_PARTS:  # the finest grid that leaves at most MAX_PARTS parts
        ratio *= 1.02
        parts = _grouped(history, ratio)
    return parts


def _grouped(history: Sequence[Spend], ratio: float) -> tuple[tuple[float, float, int], ...]:
    steps: dict[tuple[float, float], int] = {}
    for spend in history:
        sigma, q = spend.noise_multiplier, spend.sample_rate
        if ratio > 1:
            sigma, q = _grid_below(sigma, ratio), min(1.0, _grid_above(q, ratio))
        steps[(sigma, q)] = steps.get((sigma, q), 0) + spend.steps
    return tuple(sorted((sigma, q, n) for (sigma, q), n in steps.items()))


def _grid_below(value: float, ratio: float) -> float:
    point = ratio ** math.floor(math.log(value, ratio))
    return point if point <= value else point / ratio  # never above: a float may round up


def _grid_above(value: float, ratio: float) -> float:
    point = ratio ** math.ceil(math.log(value, ratio))
    return point if point >= value else point * ratio


def epsilon(history: Sequence[Spend], *, delta: float, accountant: AccountantKind) -> float:
    """epsilon(delta) of the composition of ``history``; 0 for an empty history.

    With ``"prv"`` (Gopi et al. 2021) the RDP bound is computed first (cheap, bounded memory),
    and PRV runs only where that bound is at most :data:`PRV_RDP_LIMIT`, the history has at
    most :data:`PRV_MAX_PARTS` distinct (sigma, q) and :data:`PRV_MAX_STEPS` steps; elsewhere
    the RDP bound is returned: still an upper bound, only looser. So judging any round config
    takes bounded time and memory. PRV's own error (Opacus's ``eps_error``, absolute, default
    0.01: 1.5 % at epsilon 0.7, 7 % at 0.15) is brought to 0.3 % of epsilon, but no finer than
    :data:`PRV_FINEST_ERROR`, by a second pass where the history has at most
    :data:`PRV_FINE_STEPS` steps (its cost grows as 1 / error: 1e-4 took 13 s and 2.8 GB at
    5,000 steps); so PRV stays within 1 % or 0.002 of the exact PLD epsilon (checked against
    Google's dp-accounting in tests/test_epsilon_parity.py)."""
    check_delta(delta)
    merged = compact(history)
    bound = _epsilon(merged, delta, "rdp")
    if accountant == "rdp" or not _prv_affordable(merged, bound):
        return bound
    first = _epsilon(merged, delta, "prv")
    wanted = max(PRV_FINEST_ERROR, 0.003 * first)
    steps = sum(n for _, _, n in merged)
    if wanted >= 0.01 or steps > PRV_FINE_STEPS:
        return first
    return _epsilon(merged, delta, "prv", eps_error=wanted)


def _prv_affordable(history: tuple[tuple[float, float, int], ...], rdp_bound: float) -> bool:
    return (
        rdp_bound <= PRV_RDP_LIMIT
        and len(history) <= PRV_MAX_PARTS
        and sum(steps for _, _, steps in history) <= PRV_MAX_STEPS
    )


@functools.lru_cache(maxsize=4096)
def _epsilon(
    history: tuple[tuple[float, float, int], ...],
    delta: float,
    accountant: AccountantKind,
    *,
    eps_error: float | None = None,
) -> float:
    if not history:
        return 0.0
    if accountant == "rdp":  # Opacus's RDPAccountant.get_epsilon, with each part cached
        rdp = sum(np.asarray(_rdp_per_step(sigma, q)) * steps for sigma, q, steps in history)
        eps, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
        return float(eps)
    acct = create_accountant(mechanism=accountant)
    acct.history = list(history)
    if eps_error is None:
        return float(acct.get_epsilon(delta=delta))
    return float(acct.get_epsilon(delta=delta, eps_error=eps_error))


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sigma: float, q: float) -> tuple[float, ...]:
    """One step's RDP at every order (Mironov et al. 2019): 12-190 ms a pair, composed by
    multiplying by the steps, so a history pays for each distinct (sigma, q) once."""
    return tuple(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=RDP_ORDERS))


def calibrate_noise(
    target_epsilon: float,
    *,
    delta: float,
    sample_rate: float,
    steps: int,
) -> float:
    """The sigma at which ``steps`` steps at ``sample_rate`` cost at most ``target_epsilon``.

    The search runs on the RDP bound whatever accountant the ledger uses (PRV's cost is
    unbounded in a server's choice of target and steps: a target of 100 took 20 s and 1.9 GB),
    so the sigma is at least the one PRV would choose and the round costs at most the target.
    """
    check_delta(delta)
    try:
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
            # within 0.1 % of the target below it (Opacus's fixed 0.01 made a target of 1000
            # take 2 s of bisection)
            epsilon_tolerance=max(0.01, 1e-3 * target_epsilon),
        )
    except ValueError:  # Opacus: "The privacy budget is too low."
        raise InvalidInput(
            f"round config: a per-round epsilon target of {target_epsilon:g} at delta "
            f"{delta:g} is below what the RDP accountant can certify for {steps} steps at "
            f"sample rate {sample_rate:g}; raise dp.target_epsilon_per_round or set "
            "dp.noise_multiplier"
        ) from None
    return float(sigma)
