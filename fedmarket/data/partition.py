"""Split a data set across devices: IID or Dirichlet(alpha) label skew, seeded."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from fedmarket.exceptions import InvalidInput, PartitionError

Partition = list[NDArray[np.int64]]
"""One array of sample indices per device."""

_DIRICHLET_ATTEMPTS = 1000


def iid_partition(num_samples: int, num_parts: int, *, seed: int) -> Partition:
    """Shuffle and deal samples into ``num_parts`` near-equal parts."""
    _check_counts(num_samples, num_parts, min_size=1)
    order = np.random.default_rng(seed).permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def dirichlet_partition(
    labels: NDArray[np.int64], num_parts: int, *, alpha: float, seed: int, min_size: int = 10
) -> Partition:
    """Label-skewed split: each class is spread over devices in Dirichlet(alpha) proportions.

    Smaller ``alpha`` gives more skew. Draws are repeated until every device holds at least
    ``min_size`` samples; if that keeps failing the split is refused rather than weakened.
    """
    if not alpha > 0:
        raise InvalidInput(f"Dirichlet alpha must be > 0, got {alpha}")
    if min_size < 1:
        raise InvalidInput(f"min_size must be >= 1, got {min_size}")
    _check_counts(len(labels), num_parts, min_size=min_size)
    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(_DIRICHLET_ATTEMPTS):
        parts: list[list[NDArray[np.int64]]] = [[] for _ in range(num_parts)]
        for indices in class_indices:
            shuffled = rng.permutation(indices)
            shares = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(int)
            for device, chunk in enumerate(np.split(shuffled, cuts)):
                parts[device].append(chunk)
        merged = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise PartitionError(
        f"could not give each of {num_parts} devices at least {min_size} samples with "
        f"Dirichlet alpha={alpha} in {_DIRICHLET_ATTEMPTS} draws; use fewer devices, "
        f"a larger alpha, or a smaller minimum"
    )


def _check_counts(num_samples: int, num_parts: int, *, min_size: int) -> None:
    if num_parts < 1:
        raise InvalidInput(f"number of devices must be >= 1, got {num_parts}")
    if num_parts * min_size > num_samples:
        raise PartitionError(
            f"{num_samples} samples cannot give {num_parts} devices at least {min_size} "
            f"sample(s) each; use at most {num_samples // min_size} devices"
        )
