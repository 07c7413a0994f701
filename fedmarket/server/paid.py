"""A paid federation: every round is published (stored by CID, committed on chain), and a
restarted server resumes after the last committed round from that round's stored model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from flwr.clientapp.typing import Mod

from fedmarket.exceptions import InvalidInput
from fedmarket.market.publisher import RoundPublisher
from fedmarket.models.weights import Weights, weights_from_bytes, weights_to_bytes
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult, RoundResult
from fedmarket.server.rounds import ModelObserver, RoundObserver
from fedmarket.simulation import SimulatedFleet, run_federation
from strategies import Strategy


def run_paid_federation(
    fleet: SimulatedFleet,
    plan: FederationPlan,
    strategy: Strategy,
    publisher: RoundPublisher,
    *,
    on_round: RoundObserver | None = None,
    client_mods: Sequence[Mod] = (),
    verbose: bool = False,
) -> FederationResult:
    """Run the rounds ``publisher`` has not committed yet; publish each one as it ends.

    Only survivors of secure aggregation with a valid receipt are paid (the publisher checks).
    Returns the rounds run now; none when the task's plan is already complete.
    """
    if plan.market is None:
        raise InvalidInput("a paid federation needs market terms in its plan")
    first = publisher.next_round
    if first > plan.rounds:
        return FederationResult(initial_accuracy=math.nan, initial_loss=math.nan)
    return run_federation(
        fleet,
        plan,
        strategy,
        on_round=on_round,
        on_model=publishing(publisher),
        verbose=verbose,
        resume=resume_point(publisher),
        client_mods=client_mods,
        payer=publisher,
    )


def resume_point(publisher: RoundPublisher) -> tuple[int, Weights] | None:
    """(next round, last committed model) when rounds are committed already, else None."""
    if not publisher.rounds:
        return None
    last = publisher.rounds[-1]
    return publisher.next_round, weights_from_bytes(publisher.sealed_model(last.round).model)


def publishing(publisher: RoundPublisher) -> ModelObserver:
    """The hook that stores and commits each round as it ends; the devices acknowledged during
    the round (survivors of its mask stage with a valid receipt) are paid."""

    def publish(result: RoundResult, weights: Weights) -> None:
        assert result.trained_from is not None  # paid plans always send market terms
        publisher.publish(
            result.round,
            model=weights_to_bytes(weights),
            trained_from=result.trained_from,
            # The workflow keeps receipts of the secure sum's survivors only.
            survivors={s.receipt.device for s in result.receipts},
            receipts=result.receipts,
            evidence=round_evidence(result),
            transcript=_transcript(result),
        )

    return publish


def _transcript(result: RoundResult) -> dict[str, Any] | None:
    """The round's SecAgg+ transcript for its bundle; an aborted round says so (it may still pay
    the devices acknowledged in it, whose check then knows there was no sum)."""
    if result.transcript is not None:
        return result.transcript.to_json()
    return {"aborted": result.error} if result.error else None


def round_evidence(result: RoundResult) -> dict[str, Any]:
    """What a round's evidence document records (stored by CID beside the model).

    Canonical JSON has no NaN or infinity: such values are recorded as null.
    """
    return {
        "accuracy": _finite(result.accuracy),
        "loss": _finite(result.loss),
        "survivors": sorted(result.trained),
        "dropped": {str(node): why for node, why in sorted(result.dropped.items())},
        "declined": dict(sorted(result.declined.items())),
        "clip_fraction": _finite(result.clip_fraction),
        "epsilon": {device: _finite(e) for device, e in sorted(result.epsilon.items())},
        "total_weight": result.total_weight,
        "error": result.error,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
