"""The device's SecAgg+ as a Flower ClientApp mod on the Message API.

The mod answers the six stage messages itself, keeping the round's session in
``Context.state``; on the mask stage it lets the app train, then replaces the plain delta by
the masked vector, so the update never leaves the device unmasked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from eth_account.signers.local import LocalAccount
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable, Mod
from nacl.signing import SigningKey

from fedmarket.exceptions import FedmarketError, ProtocolViolation
from fedmarket.market.terms import RECEIPT, RoundTerms, sign_upload
from fedmarket.models.weights import weights_to_bytes
from fedmarket.protocol import DELTA, GLOBAL, METRICS, UPDATE_WEIGHT, weights_from_record
from fedmarket.secagg import messages as m
from fedmarket.secagg.codec import encode, flatten
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.device import Dealt, DeviceSession, Stage
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS, Assumptions
from fedmarket.secagg.roster import decode_roster

log = logging.getLogger(__name__)
_STATE = "secagg.session"
_DRAWS = "secagg.draws"
DRAW_WINDOW_S = 600.0
"""A device joins at most ``policy.draws`` draws that end without its masked upload within any
such window: a server restarting draws to pick a graph gains log2(draws) bits per window, and
devices that withhold nonces (to void draws) lock an honest device out for a window each time.
The count lives in the run's ``Context.state``, so it starts again with each Flower run."""


SignerResolver = Callable[[Context], LocalAccount | None]
"""The device's payout key, to sign a receipt for each masked upload (None: no receipts)."""

NodeKeyResolver = Callable[[Context], SigningKey]
"""The device's Ed25519 node key (:func:`fedmarket.secagg.keys.node_key_from_identity`)."""

PolicyResolver = Callable[[Context], Assumptions]
"""The weakest round the device's owner allows."""


def make_secagg_mod(
    *,
    node_key: NodeKeyResolver,
    required: bool = True,
    signer: SignerResolver | None = None,
    policy: PolicyResolver = lambda context: DEFAULT_ASSUMPTIONS,
) -> Mod:
    """The mod; with ``required`` the device refuses to train in rounds without SecAgg+.

    ``node_key`` signs the device's announcements and agreements; ``policy`` is the weakest
    round the device accepts (colluding share, security bits, draws). With ``signer``, a device
    that trains in a round carrying market terms signs an EIP-712 receipt over its masked upload.
    """

    def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        config = msg.content.config_records.get(m.SECAGG)
        if config is None:
            if required:
                raise ProtocolViolation(
                    "this device only trains under secure aggregation; the round has none"
                )
            return call_next(msg, context)
        stage, session = config.get("stage"), config.get("session")
        try:
            if not isinstance(session, bytes):
                raise ProtocolViolation("secagg message without a session")
            device = _Device(msg, context, node_key(context), signer, policy(context))
            content = device.handle(config, call_next)
        except FedmarketError as exc:
            log.warning("secagg %s refused: %s", stage, exc)
            content = RecordDict(
                {m.SECAGG: ConfigRecord({"stage": str(stage), "refused": str(exc)})}
            )
        return Message(content, reply_to=msg)

    return secagg_mod


class _Device:
    """One stage message on one device."""

    def __init__(
        self,
        msg: Message,
        context: Context,
        node_key: SigningKey,
        signer: SignerResolver | None,
        policy: Assumptions,
    ) -> None:
        self.msg, self.context, self.node_key = msg, context, node_key
        self.signer, self.policy = signer, policy

    def handle(self, config: ConfigRecord, call_next: ClientAppCallable) -> RecordDict:
        name = config.get("stage")
        if name not in {s.value for s in Stage}:
            raise ProtocolViolation(f"unknown secagg stage {name!r}")
        stage = Stage(name)
        if stage == Stage.SETUP:
            return self._setup(config)
        session = _load(self.context)
        m.check_header(config, stage, session.params.session)
        if stage == Stage.MASK:
            return self._mask(config, session, call_next)
        fields: dict[str, ConfigRecordValues]
        if stage == Stage.ROSTER:
            roster = decode_roster(m.items(config, "roster", bytes))
            fields = {"nonce": session.reveal(roster)}
        elif stage == Stage.SHARE_KEYS:
            upload = session.share_keys(m.mapping(config, "nonce_nodes", "nonces", bytes))
            holders = sorted(upload.seed_digests)
            fields = {
                "destinations": list(upload.ciphertexts),
                "ciphertexts": list(upload.ciphertexts.values()),
                "seed_commitments": upload.seed_commitments,
                "key_commitments": upload.key_commitments,
                "digest_holders": holders,
                "seed_digests": [upload.seed_digests[h] for h in holders],
                "key_digests": [upload.key_digests[h] for h in holders],
            }
        elif stage == Stage.CONSISTENCY:
            signature = session.consistency(
                m.items(config, "survivors", int), m.items(config, "uploads", bytes), self.node_key
            )
            fields = {"signature": signature}
        else:
            shares = session.unmask(
                m.mapping(config, "signers", "signatures", bytes),
                m.mapping(config, "vouchers", "vouches", bytes),
            )
            fields = {
                "seed_owners": list(shares.seed),
                "seed_shares": list(shares.seed.values()),
                "key_owners": list(shares.mask_key),
                "key_shares": list(shares.mask_key.values()),
                "pair_owners": list(shares.pair),
                "pair_keys": list(shares.pair.values()),
            }
        _store(self.context, session)
        return RecordDict({m.SECAGG: m.record(stage, session.params.session, fields)})

    def _setup(self, config: ConfigRecord) -> RecordDict:
        params = RoundParams.from_record(
            {k[6:]: v for k, v in config.items() if k.startswith("param.")}
        )
        stored = self.context.state.config_records.get(_STATE)
        if stored is not None and stored.get("param.session") == params.session:
            raise ProtocolViolation("setup replayed for a round already under way")
        now = time.time()
        recent = [t for t in _draws(self.context) if now - t < DRAW_WINDOW_S]
        if len(recent) >= self.policy.draws:
            raise ProtocolViolation(
                f"{len(recent)} graph draws in the last {DRAW_WINDOW_S:.0f} s ended without my "
                "masked upload: the server may be grinding the graph; I take part again later"
            )
        node = self.msg.metadata.dst_node_id
        session, announcement = DeviceSession.setup(node, params, self.node_key, self.policy)
        self.context.state.config_records[_DRAWS] = ConfigRecord({"times": [*recent, now]})
        _store(self.context, session)
        fields: dict[str, ConfigRecordValues] = {"announcement": announcement.to_bytes()}
        return RecordDict({m.SECAGG: m.record(Stage.SETUP, params.session, fields)})

    def _mask(
        self, config: ConfigRecord, session: DeviceSession, call_next: ClientAppCallable
    ) -> RecordDict:
        msg, context = self.msg, self.context
        ciphertexts = m.mapping(config, "sources", "ciphertexts", bytes)
        seed_digests = m.mapping(config, "sources", "seed_digests", bytes)
        key_digests = m.mapping(config, "sources", "key_digests", bytes)
        dealt = {d: Dealt(c, seed_digests[d], key_digests[d]) for d, c in ciphertexts.items()}
        # Refuse before training if the round cannot carry a masked upload: a round the
        # device must refuse anyway then costs it no privacy.
        complaints = session.accept_shares(m.items(config, "dealers", int), dealt)
        _check_terms(msg, context, self.signer)
        _store(context, session)  # past the mask stage for good: a replay of it is refused
        trained = call_next(msg, context)
        if trained.has_error():
            # The reason may quote the records (an exception's text): it stays in the log here.
            log.error("training failed (its ε is charged): %s", trained.error.reason)
            raise ProtocolViolation("training failed on the device (the reason is in its log)")
        content = trained.content
        if DELTA not in content.array_records:  # declined: nothing to mask, nothing to send
            content[m.SECAGG] = m.record(Stage.MASK, session.params.session, {})
            return content
        delta = flatten(weights_from_record(content.array_records.pop(DELTA)))
        encoded = encode(delta, session.params)
        vector, masked_with = session.mask_update(encoded, self.node_key)
        _store(context, session)
        context.state.config_records[_DRAWS] = ConfigRecord({"times": []})  # this draw counted
        content[m.MASKED] = ArrayRecord({"vector": Array(vector)})
        content[m.SECAGG] = m.record(
            Stage.MASK,
            session.params.session,
            {
                "masked_with": masked_with,
                "complaint_nodes": list(complaints),
                "complaints": list(complaints.values()),
            },
        )
        for dealer, reason in complaints.items():
            log.warning("secagg: shares from node %d: %s", dealer, reason)
        _sign(msg, context, content, self.signer, vector)
        return content


def _check_terms(msg: Message, context: Context, signer: SignerResolver | None) -> None:
    """Before training: check that the round's model commitment names the weights I was sent,
    and sign a throw-away receipt under the round's market terms: terms I must refuse then
    cost the device nothing."""
    terms = RoundTerms.from_content(msg.content)
    account = signer(context) if signer is not None and terms is not None else None
    if terms is None or account is None:
        return
    global_model = msg.content.array_records.get(GLOBAL)
    if global_model is None:
        raise ProtocolViolation("a paid round without a global model to check it against")
    terms.check_model(weights_to_bytes(weights_from_record(global_model)))
    try:
        blank = np.zeros(1, dtype=np.uint32)
        sign_upload(terms, account, blank, weight=UPDATE_WEIGHT, epsilon=0.0, delta=0.5)
    except (FedmarketError, ValueError, TypeError) as exc:
        raise ProtocolViolation(f"the round's market terms cannot carry a receipt: {exc}") from None


def _sign(
    msg: Message,
    context: Context,
    content: RecordDict,
    signer: SignerResolver | None,
    upload: np.ndarray,
) -> None:
    """Attach the device's receipt for ``upload`` (the masked vector), when the round pays."""
    terms = RoundTerms.from_content(msg.content)
    account = signer(context) if signer is not None and terms is not None else None
    if terms is None or account is None:
        return
    metrics = content.metric_records[METRICS]
    epsilon, delta = metrics.get("epsilon"), metrics.get("delta")
    if not isinstance(epsilon, float | int) or not isinstance(delta, float | int):
        raise ProtocolViolation("the training reply lacks epsilon or delta for the receipt")
    content[RECEIPT] = sign_upload(
        terms, account, upload, weight=UPDATE_WEIGHT, epsilon=epsilon, delta=delta
    )


def _load(context: Context) -> DeviceSession:
    stored = context.state.config_records.get(_STATE)
    if stored is None:
        raise ProtocolViolation("no secagg round under way on this device (setup missing)")
    return DeviceSession.from_record(stored)


def _store(context: Context, session: DeviceSession) -> None:
    context.state.config_records[_STATE] = ConfigRecord(session.to_record())


def _draws(context: Context) -> list[float]:
    """When this device joined draws that have not ended in its masked upload."""
    record = context.state.config_records.get(_DRAWS)
    times = record.get("times") if record is not None else []
    return [t for t in times if isinstance(t, float)] if isinstance(times, list) else []
