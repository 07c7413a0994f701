"""The in-memory data set every loader returns."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedmarket.exceptions import DataError
from fedmarket.types import DatasetId


@dataclass(frozen=True)
class Dataset:
    """Features and integer labels.

    Attributes
    ----------
    features : float32 array, shape ``(n, ...)``
    labels : int64 array, shape ``(n,)``, values in ``[0, len(classes))``
    classes : original label names, indexed by label
    name : short description for reports
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"{self.name}: {self.features.shape[0]} feature rows but "
                f"{self.labels.shape[0]} labels; they must match"
            )
        if self.labels.ndim != 1:
            raise DataError(f"{self.name}: labels must be one-dimensional")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"{self.name}: labels must lie in [0, {len(self.classes)})")
        if not np.isfinite(self.features).all():
            raise DataError(f"{self.name}: features contain NaN or infinity")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.features.shape[1:])

    def subset(self, indices: NDArray[np.int64], name: str | None = None) -> Dataset:
        """Rows ``indices`` as a new data set with the same classes."""
        return Dataset(
            features=self.features[indices],
            labels=self.labels[indices],
            classes=self.classes,
            name=name or self.name,
        )

    @functools.cached_property
    def _digest(self) -> str:
        # Cached: the ledger asks every round, and hashing a large data set is not free.
        # One sha256 per record, sorted: the order of the records does not change the name.
        rows = sorted(
            hashlib.sha256(np.ascontiguousarray(x).tobytes() + int(y).to_bytes(8, "big")).digest()
            for x, y in zip(self.features, self.labels, strict=True)
        )
        digest = hashlib.sha256(repr((self.features.shape, self.classes)).encode())
        for row in rows:
            digest.update(row)
        return digest.hexdigest()

    def fingerprint(self) -> DatasetId:
        """sha256 over the shapes, the class names and the sorted per-record sha256 of
        features and label: names a device's data in its ledger, whatever the records' order.
        """
        return DatasetId(self._digest)


def encode_labels(raw: NDArray[np.generic], name: str) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Map arbitrary label values to ``0..k-1`` in sorted order of their text."""
    if raw.size == 0:
        raise DataError(f"{name}: no samples")
    text = np.asarray([str(v) for v in raw.tolist()])
    classes, labels = np.unique(text, return_inverse=True)
    return labels.astype(np.int64), tuple(str(c) for c in classes)
