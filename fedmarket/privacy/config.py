"""DP-SGD and local-training settings sent to devices in the round config."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

from fedmarket.exceptions import InvalidInput

AccountantKind = Literal["prv", "rdp"]
# Modes that survive empty Poisson batches; Opacus "ew" raises on a batch of size 0.
GradSampleMode = Literal["hooks", "functorch", "ghost"]
ConfigValue = int | float | str | bool


@dataclass(frozen=True, kw_only=True)
class DpConfig:
    """Per-round DP-SGD parameters.

    Exactly one of ``noise_multiplier`` (sigma) and ``target_epsilon_per_round`` is set; with
    the latter each device calibrates sigma so that this round alone costs that epsilon.
    """

    max_grad_norm: float = 1.0
    noise_multiplier: float | None = 1.0
    target_epsilon_per_round: float | None = None
    grad_sample_mode: GradSampleMode = "hooks"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise InvalidInput(f"max_grad_norm must be a positive number, got {self.max_grad_norm}")
        if (self.noise_multiplier is None) == (self.target_epsilon_per_round is None):
            raise InvalidInput("set exactly one of noise_multiplier and target_epsilon_per_round")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise InvalidInput(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        target = self.target_epsilon_per_round
        if target is not None and not (math.isfinite(target) and target > 0):
            raise InvalidInput(f"target_epsilon_per_round must be > 0, got {target}")
        if self.grad_sample_mode not in get_args(GradSampleMode):
            raise InvalidInput(
                f"unknown grad_sample_mode {self.grad_sample_mode!r}; "
                f"choose one of {', '.join(get_args(GradSampleMode))}"
            )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Local optimisation settings. ``proximal_mu > 0`` adds FedProx's proximal term."""

    learning_rate: float = 0.1
    momentum: float = 0.0
    local_epochs: int = 1
    batch_size: int = 32
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidInput(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise InvalidInput(f"momentum must be in [0, 1), got {self.momentum}")
        if self.local_epochs < 1:
            raise InvalidInput(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise InvalidInput(f"proximal_mu must be >= 0, got {self.proximal_mu}")


def to_record(prefix: str, config: DpConfig | TrainConfig) -> dict[str, ConfigValue]:
    """Flatten to ``prefix.field`` keys for a Flower ConfigRecord (``None`` fields omitted)."""
    return {f"{prefix}.{k}": v for k, v in asdict(config).items() if v is not None}


def dp_from_record(record: dict[str, object]) -> DpConfig:
    return DpConfig(**_fields_from(record, "dp", DpConfig, nullable={"noise_multiplier"}))


def train_from_record(record: dict[str, object]) -> TrainConfig:
    return TrainConfig(**_fields_from(record, "train", TrainConfig, nullable=set()))


def _fields_from(
    record: dict[str, object],
    prefix: str,
    cls: type[DpConfig] | type[TrainConfig],
    nullable: set[str],
) -> dict[str, object]:
    known = {f.name for f in fields(cls)}
    unknown = [
        k for k in record if k.startswith(prefix + ".") and k[len(prefix) + 1 :] not in known
    ]
    if unknown:
        raise InvalidInput(f"round config has unknown key(s) {', '.join(sorted(unknown))}")
    values = {k[len(prefix) + 1 :]: v for k, v in record.items() if k.startswith(prefix + ".")}
    for name in nullable:
        values.setdefault(name, None)
    return values
