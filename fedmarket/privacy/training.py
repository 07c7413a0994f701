"""Local DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import wrap_collate_with_empty
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

from fedmarket.data.dataset import Dataset
from fedmarket.models.weights import Weights, get_weights
from fedmarket.privacy.accounting import Spend, calibrate_noise
from fedmarket.privacy.config import DpConfig, TrainConfig
from fedmarket.privacy.randomness import OsPoissonSampler, add_os_noise


@dataclass(frozen=True)
class LocalTrainResult:
    """What one round of local training produced. Only ``weights`` (under DP) leaves the
    device: ``mean_loss`` is computed on the records without noise and stays in its log."""

    weights: Weights
    steps: int
    mean_loss: float


def plan_spend(train: TrainConfig, dp: DpConfig, *, delta: float) -> Spend:
    """The privacy cost of one round, known before training from the public round config:
    ``local_steps`` steps at sample rate ``sample_rate``, never from the device's own count.
    """
    sigma = dp.noise_multiplier
    if sigma is None:
        assert dp.target_epsilon_per_round is not None  # DpConfig guarantees one is set
        sigma = calibrate_noise(
            dp.target_epsilon_per_round,
            delta=delta,
            sample_rate=train.sample_rate,
            steps=train.local_steps,
        )
    return Spend(noise_multiplier=sigma, sample_rate=train.sample_rate, steps=train.local_steps)


def train_private(
    model: nn.Module,
    data: Dataset,
    train: TrainConfig,
    dp: DpConfig,
    spend: Spend,
    *,
    seed: int,
) -> LocalTrainResult:
    """Run ``spend.steps`` DP-SGD steps on ``model`` (in place) and return its new weights.

    The Poisson sampling and the noise draw from the OS's CSPRNG
    (:mod:`fedmarket.privacy.randomness`), never from ``seed`` (anyone who knows it would know
    which records each step used); ``seed`` fixes only the torch state that the model's
    layers may use. The sampler runs exactly ``spend.steps`` steps at rate
    ``spend.sample_rate``, the numbers the ledger charged, and each step divides the noisy sum
    of clipped gradients by the public ``train.batch_size`` (not by the private n * q). A
    device without records takes the same steps on empty batches (noise only): whether it
    trains must not depend on its records.
    """
    torch.manual_seed(seed)
    start = [p.detach().clone() for p in model.parameters()]
    features, labels = torch.from_numpy(data.features), torch.from_numpy(data.labels)
    sampler = OsPoissonSampler(
        num_samples=len(data),
        sample_rate=spend.sample_rate,
        steps=spend.steps,
    )
    loader = DataLoader(
        TensorDataset(features, labels),
        batch_sampler=sampler,
        collate_fn=wrap_collate_with_empty(
            collate_fn=default_collate,
            sample_empty_shapes=[(0, *features.shape[1:]), (0,)],
            dtypes=[features.dtype, labels.dtype],
        ),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=train.learning_rate, momentum=train.momentum)
    criterion = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off: its noise is off too (add_os_noise adds it).
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant="prv")  # its accountant is unused: the ledger counts
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            criterion=criterion,
            noise_multiplier=0.0,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # the loader already samples: OsPoissonSampler
            grad_sample_mode=dp.grad_sample_mode,
        )
    if dp.grad_sample_mode == "ghost":
        private_model, private_opt, private_loss, private_loader = wrapped
    else:
        private_model, private_opt, private_loader = wrapped
        private_loss = criterion
    # Opacus divides by n * q (floored: 0 for one record a step, hence NaN): a public
    # constant instead, so the update's scale does not reveal the device's count.
    private_opt.expected_batch_size = train.batch_size
    add_os_noise(private_opt, spend.noise_multiplier)
    steps, losses = 0, []
    private_model.train()
    for features, labels in private_loader:
        # An empty Poisson batch still runs: the step must add noise all the same.
        private_opt.zero_grad()
        loss = private_loss(private_model(features), labels)
        with warnings.catch_warnings():
            # Opacus's hooks on the first layer fire on outputs only: harmless.
            warnings.filterwarnings("ignore", "Full backward hook is firing")
            loss.backward()
        if len(labels):
            losses.append(float(loss.detach()))
        private_opt.step()
        if train.proximal_mu > 0:
            _proximal_step(model, start, train.learning_rate * train.proximal_mu)
        steps += 1
    if steps != spend.steps:
        raise RuntimeError(f"took {steps} DP-SGD steps, the ledger reserved {spend.steps}")
    plain = private_model._module if hasattr(private_model, "_module") else private_model
    return LocalTrainResult(
        weights=get_weights(plain),
        steps=steps,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
    )


@torch.no_grad()
def _proximal_step(model: nn.Module, start: list[torch.Tensor], rate: float) -> None:
    """FedProx's proximal gradient mu * (w - w_global), applied after the private step.

    It depends only on the weights, not on data, so applying it outside Opacus is
    post-processing and costs no privacy.
    """
    for param, anchor in zip(model.parameters(), start, strict=True):
        param.sub_(rate * (param - anchor))


def train_plain(
    model: nn.Module, data: Dataset, train: TrainConfig, *, seed: int
) -> LocalTrainResult:
    """Non-private SGD: ``local_steps`` shuffled batches of ``batch_size`` (reshuffled each
    pass over the data), the baseline DP is compared against."""
    if len(data) < 1:  # nothing to learn from; no privacy to keep either (no DP here)
        return LocalTrainResult(get_weights(model), 0, float("nan"))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(data.features), torch.from_numpy(data.labels)),
        batch_size=train.batch_size,
        shuffle=True,
        generator=generator,
    )
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=train.learning_rate, momentum=train.momentum)
    losses: list[float] = []
    model.train()
    while len(losses) < train.local_steps:
        for features, labels in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(features), labels)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves backward untyped
            optimizer.step()
            if train.proximal_mu > 0:
                _proximal_step(model, start, train.learning_rate * train.proximal_mu)
            losses.append(float(loss.detach()))
            if len(losses) == train.local_steps:
                break
    return LocalTrainResult(get_weights(model), len(losses), float(np.mean(losses)))
