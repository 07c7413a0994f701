"""The device's SecAgg+ as a Flower ClientApp mod on the Message API.

The mod answers the four stage messages itself, keeping the round's session in
``Context.state``; on the mask stage it lets the app train, then replaces the plain delta by
the masked vector, so the update never leaves the device unmasked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from eth_account.signers.local import LocalAccount
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmarket.exceptions import FedmarketError, ProtocolViolation
from fedmarket.market.terms import RECEIPT, RoundTerms, sign_upload
from fedmarket.protocol import DELTA, METRICS, UPDATE_WEIGHT, weights_from_record
from fedmarket.secagg import messages as m
from fedmarket.secagg.codec import encode, flatten
from fedmarket.secagg.config import RoundParams
from fedmarket.secagg.device import DeviceSession, Stage
from fedmarket.secagg.keys import PublicKeys

log = logging.getLogger(__name__)
_STATE = "secagg.session"


SignerResolver = Callable[[Context], LocalAccount | None]
"""The device's payout key, to sign a receipt for each masked upload (None: no receipts)."""


def make_secagg_mod(*, required: bool = True, signer: SignerResolver | None = None) -> Mod:
    """The mod; with ``required`` the device refuses to train in rounds without SecAgg+.

    With ``signer``, a device that trains in a round carrying market terms signs an EIP-712
    receipt over its masked upload and sends it along.
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
            content = _handle(msg, context, call_next, config, signer)
        except FedmarketError as exc:
            log.warning("secagg %s refused: %s", stage, exc)
            content = RecordDict(
                {m.SECAGG: ConfigRecord({"stage": str(stage), "refused": str(exc)})}
            )
        return Message(content, reply_to=msg)

    return secagg_mod


def _handle(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    config: ConfigRecord,
    signer: SignerResolver | None,
) -> RecordDict:
    name = config.get("stage")
    if name not in {s.value for s in Stage}:
        raise ProtocolViolation(f"unknown secagg stage {name!r}")
    stage = Stage(name)
    if stage == Stage.SETUP:
        return _setup(msg, context, config)
    session = _load(context)
    m.check_header(config, stage, session.params.session)
    if stage == Stage.SHARE_KEYS:
        upload = session.share_keys(_peer_keys(config))
        reply = m.record(
            stage,
            session.params.session,
            {
                "destinations": list(upload.ciphertexts),
                "ciphertexts": list(upload.ciphertexts.values()),
                "commitment": upload.seed_commitment,
            },
        )
        content = RecordDict({m.SECAGG: reply})
    elif stage == Stage.MASK:
        content = _mask(msg, context, call_next, config, session, signer)
    else:
        shares = session.unmask(m.items(config, "survivors", int), m.items(config, "dropped", int))
        reply = m.record(
            stage,
            session.params.session,
            {
                "seed_owners": list(shares.seed),
                "seed_shares": list(shares.seed.values()),
                "key_owners": list(shares.mask_key),
                "key_shares": list(shares.mask_key.values()),
            },
        )
        content = RecordDict({m.SECAGG: reply})
    _store(context, session)
    return content


def _setup(msg: Message, context: Context, config: ConfigRecord) -> RecordDict:
    params = RoundParams.from_record(
        {k[6:]: v for k, v in config.items() if k.startswith("param.")}
    )
    stored = context.state.config_records.get(_STATE)
    if stored is not None and stored.get("param.session") == params.session:
        raise ProtocolViolation("setup replayed for a round already under way")
    session, keys = DeviceSession.setup(msg.metadata.dst_node_id, params)
    _store(context, session)
    return RecordDict(
        {
            m.SECAGG: m.record(
                Stage.SETUP, params.session, {"cipher_pk": keys.cipher, "mask_pk": keys.mask}
            )
        }
    )


def _mask(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    config: ConfigRecord,
    session: DeviceSession,
    signer: SignerResolver | None,
) -> RecordDict:
    inbox = m.mapping(config, "sources", "ciphertexts", bytes)
    # Refuse before training if the shares cannot carry a masked upload: a round the device
    # must refuse anyway then costs it no privacy.
    session.accept_shares(inbox)
    _check_terms(msg, context, signer)
    _store(context, session)  # past the mask stage for good: a replay of it is refused
    trained = call_next(msg, context)
    if trained.has_error():
        # The reason may quote the records (an exception's text): it stays in the log here.
        log.error("training failed (its ε is charged): %s", trained.error.reason)
        raise ProtocolViolation("training failed on the device (the reason is in its log)")
    content = trained.content
    if DELTA not in content.array_records:  # declined: nothing to mask, nothing to send
        session.stage = Stage.MASK
        _store(context, session)
        content[m.SECAGG] = m.record(Stage.MASK, session.params.session, {})
        return content
    delta = flatten(weights_from_record(content.array_records.pop(DELTA)))
    encoded = encode(delta, session.params)
    upload = session.mask_update(encoded)
    content[m.MASKED] = ArrayRecord({"vector": Array(upload.vector)})
    content[m.SECAGG] = m.record(
        Stage.MASK,
        session.params.session,
        {"mask_peers": list(upload.mask_peers), "rejected": list(upload.rejected)},
    )
    for reason in upload.rejected:
        log.warning("secagg: %s", reason)
    _sign(msg, context, content, signer, upload.vector)
    return content


def _check_terms(msg: Message, context: Context, signer: SignerResolver | None) -> None:
    """Sign a throw-away receipt under the round's market terms before training: terms that
    cannot carry a receipt refuse the round while it costs the device nothing."""
    try:
        terms = RoundTerms.from_content(msg.content)
        account = signer(context) if signer is not None and terms is not None else None
        if terms is not None and account is not None:
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


def _peer_keys(config: ConfigRecord) -> dict[int, PublicKeys]:
    peers = m.items(config, "peers", int)
    ciphers, masks = m.items(config, "peer_cipher", bytes), m.items(config, "peer_mask", bytes)
    if not len(peers) == len(ciphers) == len(masks) or len(set(peers)) != len(peers):
        raise ProtocolViolation("share_keys: peers and keys must pair up with no repeats")
    return {p: PublicKeys(c, k) for p, c, k in zip(peers, ciphers, masks, strict=True)}


def _load(context: Context) -> DeviceSession:
    stored = context.state.config_records.get(_STATE)
    if stored is None:
        raise ProtocolViolation("no secagg round under way on this device (setup missing)")
    return DeviceSession.from_record(stored)


def _store(context: Context, session: DeviceSession) -> None:
    context.state.config_records[_STATE] = ConfigRecord(session.to_record())
