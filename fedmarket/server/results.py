"""What each round produced, as the server saw it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoundResult:
    """One round. ``epsilon`` maps each replying device to its ledger epsilon after the round."""

    round: int
    accuracy: float
    loss: float
    trained: tuple[str, ...]
    declined: dict[str, str]
    failed: tuple[str, ...]
    epsilon: dict[str, float]
    total_weight: float
    seconds: float


@dataclass
class FederationResult:
    """All rounds, plus the evaluation of the initial model."""

    initial_accuracy: float
    initial_loss: float
    rounds: list[RoundResult] = field(default_factory=list)
