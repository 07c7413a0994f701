"""The round loop: sample, send the global model, sum the weighted deltas, apply the strategy."""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmarket.acks import Ack
from fedmarket.exceptions import InvalidInput, RoundFailed
from fedmarket.market.bundle import SignedReceipt
from fedmarket.market.terms import MARKET, RoundTerms
from fedmarket.models.evaluation import Evaluation
from fedmarket.models.weights import Weights, weights_to_bytes
from fedmarket.privacy.config import to_record
from fedmarket.protocol import (
    CONFIG,
    GLOBAL,
    UPDATE_WEIGHT,
    RoundOutcome,
    TrainReply,
    weights_to_record,
)
from fedmarket.secagg.workflow import secure_round
from fedmarket.server.plan import FederationPlan
from fedmarket.server.results import FederationResult, RoundResult
from strategies import AggregatedUpdate, Strategy

log = logging.getLogger(__name__)

Evaluator = Callable[[Weights], Evaluation]
RoundObserver = Callable[[RoundResult], None]
ModelObserver = Callable[[RoundResult, Weights], None]
"""Called after each round with the new global model (e.g. to store and commit it)."""


class RoundPayer(Protocol):
    """Who pays a task's rounds (:class:`~fedmarket.market.publisher.RoundPublisher`)."""

    def trained_from(self, round: int, model: bytes) -> bytes:
        """The commitment devices sign for ``model``, the global model they train from."""
        ...

    def model_salt(self, round: int) -> bytes:
        """The salt of that commitment, which devices use to check it."""
        ...

    def acknowledge(
        self, round: int, receipts: Iterable[SignedReceipt]
    ) -> Mapping[str, tuple[Ack, bytes]]:
        """Signed acknowledgements of the valid receipts' uploads, by device."""
        ...


def run_rounds(
    grid: Grid,
    plan: FederationPlan,
    strategy: Strategy,
    initial: Weights,
    evaluate: Evaluator,
    on_round: RoundObserver | None = None,
    on_model: ModelObserver | None = None,
    *,
    first_round: int = 1,
    payer: RoundPayer | None = None,
) -> FederationResult:
    """Run rounds ``first_round`` .. ``plan.rounds`` from ``initial``; the global model moves
    only when some device trained. A resumed federation passes the last committed model and the
    round after it. Paid plans (``plan.market``) need the ``payer`` that commits to each model
    and acknowledges uploads."""
    if plan.market is not None and payer is None:
        raise InvalidInput("a paid plan needs a payer (the task's RoundPublisher)")
    if not 1 <= first_round <= plan.rounds + 1:
        raise InvalidInput(f"first_round must be in 1..{plan.rounds + 1}, got {first_round}")
    # A resumed run draws fresh cohorts and rings rather than replaying round 1's.
    rng = random.Random(plan.seed if first_round == 1 else f"{plan.seed}/{first_round}")
    weights = initial
    banned: set[bytes] = set()  # node keys that provably broke a secure round (DealerCheated)
    start = evaluate(weights)
    result = FederationResult(initial_accuracy=start.accuracy, initial_loss=start.loss)
    for server_round in range(first_round, plan.rounds + 1):
        began = time.monotonic()
        cohort = _sample(grid, plan, rng)
        content = _train_content(plan, strategy, weights, server_round)
        trained_from = None
        acknowledge = None
        if plan.market is not None and payer is not None:
            trained_from = payer.trained_from(server_round, weights_to_bytes(weights))
            salt = payer.model_salt(server_round)
            terms = RoundTerms(plan.market, server_round, trained_from, salt)
            content[MARKET] = terms.to_record()
            acknowledge = _bind_round(payer, server_round)
        if plan.secagg is None:
            outcome = _plain_round(grid, plan, cohort, content, weights, server_round)
        else:
            outcome = secure_round(
                grid,
                cohort,
                content,
                weights,
                plan.secagg,
                train_timeout=plan.round_timeout,
                group_id=str(server_round),
                acknowledge=acknowledge,
                banned=banned,
            )
        if outcome.culprits:
            log.warning(
                "round %d: refusing %d node key(s) from now on: they dealt off their commitments",
                server_round,
                len(outcome.culprits),
            )
            banned.update(outcome.culprits)
        if outcome.update is not None:
            candidate = strategy.apply(weights, outcome.update)
            if all(np.isfinite(w).all() for w in candidate.values()):
                weights = candidate
            else:  # cannot come from clipped updates; never becomes the global model
                outcome = dataclasses.replace(
                    outcome,
                    update=None,
                    trained=(),
                    receipts=(),
                    error="the aggregate made the model non-finite; the global model is unchanged",
                )
                log.error("round %d: %s", server_round, outcome.error)
        evaluation = evaluate(weights)
        round_result = RoundResult(
            round=server_round,
            accuracy=evaluation.accuracy,
            loss=evaluation.loss,
            trained=tuple(r.device for r in outcome.trained),
            declined={r.device: r.reason for r in outcome.declined},
            failed=tuple(f"node {n}: {why}" for n, why in outcome.dropped.items()),
            epsilon={r.device: r.epsilon for r in [*outcome.trained, *outcome.declined]},
            total_weight=outcome.update.total_weight if outcome.update else 0.0,
            seconds=time.monotonic() - began,
            secure=plan.secagg is not None,
            dropped=dict(outcome.dropped),
            clip_fraction=outcome.clip_fraction,
            error=outcome.error,
            trained_from=trained_from,
            receipts=outcome.receipts,
            transcript=outcome.transcript,
        )
        result.rounds.append(round_result)
        log.info(
            "round %d: accuracy %.4f, %d trained, %d declined, %d dropped%s",
            server_round,
            evaluation.accuracy,
            len(round_result.trained),
            len(round_result.declined),
            len(round_result.dropped),
            f"; {outcome.error}" if outcome.error else "",
        )
        if on_model is not None:
            on_model(round_result, weights)
        if on_round is not None:
            on_round(round_result)
    return result


def _bind_round(
    payer: RoundPayer, server_round: int
) -> Callable[[Iterable[SignedReceipt]], Mapping[str, tuple[Ack, bytes]]]:
    return lambda receipts: payer.acknowledge(server_round, receipts)


def _plain_round(
    grid: Grid,
    plan: FederationPlan,
    cohort: list[int],
    content: RecordDict,
    weights: Weights,
    server_round: int,
) -> RoundOutcome:
    """The round without secure aggregation: the server sees every device's delta."""
    messages = [
        Message(
            content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(server_round)
        )
        for node in cohort
    ]
    replies = list(grid.send_and_receive(messages, timeout=plan.round_timeout))
    updates, declined, dropped = _read_replies(replies, weights)
    updates = [_clipped(u, plan.plain_clip_range) for u in updates]
    dropped.update(dict.fromkeys(_missing(cohort, replies), "no reply in time"))
    return RoundOutcome(
        update=_sum(updates, weights) if updates else None,
        trained=tuple(updates),
        declined=tuple(declined),
        dropped=dropped,
        clip_fraction=None,
        error=None if updates else "no device trained",
    )


def _sample(grid: Grid, plan: FederationPlan, rng: random.Random) -> list[int]:
    deadline = time.monotonic() + plan.connect_timeout
    while len(nodes := sorted(grid.get_node_ids())) < plan.min_devices:
        if time.monotonic() > deadline:
            raise RoundFailed(
                f"only {len(nodes)} device(s) connected within {plan.connect_timeout:.0f} s; "
                f"the plan needs at least {plan.min_devices}"
            )
        time.sleep(0.5)
    size = max(plan.min_devices, round(plan.fraction * len(nodes)))
    return sorted(rng.sample(nodes, size))


def _train_content(
    plan: FederationPlan, strategy: Strategy, weights: Weights, server_round: int
) -> RecordDict:
    config: dict[str, ConfigRecordValues] = {
        "round": server_round,
        "model": plan.model,
        **to_record("train", plan.train_for(server_round)),
        **to_record("dp", plan.dp),
        **strategy.train_config(server_round),
    }
    return RecordDict({GLOBAL: weights_to_record(weights), CONFIG: ConfigRecord(config)})


def _read_replies(
    replies: Iterable[Message], expected: Weights
) -> tuple[list[TrainReply], list[TrainReply], dict[int, str]]:
    updates: list[TrainReply] = []
    declined: list[TrainReply] = []
    failed: dict[int, str] = {}
    seen: set[str] = set()
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            failed[node] = str(msg.error.reason)
            continue
        try:
            reply = TrainReply.from_content(msg.content, expected)
        except InvalidInput as exc:
            failed[node] = str(exc)
            continue
        if reply.device in seen:
            failed[node] = f"second reply for device {reply.device}"
            continue
        seen.add(reply.device)
        (updates if reply.outcome == "trained" else declined).append(reply)
    for node, reason in failed.items():
        log.warning("rejected reply from node %d: %s", node, reason)
    return updates, declined, failed


def _clipped(reply: TrainReply, bound: float) -> TrainReply:
    """``reply`` with each coordinate of its update clipped to ±``bound``: one device moves
    the plain sum by at most ``bound`` per coordinate, as under SecAgg+."""
    assert reply.update is not None  # trained replies carry one (TrainReply.from_content)
    clipped = {k: np.clip(v, -bound, bound) for k, v in reply.update.items()}
    return dataclasses.replace(reply, update=clipped)


def _missing(cohort: list[int], replies: Iterable[Message]) -> list[int]:
    answered = {m.metadata.src_node_id for m in replies}
    return [n for n in cohort if n not in answered]


def _sum(updates: list[TrainReply], like: Weights) -> AggregatedUpdate:
    """The plain sum, which secure aggregation computes without seeing the terms."""
    total = {name: np.zeros_like(tensor, dtype=np.float64) for name, tensor in like.items()}
    for reply in updates:
        assert reply.update is not None  # checked by TrainReply.from_content
        for name, tensor in reply.update.items():
            total[name] += UPDATE_WEIGHT * tensor
    return AggregatedUpdate(
        weighted_delta_sum={k: v.astype(np.float32) for k, v in total.items()},
        total_weight=float(UPDATE_WEIGHT * len(updates)),
        num_updates=len(updates),
    )
