"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The mean delta acts as a pseudo-gradient ``d``. With ``m`` and ``v`` starting at zero:

    m <- beta1 * m + (1 - beta1) * d
    v <- second-moment rule of the subclass
    x <- x + eta * m / (sqrt(v) + tau)

No bias correction, as in the paper's Algorithm 2 and Flower's FedOpt.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np
from numpy.typing import NDArray

from strategies.base import AggregatedUpdate, Strategy, Weights, check_compatible


class FedOpt(Strategy):
    """Shared state and update of FedAdam and FedYogi."""

    def __init__(
        self, *, eta: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if not (math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be > 0, got {eta}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1}, {beta2}")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be > 0, got {tau}")
        self.eta, self.beta1, self.beta2, self.tau = eta, beta1, beta2, tau
        self.m: Weights = {}
        self.v: Weights = {}

    @abstractmethod
    def second_moment(self, v: NDArray[np.float32], d: NDArray[np.float32]) -> NDArray[np.float32]:
        """The new ``v`` from the old one and the pseudo-gradient."""

    def apply(self, global_weights: Weights, update: AggregatedUpdate) -> Weights:
        check_compatible(global_weights, update)
        new: Weights = {}
        for name, d in update.mean_delta().items():
            m = self.m.get(name, np.zeros_like(d))
            v = self.v.get(name, np.zeros_like(d))
            m = (self.beta1 * m + (1 - self.beta1) * d).astype(np.float32)
            v = self.second_moment(v, d).astype(np.float32)
            self.m[name], self.v[name] = m, v
            step = self.eta * m / (np.sqrt(v) + self.tau)
            new[name] = (global_weights[name] + step).astype(np.float32)
        return new
