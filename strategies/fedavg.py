"""FedAvg (McMahan et al. 2017): move the global model by the example-weighted mean delta."""

from __future__ import annotations

import math

import numpy as np

from strategies.base import AggregatedUpdate, Strategy, Weights, check_compatible


class FedAvg(Strategy):
    """``x <- x + server_lr * sum(w_i * delta_i) / sum(w_i)``; ``server_lr=1`` is plain FedAvg."""

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0) -> None:
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def apply(self, global_weights: Weights, update: AggregatedUpdate) -> Weights:
        check_compatible(global_weights, update)
        mean = update.mean_delta()
        return {
            name: (tensor + self.server_lr * mean[name]).astype(np.float32)
            for name, tensor in global_weights.items()
        }
