"""Fixed-point encoding of deltas into uint32 vectors whose sum never wraps.

A device encodes each coordinate of its delta d as x = clip(d, -c, c), then
q = round((x + c) * L / 2c) in [0, L] with L = 2^bits - 1; one last word carries the share of
its coordinates that the clip changed, encoded the same way on [0, 1]. Every update weighs
the same (no example count travels: it is private), so the sum over m devices decodes to
sum(clip(d)) with an error of at most m * c / L per coordinate (:func:`error_bound`): each
rounding is off by at most half a step, c / L. The clipped share is a function of the
(DP-noised) delta, and only its sum over the cohort is ever revealed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedmarket.exceptions import InvalidInput, SecAggAborted
from fedmarket.models.weights import Weights
from fedmarket.secagg.config import RoundParams

Vector = NDArray[np.uint32]
_BLOCK = 1 << 14


@dataclass(frozen=True)
class Encoded:
    """One device's quantized contribution (``values``: the delta's coordinates, then the
    clipped share) and the share of its coordinates that were clipped."""

    values: Vector
    clip_fraction: float


@dataclass(frozen=True)
class Decoded:
    """The unmasked sum of ``survivors`` encodings."""

    delta_sum: NDArray[np.float64]  # sum of clip(d), per coordinate
    clip_fraction: float  # mean share of clipped coordinates over the survivors


def encode(delta: NDArray[np.floating], params: RoundParams) -> Encoded:
    """Quantize ``delta`` (a flat vector) for the secure sum.

    Raises
    ------
    InvalidInput
        if ``delta`` is not flat or holds NaN or infinity.
    """
    if delta.ndim != 1:
        raise InvalidInput("secagg encode: delta must be a flat vector")
    c = params.clip_range
    scale = params.levels / (2 * c)
    b = c * scale + 0.5  # + 0.5: the cast floors
    values = np.empty(delta.size + 1, dtype=np.uint32)
    work = np.empty(min(delta.size, _BLOCK), dtype=np.float64)
    clipped = 0
    for start in range(0, delta.size, _BLOCK):  # block by block, so that it stays in cache
        block = delta[start : start + _BLOCK]
        if not np.isfinite(block).all():  # before clipping, which would hide ±inf
            raise InvalidInput("secagg encode: delta contains NaN or infinity")
        x = work[: block.size]
        np.clip(block, -c, c, out=x)
        clipped += block.size - int(np.count_nonzero(x == block))
        x *= scale
        x += b
        values[start : start + block.size] = x
    clip_fraction = clipped / max(delta.size, 1)
    values[-1] = round(clip_fraction * params.levels)
    return Encoded(values=values, clip_fraction=clip_fraction)


def decode(total: Vector, survivors: int, params: RoundParams) -> Decoded:
    """Turn the unmasked sum of ``survivors`` encodings into sum(clip(d)) and the mean share
    of clipped coordinates.

    Raises
    ------
    SecAggAborted
        if a word exceeds ``survivors * levels``, the most honest encodings can sum to: some
        device uploaded out-of-range words (a word shifted by 2^31 always lands there, since
        the headroom bit keeps honest sums below 2^31), so the sum is not used.
    """
    if survivors < 1:
        raise SecAggAborted("no survivors to decode")
    ceiling = survivors * params.levels
    over = int(np.count_nonzero(total > ceiling))
    if over:
        raise SecAggAborted(
            f"{over} of {total.size} aggregate words exceed the {survivors} survivors' range: "
            "a device uploaded out-of-range values; the round's sum is discarded"
        )
    c = params.clip_range
    x = total[:-1].astype(np.float64) * (2 * c / params.levels) - survivors * c
    return Decoded(delta_sum=x, clip_fraction=float(total[-1]) / params.levels / survivors)


def error_bound(params: RoundParams, survivors: int) -> float:
    """The largest possible |decoded - exact| of one coordinate of sum(clip(d))."""
    return survivors * params.clip_range / params.levels


def flatten(weights: Mapping[str, NDArray[np.float32]]) -> NDArray[np.float32]:
    """All tensors, in sorted name order, as one vector (the order both sides agree on)."""
    return np.concatenate([weights[name].ravel() for name in sorted(weights)])


def unflatten(vector: NDArray[np.floating], like: Mapping[str, NDArray[np.float32]]) -> Weights:
    """Split ``vector`` back into tensors named and shaped like ``like``, as float32."""
    expected = sum(a.size for a in like.values())
    if vector.shape != (expected,):
        raise InvalidInput(f"vector of {vector.size} values, the model has {expected}")
    out: Weights = {}
    offset = 0
    for name in sorted(like):
        size = like[name].size
        out[name] = vector[offset : offset + size].reshape(like[name].shape).astype(np.float32)
        offset += size
    return out
