"""Fixed-point encoding of weighted deltas into uint32 vectors whose sum never wraps.

A device with weight w (examples, capped at W = ``max_weight``) and delta d encodes each
coordinate as x = clip(d, -c, c) * w / W, which lies in [-c, c], then q = round((x + c) * L / 2c)
in [0, L] with L = 2^bits - 1; the last coordinate carries w itself. The sum over m devices
decodes to sum(w * clip(d)) with an error of at most m * W * c / L per coordinate
(:func:`error_bound`): each rounding is off by at most half a step, c / L.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedmarket.exceptions import InvalidInput
from fedmarket.models.weights import Weights
from fedmarket.secagg.config import RoundParams

Vector = NDArray[np.uint32]
_BLOCK = 1 << 14


@dataclass(frozen=True)
class Encoded:
    """One device's quantized contribution and the share of its coordinates that were clipped."""

    values: Vector
    weight: int
    clip_fraction: float


def encode(delta: NDArray[np.floating], num_examples: int, params: RoundParams) -> Encoded:
    if delta.ndim != 1:
        raise InvalidInput("secagg encode: delta must be a flat vector")
    if num_examples < 1:
        raise InvalidInput(f"secagg encode: weight must be >= 1, got {num_examples}")
    c = params.clip_range
    weight = min(int(num_examples), params.max_weight)
    scale = params.levels / (2 * c)
    a, b = scale * weight / params.max_weight, c * scale + 0.5  # + 0.5: the cast floors
    values = np.empty(delta.size + 1, dtype=np.uint32)
    work = np.empty(min(delta.size, _BLOCK), dtype=np.float64)
    clipped = 0
    for start in range(0, delta.size, _BLOCK):  # block by block, so that it stays in cache
        block = delta[start : start + _BLOCK]
        x = work[: block.size]
        np.clip(block, -c, c, out=x)
        if not np.isfinite(x).all():
            raise InvalidInput("secagg encode: delta contains NaN or infinity")
        clipped += block.size - int(np.count_nonzero(x == block))
        x *= a
        x += b
        values[start : start + block.size] = x
    values[-1] = weight
    return Encoded(values=values, weight=weight, clip_fraction=clipped / max(delta.size, 1))


def decode(total: Vector, survivors: int, params: RoundParams) -> tuple[NDArray[np.float64], int]:
    """Turn the unmasked sum of ``survivors`` encodings into (sum of w * clip(d), sum of w)."""
    c = params.clip_range
    x = total[:-1].astype(np.float64) * (2 * c / params.levels) - survivors * c
    return x * params.max_weight, int(total[-1])


def error_bound(params: RoundParams, survivors: int) -> float:
    """The largest possible |decoded - exact| of one coordinate of sum(w * clip(d))."""
    return survivors * params.max_weight * params.clip_range / params.levels


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
