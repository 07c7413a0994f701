"""What each round produced, as the server saw it."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedmarket.market.bundle import SignedReceipt
from fedmarket.secagg.transcript import Transcript


@dataclass(frozen=True)
class RoundResult:
    """One round. ``epsilon`` maps each replying device to its ledger epsilon after the round.

    ``trained`` are the devices whose updates are in the new model (under secure aggregation:
    the survivors). ``dropped`` maps nodes that were sampled but are not in the sum, nor
    declined, to the reason. ``error`` is set when the round produced no new model.
    """

    round: int
    accuracy: float
    loss: float
    trained: tuple[str, ...]
    declined: dict[str, str]
    failed: tuple[str, ...]
    epsilon: dict[str, float]
    total_weight: float
    seconds: float
    secure: bool = False
    dropped: dict[int, str] = field(default_factory=dict)
    clip_fraction: float | None = None
    error: str | None = None
    trained_from: bytes | None = None  # paid rounds: commitment of the model trained from
    receipts: tuple[SignedReceipt, ...] = ()  # paid rounds: survivors' signed receipts
    transcript: Transcript | None = None  # secure rounds: what was summed, as signed


@dataclass
class FederationResult:
    """All rounds, plus the evaluation of the initial model."""

    initial_accuracy: float
    initial_loss: float
    rounds: list[RoundResult] = field(default_factory=list)
