import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.data import dirichlet_partition, iid_partition
from fedmarket.exceptions import InvalidInput, PartitionError


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    merged = np.concatenate(parts)
    assert len(merged) == n
    assert np.array_equal(np.sort(merged), np.arange(n))


@given(n=st.integers(1, 500), parts=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_iid_assigns_every_sample_exactly_once(n: int, parts: int, seed: int) -> None:
    if parts > n:
        with pytest.raises(PartitionError):
            iid_partition(n, parts, seed=seed)
        return
    split = iid_partition(n, parts, seed=seed)
    assert_exact_cover(split, n)
    assert max(map(len, split)) - min(map(len, split)) <= 1


@settings(max_examples=40, deadline=None)
@given(
    classes=st.integers(2, 10),
    per_class=st.integers(20, 60),
    parts=st.integers(1, 8),
    alpha=st.floats(0.1, 100),
    seed=st.integers(0, 2**31),
)
def test_dirichlet_assigns_every_sample_exactly_once(
    classes: int, per_class: int, parts: int, alpha: float, seed: int
) -> None:
    labels = np.repeat(np.arange(classes), per_class)
    split = dirichlet_partition(labels, parts, alpha=alpha, seed=seed, min_size=1)
    assert_exact_cover(split, len(labels))


def test_same_seed_same_split_and_other_seed_differs() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = dirichlet_partition(labels, 5, alpha=0.5, seed=7)
    b = dirichlet_partition(labels, 5, alpha=0.5, seed=7)
    c = dirichlet_partition(labels, 5, alpha=0.5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    labels = np.repeat(np.arange(10), 100)

    def mean_classes_held(alpha: float) -> float:
        split = dirichlet_partition(labels, 10, alpha=alpha, seed=0, min_size=1)
        return float(np.mean([len(np.unique(labels[p])) for p in split]))

    assert mean_classes_held(0.1) < mean_classes_held(100.0)


def test_impossible_splits_are_refused_with_the_rule() -> None:
    labels = np.repeat(np.arange(10), 3)  # 30 samples
    with pytest.raises(PartitionError, match="at most 3 devices"):
        dirichlet_partition(labels, 4, alpha=0.5, seed=0, min_size=10)
    with pytest.raises(PartitionError, match="larger alpha"):
        # One class, two devices needing exactly 10 each: Dirichlet(0.001) shares are ~(1, 0).
        dirichlet_partition(np.zeros(20, dtype=np.int64), 2, alpha=0.001, seed=0, min_size=10)
    with pytest.raises(InvalidInput, match="alpha must be > 0"):
        dirichlet_partition(labels, 2, alpha=0.0, seed=0)
