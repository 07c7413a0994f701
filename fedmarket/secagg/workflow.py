"""The server's SecAgg+ round on Flower's Message API (``Grid``): six stages, each bounded.

A device that is late, errs, refuses or breaks the protocol in a stage is dropped with a logged
reason; the round goes on while the threshold holds, else :class:`SecAggAborted` is raised and
the caller keeps the old global model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmarket.acks import Ack
from fedmarket.exceptions import DealerCheated, InvalidInput, ProtocolViolation, SecAggAborted
from fedmarket.market.bundle import SignedReceipt
from fedmarket.market.terms import ACK, RECEIPT, RoundTerms, ack_record, read_receipt
from fedmarket.models.weights import Weights
from fedmarket.protocol import RoundOutcome, TrainReply, read_array
from fedmarket.secagg import messages as m
from fedmarket.secagg.codec import decode, unflatten
from fedmarket.secagg.config import SecAggConfig
from fedmarket.secagg.device import ShareUpload, Stage, UnmaskShares
from fedmarket.secagg.roster import Announcement, encode_roster
from fedmarket.secagg.server import Aggregation, Redraw, SecureSum
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
    acknowledge: Acknowledger | None = None,
    banned: Collection[bytes] = (),
) -> RoundOutcome:
    """Train ``cohort`` on ``train_content`` and return the securely aggregated sum.

    If the round cannot produce a sum safely the result has no update and says why in
    ``error``. A draw voided by withheld nonces is redrawn without the withholders (at most
    ``config.assumptions.draws`` draws). With ``acknowledge``, every device whose masked upload
    and receipt were accepted gets the aggregator's signed acknowledgement with its unmask
    request. Devices whose node key is in ``banned`` are refused at setup.
    """
    length = sum(a.size for a in like.values()) + 1
    replies = _Replies()
    dropped: dict[int, str] = {}
    error = f"no complete draw in {config.assumptions.draws} tries"
    culprits: tuple[bytes, ...] = ()
    result: SecureSum | None = None
    for draw in range(1, config.assumptions.draws + 1):
        try:
            params = config.for_cohort(len(cohort))
        except InvalidInput as exc:
            error = str(exc)
            break
        aggregation = Aggregation(params, cohort, length, banned)
        exchange = _Exchange(grid, params.session, f"{group_id}.{draw}")
        try:
            result = _stages(
                aggregation,
                exchange,
                config,
                (train_content, like, train_timeout),
                replies,
                acknowledge,
            )
        except Redraw as void:
            log.warning("secure aggregation draw %d void: %s; redrawing without them", draw, void)
            dropped.update(dict.fromkeys(void.missing, "withheld its nonce"))
            cohort = [n for n in cohort if n not in void.missing]
            continue
        except ProtocolViolation as exc:  # a stage could not close: never the server's crash
            error = f"secure aggregation aborted: {exc}"
        except SecAggAborted as exc:
            error = str(exc)
            if isinstance(exc, DealerCheated) and aggregation.roster is not None:
                culprits = tuple(aggregation.roster.member(n).node_key for n in exc.culprits)
                dropped.update(dict.fromkeys(exc.culprits, "dealt shares off its commitments"))
        finally:
            for why in (exchange.dropped, aggregation.dropped_at_setup, aggregation.excluded):
                dropped.update((n, r) for n, r in why.items() if n not in dropped)
        break

    def aborted(error: str) -> RoundOutcome:
        log.error("secure aggregation aborted, global model unchanged: %s", error)
        return RoundOutcome(
            update=None,
            trained=(),
            declined=tuple(replies.declined.values()),
            dropped={n: r for n, r in dropped.items() if n not in replies.declined},
            clip_fraction=None,
            error=error,
            culprits=culprits,
        )

    if result is None:
        return aborted(error)
    try:
        decoded = decode(result.total, len(result.survivors), params)
    except SecAggAborted as exc:
        return aborted(str(exc))
    for node, what in result.liars.items():
        log.warning("secagg: node %d %s", node, what)
    return RoundOutcome(
        update=AggregatedUpdate(
            weighted_delta_sum=unflatten(decoded.delta_sum, like),
            total_weight=float(len(result.survivors)),
            num_updates=len(result.survivors),
        ),
        trained=tuple(replies.trained[n] for n in result.survivors),
        declined=tuple(replies.declined.values()),
        dropped={n: dropped.get(n, "dropped") for n in result.dropped if n not in replies.declined},
        clip_fraction=decoded.clip_fraction,
        error=None,
        receipts=tuple(replies.receipts[n] for n in result.survivors if n in replies.receipts),
        transcript=result.transcript,
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
    setup = {f"param.{k}": v for k, v in params.to_record().items()}
    for node, cfg in exchange.run(
        Stage.SETUP, dict.fromkeys(cohort, setup), config.setup_timeout
    ).items():
        with exchange.guard(node):
            announcement = Announcement.from_bytes(m.field(cfg, "announcement", bytes))
            aggregation.receive_announcement(node, announcement)

    roster = aggregation.close_setup()
    roster_request: dict[str, object] = {"roster": encode_roster(roster)}
    for node, cfg in exchange.run(
        Stage.ROSTER, dict.fromkeys(roster.nodes, roster_request), config.setup_timeout
    ).items():
        with exchange.guard(node):
            aggregation.receive_nonce(node, m.field(cfg, "nonce", bytes))

    nonces = aggregation.close_roster()
    nonce_request: dict[str, object] = {
        "nonce_nodes": list(nonces),
        "nonces": list(nonces.values()),
    }
    for node, cfg in exchange.run(
        Stage.SHARE_KEYS, dict.fromkeys(roster.nodes, nonce_request), config.share_timeout
    ).items():
        with exchange.guard(node):
            aggregation.receive_shares(node, _share_upload(cfg))

    dealers, inboxes = aggregation.close_share_keys()
    requests = {
        node: {
            "dealers": list(dealers),
            "sources": list(inbox),
            "ciphertexts": [d.ciphertext for d in inbox.values()],
            "seed_digests": [d.seed_digest for d in inbox.values()],
            "key_digests": [d.key_digest for d in inbox.values()],
        }
        for node, inbox in inboxes.items()
    }
    _mask_stage(aggregation, exchange, requests, train_content, like, train_timeout, replies)

    survivors, uploads = aggregation.close_masking()
    survivor_request: dict[str, object] = {"survivors": list(survivors), "uploads": list(uploads)}
    for node, cfg in exchange.run(
        Stage.CONSISTENCY, dict.fromkeys(survivors, survivor_request), config.unmask_timeout
    ).items():
        with exchange.guard(node):
            aggregation.receive_signature(node, m.field(cfg, "signature", bytes))

    unmask_requests = {
        node: {
            "signers": list(signatures),
            "signatures": list(signatures.values()),
            "vouchers": list(vouches),
            "vouches": list(vouches.values()),
        }
        for node, (signatures, vouches) in aggregation.close_consistency().items()
    }
    receipts = {n: replies.receipts[n] for n in unmask_requests if n in replies.receipts}
    acks = _acks(acknowledge, receipts)
    for node, cfg in exchange.run(
        Stage.UNMASK, unmask_requests, config.unmask_timeout, extra=acks
    ).items():
        with exchange.guard(node):
            shares = UnmaskShares(
                seed=m.mapping(cfg, "seed_owners", "seed_shares", bytes),
                mask_key=m.mapping(cfg, "key_owners", "key_shares", bytes),
                pair=m.mapping(cfg, "pair_owners", "pair_keys", bytes),
            )
            aggregation.receive_unmask(node, shares)

    return aggregation.finish()


def _mask_stage(
    aggregation: Aggregation,
    exchange: _Exchange,
    requests: Mapping[int, Mapping[str, object]],
    train_content: RecordDict,
    like: Weights,
    train_timeout: float,
    replies: _Replies,
) -> None:
    terms = RoundTerms.from_content(train_content)
    for node, reply in exchange.run_messages(
        Stage.MASK, requests, train_timeout, base=train_content
    ).items():
        try:
            parsed = TrainReply.from_content(reply.content, like, masked=True)
        except InvalidInput as exc:
            exchange.reject(node, str(exc))
            continue
        if parsed.outcome == "declined":
            replies.declined[node] = parsed
            continue
        cfg = reply.content.config_records[m.SECAGG]
        with exchange.guard(node):
            vector = _masked_vector(reply)
            complaints = m.mapping(cfg, "complaint_nodes", "complaints", str)
            aggregation.receive_masked(node, vector, m.field(cfg, "masked_with", bytes), complaints)
            replies.trained[node] = parsed
            for dealer, reason in complaints.items():
                log.warning("secagg: node %d says node %d's shares: %.120r", node, dealer, reason)
        receipt = reply.content.config_records.get(RECEIPT)
        if terms is not None and receipt is not None and node in replies.trained:
            try:  # a bad receipt costs the device its reward, not its place in the sum
                replies.receipts[node] = read_receipt(receipt, terms, vector)
            except (ProtocolViolation, InvalidInput) as exc:
                log.warning("node %d: unusable receipt: %s", node, exc)


def _share_upload(cfg: ConfigRecord) -> ShareUpload:
    return ShareUpload(
        ciphertexts=m.mapping(cfg, "destinations", "ciphertexts", bytes),
        seed_commitments=m.field(cfg, "seed_commitments", bytes),
        key_commitments=m.field(cfg, "key_commitments", bytes),
        seed_digests=m.mapping(cfg, "digest_holders", "seed_digests", bytes),
        key_digests=m.mapping(cfg, "digest_holders", "key_digests", bytes),
    )


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
        return read_array(record["vector"], "masked vector")
    except InvalidInput as exc:
        raise ProtocolViolation(str(exc)) from None


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
        extra: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
    ) -> dict[int, ConfigRecord]:
        """Each valid reply's ``secagg`` record, by node."""
        replies = self.run_messages(stage, requests, timeout, extra=extra)
        return {node: reply.content.config_records[m.SECAGG] for node, reply in replies.items()}

    def run_messages(
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
