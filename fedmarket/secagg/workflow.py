"""The server's SecAgg+ round on Flower's Message API (``Grid``): four stages, each bounded.

A device that is late, errs, refuses or breaks the protocol in a stage is dropped with a logged
reason; the round goes on while the threshold holds, else :class:`SecAggAborted` is raised and
the caller keeps the old global model.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmarket.acks import Ack
from fedmarket.exceptions import InvalidInput, ProtocolViolation, SecAggAborted
from fedmarket.market.bundle import SignedReceipt
from fedmarket.market.terms import ACK, RECEIPT, RoundTerms, ack_record, read_receipt
from fedmarket.models.weights import Weights
from fedmarket.protocol import RoundOutcome, TrainReply
from fedmarket.secagg import messages as m
from fedmarket.secagg.codec import decode, unflatten
from fedmarket.secagg.config import SecAggConfig
from fedmarket.secagg.device import Stage
from fedmarket.secagg.keys import PublicKeys
from fedmarket.secagg.server import Aggregation, SecureSum
from strategies import AggregatedUpdate

log = logging.getLogger(__name__)

Acknowledger = Callable[[Iterable[SignedReceipt]], Mapping[str, tuple[Ack, bytes]]]
"""Signs acknowledgements of the receipts' uploads (by device); see RoundPublisher.acknowledge."""


def secure_round(
    grid: Grid,
    cohort: list[int],
    train_content: RecordDict,
    like: Weights,
    config: SecAggConfig,
    *,
    train_timeout: float,
    group_id: str,
    rng: random.Random,
    acknowledge: Acknowledger | None = None,
) -> RoundOutcome:
    """Train ``cohort`` on ``train_content`` and return the securely aggregated weighted sum.

    If too few devices survive a stage the result has no update and says why in ``error``.
    With ``acknowledge``, every device whose masked upload and receipt were accepted gets the
    aggregator's signed acknowledgement with its unmask-stage request.
    """
    params = config.for_cohort(len(cohort), session=rng.randbytes(16))
    length = sum(a.size for a in like.values()) + 1
    aggregation = Aggregation(params, cohort, length, rng)
    exchange = _Exchange(grid, params.session, group_id)
    replies = _Replies()
    trained, declined = replies.trained, replies.declined
    try:
        result = _stages(
            aggregation,
            exchange,
            config,
            (train_content, like, train_timeout),
            replies,
            acknowledge,
        )
    except SecAggAborted as exc:
        log.error("secure aggregation aborted, global model unchanged: %s", exc)
        return RoundOutcome(
            update=None,
            trained=(),
            declined=tuple(declined.values()),
            dropped={n: r for n, r in exchange.dropped.items() if n not in declined},
            clip_fraction=None,
            error=str(exc),
        )
    decoded = decode(result.total, len(result.survivors), params)
    for node in trained.keys() - set(result.survivors):
        exchange.dropped.setdefault(node, "its masks did not pair up with its neighbours'")
    return RoundOutcome(
        update=AggregatedUpdate(
            weighted_delta_sum=unflatten(decoded.delta_sum, like),
            total_weight=float(len(result.survivors)),
            num_updates=len(result.survivors),
        ),
        trained=tuple(trained[n] for n in result.survivors),
        declined=tuple(declined.values()),
        dropped={
            n: exchange.dropped.get(n, "dropped") for n in result.dropped if n not in declined
        },
        clip_fraction=decoded.clip_fraction,
        error=None,
        receipts=tuple(replies.receipts[n] for n in result.survivors if n in replies.receipts),
    )


@dataclass
class _Replies:
    """What the mask stage's replies said, kept even if a later stage aborts."""

    trained: dict[int, TrainReply] = field(default_factory=dict)
    declined: dict[int, TrainReply] = field(default_factory=dict)
    receipts: dict[int, SignedReceipt] = field(default_factory=dict)


def _stages(
    aggregation: Aggregation,
    exchange: _Exchange,
    config: SecAggConfig,
    training: tuple[RecordDict, Weights, float],
    replies: _Replies,
    acknowledge: Acknowledger | None,
) -> SecureSum:
    cohort, params = aggregation.cohort, aggregation.params
    train_content, like, train_timeout = training
    trained, declined = replies.trained, replies.declined
    setup = {f"param.{k}": v for k, v in params.to_record().items()}
    for node, reply in exchange.run(
        Stage.SETUP, dict.fromkeys(cohort, setup), config.setup_timeout
    ).items():
        cfg = reply.content.config_records[m.SECAGG]
        with exchange.guard(node):
            keys = PublicKeys(m.field(cfg, "cipher_pk", bytes), m.field(cfg, "mask_pk", bytes))
            aggregation.receive_keys(node, keys)

    requests = {
        node: {
            "peers": list(keys),
            "peer_cipher": [k.cipher for k in keys.values()],
            "peer_mask": [k.mask for k in keys.values()],
        }
        for node, keys in aggregation.close_setup().items()
    }
    for node, reply in exchange.run(Stage.SHARE_KEYS, requests, config.share_timeout).items():
        cfg = reply.content.config_records[m.SECAGG]
        with exchange.guard(node):
            ciphertexts = m.mapping(cfg, "destinations", "ciphertexts", bytes)
            aggregation.receive_shares(node, ciphertexts, m.field(cfg, "commitment", bytes))

    requests = {
        node: {"sources": list(inbox), "ciphertexts": list(inbox.values())}
        for node, inbox in aggregation.close_share_keys().items()
    }
    terms = RoundTerms.from_content(train_content)
    for node, reply in exchange.run(
        Stage.MASK, requests, train_timeout, base=train_content
    ).items():
        try:
            parsed = TrainReply.from_content(reply.content, like, masked=True)
        except InvalidInput as exc:
            exchange.reject(node, str(exc))
            continue
        if parsed.outcome == "declined":
            declined[node] = parsed
            continue
        cfg = reply.content.config_records[m.SECAGG]
        with exchange.guard(node):
            vector = _masked_vector(reply)
            aggregation.receive_masked(node, vector, m.items(cfg, "mask_peers", int))
            trained[node] = parsed
        receipt = reply.content.config_records.get(RECEIPT)
        if terms is not None and receipt is not None and node in trained:
            try:  # a bad receipt costs the device its reward, not its place in the sum
                replies.receipts[node] = read_receipt(receipt, terms, vector)
            except (ProtocolViolation, InvalidInput) as exc:
                log.warning("node %d: unusable receipt: %s", node, exc)

    requests = {
        node: {"survivors": list(r.survivors), "dropped": list(r.dropped)}
        for node, r in aggregation.close_masking().items()
    }
    acks = _acks(acknowledge, {n: replies.receipts[n] for n in requests if n in replies.receipts})
    for node, reply in exchange.run(
        Stage.UNMASK, requests, config.unmask_timeout, extra=acks
    ).items():
        cfg = reply.content.config_records[m.SECAGG]
        with exchange.guard(node):
            seed_shares = m.mapping(cfg, "seed_owners", "seed_shares", bytes)
            key_shares = m.mapping(cfg, "key_owners", "key_shares", bytes)
            aggregation.receive_unmask(node, seed_shares, key_shares)

    return aggregation.finish()


def _acks(
    acknowledge: Acknowledger | None, receipts: Mapping[int, SignedReceipt]
) -> dict[int, dict[str, ConfigRecord]]:
    """Each accepted node's acknowledgement record, signed before the unmask stage is sent."""
    if acknowledge is None or not receipts:
        return {}
    signed = acknowledge(receipts.values())
    by_device = {r.receipt.device: node for node, r in receipts.items()}
    return {
        by_device[device]: {ACK: ack_record(ack, signature)}
        for device, (ack, signature) in signed.items()
        if device in by_device
    }


def _masked_vector(reply: Message) -> np.ndarray:
    record = reply.content.array_records.get(m.MASKED)
    if record is None or list(record) != ["vector"]:
        raise ProtocolViolation("trained but sent no masked vector")
    try:
        return record["vector"].numpy()
    except (TypeError, ValueError) as exc:
        raise ProtocolViolation(f"masked vector is unreadable: {exc}") from None


class _Exchange:
    """Sends one stage's messages, waits at most ``timeout``, keeps one valid reply per node."""

    def __init__(self, grid: Grid, session: bytes, group_id: str) -> None:
        self.grid, self.session, self.group_id = grid, session, group_id
        self.dropped: dict[int, str] = {}

    def run(
        self,
        stage: Stage,
        requests: Mapping[int, Mapping[str, object]],
        timeout: float,
        *,
        base: RecordDict | None = None,
        extra: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
    ) -> dict[int, Message]:
        messages = []
        for node, fields in requests.items():
            content = RecordDict(dict(base.items()) if base is not None else {})
            for name, record in (extra or {}).get(node, {}).items():
                content[name] = record
            content[m.SECAGG] = m.record(stage, self.session, fields)  # type: ignore[arg-type]
            messages.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=MessageType.TRAIN,
                    group_id=self.group_id,
                )
            )
        replies: dict[int, Message] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in requests:
                log.warning("secagg %s: reply from node %d, which was not asked", stage, node)
            elif node in replies:
                log.warning("secagg %s: second reply from node %d ignored (replay)", stage, node)
            elif reason := self._problem(reply, stage):
                self.reject(node, reason)
            else:
                replies[node] = reply
        for node in requests:
            if node not in replies and node not in self.dropped:
                self.reject(node, f"no {stage.value} reply within {timeout:g} s")
        return replies

    @contextmanager
    def guard(self, node: int) -> Iterator[None]:
        """Run the block that reads ``node``'s reply; a violation drops the node, logged."""
        try:
            yield
        except ProtocolViolation as exc:
            self.reject(node, str(exc))

    def reject(self, node: int, reason: str) -> None:
        log.warning("secagg: dropping node %d: %s", node, reason)
        self.dropped[node] = reason

    def _problem(self, reply: Message, stage: Stage) -> str:
        if reply.has_error():
            return f"error reply: {reply.error.reason}"
        config = reply.content.config_records.get(m.SECAGG)
        if config is None:
            return "reply without a secagg record"
        if "refused" in config:
            return f"refused: {config['refused']!s:.500}"
        try:
            m.check_header(config, stage, self.session)
        except ProtocolViolation as exc:
            return str(exc)
        return ""
