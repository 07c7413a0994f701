"""The strategy interface: turn the secure *sum* of weighted deltas into a new global model.

A strategy never sees an individual update: under secure aggregation the server learns only
``sum_i(w_i * delta_i)`` and ``sum_i(w_i)``, so that is all :meth:`Strategy.apply` receives.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

Weights = dict[str, NDArray[np.float32]]
ConfigValue = int | float | str | bool


@dataclass(frozen=True)
class AggregatedUpdate:
    """What secure aggregation reveals about one round.

    Attributes
    ----------
    weighted_delta_sum : per tensor, ``sum_i(weight_i * (local_i - global))``
    total_weight : ``sum_i(weight_i)`` (weights are numbers of examples)
    num_updates : how many devices contributed to the sum
    """

    weighted_delta_sum: Weights
    total_weight: float
    num_updates: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.total_weight) and self.total_weight > 0):
            raise ValueError(f"total_weight must be > 0, got {self.total_weight}")
        if self.num_updates < 1:
            raise ValueError(f"num_updates must be >= 1, got {self.num_updates}")

    def mean_delta(self) -> Weights:
        """The weighted average delta ``sum / total_weight``: FedAvg's pseudo-gradient."""
        return {
            name: (total / self.total_weight).astype(np.float32)
            for name, total in self.weighted_delta_sum.items()
        }


class Strategy(ABC):
    """Server-side aggregation rule."""

    name: ClassVar[str]

    def train_config(self, server_round: int) -> dict[str, ConfigValue]:
        """Extra training config the devices need (e.g. FedProx's ``proximal_mu``)."""
        return {}

    @abstractmethod
    def apply(self, global_weights: Weights, update: AggregatedUpdate) -> Weights:
        """The next global model from the current one and the round's aggregate."""


def check_compatible(global_weights: Weights, update: AggregatedUpdate) -> None:
    """The aggregate must have exactly the global model's tensors and shapes."""
    if set(global_weights) != set(update.weighted_delta_sum):
        raise ValueError(
            f"aggregate tensors {sorted(update.weighted_delta_sum)} do not match the model's "
            f"{sorted(global_weights)}"
        )
    for name, tensor in global_weights.items():
        if tensor.shape != update.weighted_delta_sum[name].shape:
            raise ValueError(
                f"aggregate {name} has shape {update.weighted_delta_sum[name].shape}, "
                f"model has {tensor.shape}"
            )
