"""DP-SGD and local-training settings sent to devices in the round config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal, get_args, get_origin, get_type_hints

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
    """Local optimisation settings, all public: they are the same for every device of a round.

    A private device runs ``local_steps`` DP-SGD steps, each on a Poisson sample that takes
    every record with probability ``sample_rate`` (q), and divides the noisy sum of clipped
    per-record gradients by ``batch_size``, a public constant (the fixed-denominator estimator
    of McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018,
    §2): neither q, the steps nor the update's scale depend on how many records a device has,
    so the epsilon it reports reveals nothing about its count. A device with n records
    expects batches of about n * q; choose q so that n * q is near ``batch_size`` for a typical
    device. Non-private devices take ``local_steps`` shuffled batches of ``batch_size``.
    ``proximal_mu > 0`` adds FedProx's proximal term.
    """

    learning_rate: float = 0.1
    momentum: float = 0.0
    sample_rate: float = 0.1
    local_steps: int = 10
    batch_size: int = 32
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidInput(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise InvalidInput(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.sample_rate) and 0 < self.sample_rate <= 1):
            raise InvalidInput(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.local_steps < 1:
            raise InvalidInput(f"local_steps must be >= 1, got {self.local_steps}")
        if self.batch_size < 1:
            raise InvalidInput(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise InvalidInput(f"proximal_mu must be >= 0, got {self.proximal_mu}")


def to_record(prefix: str, config: DpConfig | TrainConfig) -> dict[str, ConfigValue]:
    """Flatten to ``prefix.field`` keys for a Flower ConfigRecord (``None`` fields omitted)."""
    return {f"{prefix}.{k}": v for k, v in asdict(config).items() if v is not None}


def dp_from_record(record: Mapping[str, object]) -> DpConfig:
    """Parse ``dp.*`` keys of an (untrusted) round config, checking every value's type."""
    return DpConfig(**_typed_fields(record, "dp", DpConfig))  # type: ignore[arg-type]  # checked


def train_from_record(record: Mapping[str, object]) -> TrainConfig:
    """Parse ``train.*`` keys of an (untrusted) round config, checking every value's type."""
    return TrainConfig(**_typed_fields(record, "train", TrainConfig))  # type: ignore[arg-type]


def _typed_fields(
    record: Mapping[str, object], prefix: str, cls: type[DpConfig] | type[TrainConfig]
) -> dict[str, object]:
    hints = get_type_hints(cls)
    values: dict[str, object] = {}
    for key, value in record.items():
        if not key.startswith(prefix + "."):
            continue
        name = key[len(prefix) + 1 :]
        if name not in hints:
            raise InvalidInput(f"round config has unknown key {key!r}")
        values[name] = _coerce(key, value, hints[name])
    for name, hint in hints.items():
        if name not in values and type(None) in get_args(hint):
            values[name] = None  # an omitted optional field means None, not its default
    return values


def _coerce(key: str, value: object, hint: object) -> object:
    # ``float | None`` -> (float, NoneType); a plain ``float`` or a Literal stands alone.
    allowed = get_args(hint) if get_origin(hint) not in (None, Literal) else (hint,)
    if value is None and type(None) in allowed:
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if float in allowed and is_number:
        return float(value)  # type: ignore[arg-type]  # is_number checked the type
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if get_origin(hint) is Literal and isinstance(value, str):
        return value  # the dataclass checks membership and names the choices
    raise InvalidInput(f"round config key {key!r} has a value of the wrong type: {value!r}")
