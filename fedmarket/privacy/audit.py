"""An empirical privacy audit of one device's local round: membership inference on a canary.

What is audited is what an aggregator without secure aggregation sees of one device: the
update ``trained weights - start weights`` of one local round. The audit runs ``T`` rounds on
the device's data ``D`` and ``T`` on ``D`` plus a planted record (the canary), from the same
starting model, each with fresh OS randomness, scores every update, and bounds epsilon from
below with :mod:`fedmarket.privacy.audit_bound` (Jagielski, Ullman & Oprea, NeurIPS 2020;
Nasr et al., "Adversary Instantiation", S&P 2021).

A lower bound can show that the accounting is wrong (the bound exceeds the accounted epsilon),
never that it is right. It is expected to lie well below the accounted epsilon: the accountant
assumes every step's noisy gradient is released, the audit sees only the round's end, and
``T`` trials cannot show more than about ``log(T)``.

The canary is a ClipBKD-style record (Jagielski et al.): the quarter of the features with
the least variance in ``D`` set to the data's extreme value, the other features at their
minimum in ``D`` (a black image with bright pixels where the digits have none), labelled with
the rarest class of ``D``. Its gradient points where other records' gradients barely do, so
they add little variance to the scores. Measured on the demo's device 0 under DP (300 trials a
side, loss statistic) its AUC was 0.68; a blank image's 0.66 (within noise), a constant
image's 0.58, the same pixels on the mean image 0.62 (a mislabelled real digit: 0.55 at 100
trials). Without DP its gradient statistic reached 0.99, the blank image's 0.70.

Two scores per trial, larger meaning "the canary was in":

- ``gradient``: ``-<update, g>``, with ``g`` the canary's clipped gradient at the start
  weights: the linear test that is optimal for a mean shift along ``g`` in isotropic Gaussian
  noise, which is what the canary adds to each DP-SGD step it is sampled in.
- ``loss``: the drop of the canary's loss over the round. It equals ``-<update, g_avg>`` with
  ``g_avg`` the canary's gradient averaged along the update (fundamental theorem of calculus):
  the same test without the first-order approximation, better when a round moves the weights
  far (the demo's learning rate 2.5 under DP).

Which one is used, and its threshold, is picked on the first half of the trials; the bound
and the AUC come from the second half only.
"""

from __future__ import annotations

import copy
import math
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score
from torch import nn

from fedmarket.data.dataset import Dataset
from fedmarket.exceptions import InvalidInput
from fedmarket.models.weights import Weights, get_weights, set_weights
from fedmarket.privacy.accounting import Spend, check_delta, epsilon
from fedmarket.privacy.audit_bound import (
    check_confidence,
    epsilon_at_threshold,
    epsilon_lower_bound,
)
from fedmarket.privacy.config import AccountantKind, DpConfig, TrainConfig
from fedmarket.privacy.training import plan_spend, train_plain, train_private

if TYPE_CHECKING:
    from fedmarket.config import TaskConfig

Statistic = Literal["gradient", "loss"]
STATISTICS: tuple[Statistic, ...] = ("gradient", "loss")
TrialHook = Callable[[int], None]
"""Called with the number of trials done (both sides), for progress bars."""


@dataclass(frozen=True)
class Canary:
    """The planted record: ``features`` of the data's feature shape, an integer ``label``,
    and how many features (``planted``) were set to the extreme value."""

    features: NDArray[np.float32]
    label: int
    planted: int


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """What was audited. ``noise_multiplier``, ``sample_rate``, ``steps`` and
    ``max_grad_norm`` are None without DP; ``sample_rate`` and ``steps`` are those of the
    round on ``D`` plus the canary."""

    private: bool
    examples: int
    canary_label: int
    canary_features: int
    learning_rate: float
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    max_grad_norm: float | None
    delta: float
    accountant: AccountantKind


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """The audit's outcome.

    Attributes
    ----------
    trials : rounds run on each of ``D`` and ``D`` plus the canary
    auc : ROC AUC of the chosen statistic on the evaluation half (0.5: no signal)
    epsilon_lower_bound : nats, >= 0; holds with probability >= ``confidence``
    confidence : of the lower bound
    accounted_epsilon : the ledger's epsilon for this one round at ``settings.delta``;
        None without DP (the round config alone fixes it: ``D`` and ``D`` plus the canary run
        the same round)
    reachable : the largest bound these trials could show (the canary always found): an
        accounting error smaller than ``accounted_epsilon`` - ``reachable`` goes unseen
    statistic, threshold : the test the bound comes from (member iff score >= threshold)
    settings : what was audited
    """

    trials: int
    auc: float
    epsilon_lower_bound: float
    confidence: float
    accounted_epsilon: float | None
    reachable: float
    statistic: Statistic
    threshold: float
    settings: AuditSettings

    @property
    def exceeds_accounting(self) -> bool:
        """True when the lower bound is above the accounted epsilon: the accounting (or the
        implementation it describes) is wrong, with probability >= ``confidence``."""
        return self.accounted_epsilon is not None and (
            self.epsilon_lower_bound > self.accounted_epsilon
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "exceeds_accounting": self.exceeds_accounting}


def make_canary(data: Dataset) -> Canary:
    """The ClipBKD-style canary for ``data`` (see the module's docstring).

    Raises :class:`InvalidInput` for an empty data set."""
    if len(data) == 0:
        raise InvalidInput(f"{data.name}: no records to plant a canary among")
    flat = data.features.reshape(len(data), -1).astype(np.float64)
    planted = max(1, math.ceil(flat.shape[1] / 4))
    quiet = np.argsort(flat.var(axis=0), kind="stable")[:planted]
    low, high = flat.min(), flat.max()
    mean = flat.mean(axis=0)[quiet]
    features = flat.min(axis=0)
    features[quiet] = np.where(high - mean >= mean - low, high, low)
    counts = np.bincount(data.labels, minlength=data.num_classes)
    return Canary(
        features=features.reshape(data.feature_shape).astype(np.float32),
        label=int(np.argmin(counts)),
        planted=planted,
    )


def with_canary(data: Dataset, canary: Canary) -> Dataset:
    """``data`` plus the canary as its last record."""
    return Dataset(
        features=np.concatenate([data.features, canary.features[None]]),
        labels=np.concatenate([data.labels, np.array([canary.label], dtype=np.int64)]),
        classes=data.classes,
        name=f"{data.name} + canary",
    )


def audit_local_round(
    model: nn.Module,
    data: Dataset,
    train: TrainConfig,
    dp: DpConfig | None,
    *,
    delta: float,
    accountant: AccountantKind,
    trials: int,
    confidence: float = 0.95,
    on_trial: TrialHook | None = None,
) -> AuditResult:
    """Audit one local round from ``model`` (left unchanged) on ``data``; ``dp=None`` audits
    non-private SGD (:func:`train_plain`). Costs ``2 * trials`` local rounds.

    Raises :class:`InvalidInput` for ``trials < 2``, a confidence or delta outside (0, 1),
    empty data, or a round whose update or canary loss is not finite (training diverged).
    """
    if trials < 2:
        raise InvalidInput(f"trials must be >= 2 (half select the test, half bound), got {trials}")
    check_confidence(confidence)
    check_delta(delta)
    canary = make_canary(data)
    start = copy.deepcopy(model)
    start_weights = get_weights(start)
    gradient, start_loss = _canary_gradient(start, canary, dp.max_grad_norm if dp else None)
    scorer = copy.deepcopy(start)
    datasets = (data, with_canary(data, canary))
    scores: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in STATISTICS}
    # the round config alone fixes the spend: D and D + canary run the same round
    spend = plan_spend(train, dp, delta=delta) if dp else None
    for trial in range(trials):
        for member, dataset in enumerate(datasets):
            weights = _local_round(copy.deepcopy(start), dataset, train, dp, spend)
            update = {name: weights[name] - start_weights[name] for name in gradient}
            set_weights(scorer, weights)
            drop = start_loss - _loss(scorer, canary)
            along = -sum(
                float(np.vdot(update[n], g.astype(np.float64))) for n, g in gradient.items()
            )
            if not (math.isfinite(drop) and math.isfinite(along)):
                raise InvalidInput(
                    f"local training diverged in trial {trial + 1} (a non-finite update or "
                    "loss); the audit needs finite updates: lower training.learning_rate"
                )
            scores["gradient"][member].append(along)
            scores["loss"][member].append(drop)
            if on_trial is not None:
                on_trial(2 * trial + member + 1)
    bound = epsilon_lower_bound(scores, delta=delta, confidence=confidence)
    statistic = next(s for s in STATISTICS if s == bound.statistic)
    negatives, positives = scores[statistic]
    cut = trials // 2
    auc = float(
        roc_auc_score(
            [0] * (trials - cut) + [1] * (trials - cut), negatives[cut:] + positives[cut:]
        )
    )
    return AuditResult(
        trials=trials,
        auc=auc,
        epsilon_lower_bound=bound.epsilon_lower_bound,
        confidence=confidence,
        accounted_epsilon=(epsilon([spend], delta=delta, accountant=accountant) if spend else None),
        reachable=epsilon_at_threshold(
            [0.0] * (trials - cut), [1.0] * (trials - cut), 0.5, delta=delta, confidence=confidence
        ),
        statistic=statistic,
        threshold=bound.threshold,
        settings=AuditSettings(
            private=dp is not None,
            examples=len(data),
            canary_label=canary.label,
            canary_features=canary.planted,
            learning_rate=train.learning_rate,
            noise_multiplier=spend.noise_multiplier if spend else None,
            sample_rate=spend.sample_rate if spend else None,
            steps=spend.steps if spend else None,
            max_grad_norm=dp.max_grad_norm if dp else None,
            delta=delta,
            accountant=accountant,
        ),
    )


def audit_task(
    config: TaskConfig,
    *,
    device: int = 0,
    trials: int,
    confidence: float = 0.95,
    private: bool = True,
    on_trial: TrialHook | None = None,
) -> AuditResult:
    """Audit the first local round of simulated device ``device`` of a task config: its data
    from the task's split, the task's model at initialisation, its training and DP settings
    (``private=False``: the same round without DP). Raises :class:`InvalidInput` for a device
    index out of range, and as :func:`audit_local_round`."""
    from fedmarket.models.registry import build_model
    from fedmarket.simulation import SimulatedFleet  # imports Flower: only when auditing

    parts, _ = SimulatedFleet.from_config(config, Path(".")).split()  # reads no ledger
    if not 0 <= device < len(parts):
        raise InvalidInput(f"device must be in [0, {len(parts)}), got {device}")
    data = parts[device]
    model = build_model(
        config.federation.model, data.feature_shape, data.num_classes, seed=config.federation.seed
    )
    return audit_local_round(
        model,
        data,
        config.train_config(),
        config.dp_config() if private else None,
        delta=config.privacy.delta,
        accountant=config.privacy.accountant,
        trials=trials,
        confidence=confidence,
        on_trial=on_trial,
    )


def _local_round(
    model: nn.Module, data: Dataset, train: TrainConfig, dp: DpConfig | None, spend: Spend | None
) -> Weights:
    """One device round, as the device runs it (``dp=None``: plain SGD).

    The seed fixes only torch state the model's layers may use; DP-SGD's sampling and noise
    come from the OS CSPRNG whatever it is, and plain SGD's shuffle is seeded from it too."""
    seed = secrets.randbits(63)
    if dp is None or spend is None:
        return train_plain(model, data, train, seed=seed).weights
    return train_private(model, data, train, dp, spend, seed=seed).weights


def _canary_gradient(
    model: nn.Module, canary: Canary, clip: float | None
) -> tuple[dict[str, NDArray[np.float32]], float]:
    """({parameter name: the canary's gradient, clipped to norm ``clip``}, its loss)."""
    names, params = zip(*model.named_parameters(), strict=True)
    loss = _cross_entropy(model, canary)
    grads = torch.autograd.grad(loss, params)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    scale = min(1.0, clip / norm) if clip is not None and norm > 0 else 1.0
    gradient = {
        n: (g * scale).numpy().astype(np.float32) for n, g in zip(names, grads, strict=True)
    }
    return gradient, float(loss.detach())


@torch.no_grad()
def _loss(model: nn.Module, canary: Canary) -> float:
    return float(_cross_entropy(model, canary))


def _cross_entropy(model: nn.Module, canary: Canary) -> torch.Tensor:
    features = torch.from_numpy(canary.features[None])
    return nn.functional.cross_entropy(model(features), torch.tensor([canary.label]))
