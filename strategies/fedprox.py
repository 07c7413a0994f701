"""FedProx (Li et al. 2020): FedAvg on the server, a proximal term on the devices."""

from __future__ import annotations

import math

from strategies.base import ConfigValue
from strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """Devices minimise ``loss + mu/2 * ||w - w_global||^2``; ``mu`` travels in the config."""

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 0.01, server_lr: float = 1.0) -> None:
        super().__init__(server_lr=server_lr)
        if not (math.isfinite(proximal_mu) and proximal_mu > 0):
            raise ValueError(f"proximal_mu must be > 0, got {proximal_mu}")
        self.proximal_mu = proximal_mu

    def train_config(self, server_round: int) -> dict[str, ConfigValue]:
        return {"train.proximal_mu": self.proximal_mu}
