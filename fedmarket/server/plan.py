"""The server's plan for a federation: rounds, model, and what devices are told to do."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fedmarket.config import TaskConfig
from fedmarket.exceptions import InvalidInput
from fedmarket.market.terms import MarketTerms
from fedmarket.models.registry import ModelName
from fedmarket.privacy.config import DpConfig, TrainConfig
from fedmarket.secagg.config import MIN_COHORT, SecAggConfig


@dataclass(frozen=True, kw_only=True)
class FederationPlan:
    """Server-side settings.

    ``fraction`` of connected devices is sampled each round, at least ``min_devices``.
    ``round_timeout`` bounds how long a round waits for replies; late devices are skipped.
    Updates are summed under SecAgg+ (``secagg``), so the server sees only their sum;
    ``secagg=None`` sums them in the clear, each clipped to ±``plain_clip_range`` per
    coordinate first (the bound SecAgg+ enforces on the device).
    Round ``r`` trains with learning rate ``train.learning_rate * lr_decay ** (r - 1)``:
    decaying it shrinks the DP noise that the last rounds add to the final model.
    """

    rounds: int = 5
    model: ModelName = "mlp"
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DpConfig = field(default_factory=DpConfig)
    lr_decay: float = 1.0
    fraction: float = 1.0
    min_devices: int = MIN_COHORT
    round_timeout: float = 600.0
    connect_timeout: float = 120.0
    seed: int = 0
    secagg: SecAggConfig | None = field(default_factory=SecAggConfig)
    plain_clip_range: float = SecAggConfig().clip_range
    market: MarketTerms | None = None  # paid rounds: devices sign receipts for their uploads

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise InvalidInput(f"rounds must be >= 1, got {self.rounds}")
        if not 0 < self.lr_decay <= 1:
            raise InvalidInput(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 < self.fraction <= 1:
            raise InvalidInput(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_devices < 1:
            raise InvalidInput(f"min_devices must be >= 1, got {self.min_devices}")
        if not (math.isfinite(self.plain_clip_range) and self.plain_clip_range > 0):
            raise InvalidInput(f"plain_clip_range must be > 0, got {self.plain_clip_range}")
        if self.round_timeout <= 0 or self.connect_timeout <= 0:
            raise InvalidInput("round_timeout and connect_timeout must be > 0 seconds")
        if self.market is not None and self.secagg is None:
            raise InvalidInput("paid rounds need secure aggregation: receipts sign masked uploads")
        if self.secagg is not None and self.min_devices < MIN_COHORT:
            raise InvalidInput(
                f"secure aggregation needs min_devices >= {MIN_COHORT}, got {self.min_devices}"
            )

    @classmethod
    def from_config(
        cls,
        config: TaskConfig,
        *,
        market: MarketTerms | None = None,
        connect_timeout: float = 120.0,
    ) -> FederationPlan:
        """The server's plan for a task config (``market``: paid rounds of that task)."""
        secagg = config.secagg_config()
        return cls(
            rounds=config.federation.rounds,
            model=config.federation.model,
            train=config.train_config(),
            dp=config.dp_config(),
            lr_decay=config.federation.lr_decay,
            seed=config.federation.seed,
            min_devices=MIN_COHORT if secagg else 1,
            secagg=secagg,
            plain_clip_range=config.federation.clip_range,
            market=market,
            round_timeout=config.federation.round_timeout,
            connect_timeout=connect_timeout,
        )

    def train_for(self, server_round: int) -> TrainConfig:
        """The training config of round ``server_round`` (1-based), learning rate decayed."""
        rate = self.train.learning_rate * self.lr_decay ** (server_round - 1)
        return replace(self.train, learning_rate=rate)
