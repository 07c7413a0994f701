"""DP-SGD's sampling and noise come from the OS CSPRNG: nobody who knows the device, the round,
the seed or the data can replay them (issue 15: the Poisson subsample was predictable)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import pytest
import torch
from scipy import stats

import fedmarket.privacy.training as training
from fedmarket.data import Dataset
from fedmarket.models import build_model, get_weights
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.privacy.accounting import Spend
from fedmarket.privacy.randomness import OsPoissonSampler, os_gaussian, os_uniform
from fedmarket.privacy.training import plan_spend, train_private


def dataset(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    features = rng.random((n, 1, 8, 8), dtype=np.float32)
    return Dataset(features, np.arange(n) % 4, ("a", "b", "c", "d"), "t")


class RecordingSampler(OsPoissonSampler):
    """The product's sampler, keeping the batches it drew."""

    drawn: ClassVar[list[list[list[int]]]] = []

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(super().__iter__())
        RecordingSampler.drawn.append(batches)
        yield from batches


def batches_of_two_runs(
    monkeypatch: pytest.MonkeyPatch, n: int, batch: int
) -> list[list[list[int]]]:
    monkeypatch.setattr(training, "OsPoissonSampler", RecordingSampler)
    RecordingSampler.drawn = []
    train = TrainConfig(sample_rate=batch / n, local_steps=math.ceil(n / batch), batch_size=batch)
    data, dp = dataset(n), DpConfig(noise_multiplier=1.0)
    spend = plan_spend(train, dp, delta=1e-5)
    for _ in range(2):  # same device, round, seed and data
        model = build_model("mlp", (1, 8, 8), 4, seed=0)
        train_private(model, data, train, dp, spend, seed=1234)
    return RecordingSampler.drawn


def test_two_runs_with_the_same_seed_sample_different_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = batches_of_two_runs(monkeypatch, n=48, batch=8)

    assert len(first) == len(second) == 6  # the round config's steps, as the ledger charged
    assert first != second


def test_replaying_the_public_values_does_not_predict_the_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the old device did, and an attacker could replay: torch's RNG seeded with the
    round seed, Opacus's sampler drawing from it."""
    (drawn, _) = batches_of_two_runs(monkeypatch, n=48, batch=8)
    torch.manual_seed(1234)
    replay = [(torch.rand(48) < 1 / 6).nonzero().reshape(-1).tolist() for _ in range(len(drawn))]

    assert drawn != replay


def test_sampling_is_poisson_at_the_charged_rate() -> None:
    """Every record joins every step independently with probability q: 60,000 draws."""
    sampler = OsPoissonSampler(num_samples=600, sample_rate=0.1, steps=100)

    batches = list(sampler)

    joined = np.zeros((100, 600), dtype=bool)
    for step, batch in enumerate(batches):
        joined[step, batch] = True
    assert len(batches) == 100
    assert stats.binomtest(int(joined.sum()), 60_000, 0.1).pvalue > 1e-4
    # per record, its count over the steps is Binomial(100, 0.1): variance 9 (SE about 0.5)
    assert joined.sum(axis=0).var() == pytest.approx(9.0, abs=2.5)
    # and a step's draw says nothing of the next one's
    assert abs(np.corrcoef(joined[:-1].ravel(), joined[1:].ravel())[0, 1]) < 0.02


def test_noise_is_gaussian_with_the_given_deviation() -> None:
    noise = os_gaussian(200_000, std=3.0)

    assert abs(noise.mean()) < 5 * 3.0 / math.sqrt(200_000)
    assert noise.std() == pytest.approx(3.0, rel=0.01)
    assert stats.kstest(noise / 3.0, "norm").pvalue > 1e-4


def test_uniforms_are_in_the_open_closed_unit_interval() -> None:
    draws = os_uniform(100_000)

    assert draws.min() > 0
    assert draws.max() <= 1
    assert stats.kstest(draws, "uniform").pvalue > 1e-4


@pytest.mark.parametrize(("n", "batch"), [(93 * 4, 4), (99 * 2 - 1, 2), (49, 1)])
def test_the_step_counts_opacus_missed_train_exactly_as_charged(n: int, batch: int) -> None:
    """ceil(n / batch) in {93, 99} made Opacus run one step fewer than the ledger reserved, and
    batch size 1 floored its expected batch to 0 (NaN updates)."""
    steps = math.ceil(n / batch)
    train = TrainConfig(sample_rate=1 / steps, local_steps=steps, batch_size=batch)
    data, dp = dataset(n), DpConfig(noise_multiplier=1.0)
    spend = plan_spend(train, dp, delta=1e-5)
    model = build_model("mlp", (1, 8, 8), 4, seed=0)

    result = train_private(model, data, train, dp, spend, seed=0)

    assert result.steps == spend.steps == math.ceil(n / batch)
    assert all(np.isfinite(w).all() for w in result.weights.values())


def test_the_update_carries_the_charged_noise() -> None:
    """One step at sigma = 1000 on a model: the update is almost all noise, with standard
    deviation lr * sigma * C / batch_size per coordinate, as the Gaussian mechanism charged."""
    n, lr, clip, sigma = 40, 0.1, 1.0, 1000.0
    data = dataset(n)
    train = TrainConfig(sample_rate=1.0, local_steps=1, batch_size=n, learning_rate=lr)
    dp = DpConfig(noise_multiplier=sigma, max_grad_norm=clip)
    spend = Spend(noise_multiplier=sigma, sample_rate=1.0, steps=1)
    model = build_model("mlp", (1, 8, 8), 4, seed=0)
    before = get_weights(model)

    result = train_private(model, data, train, dp, spend, seed=0)

    change = np.concatenate([(result.weights[k] - before[k]).ravel() for k in before])
    assert change.std() == pytest.approx(lr * sigma * clip / n, rel=0.05)
