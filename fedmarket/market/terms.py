"""The market terms of a round on the wire, the receipt a device signs for its upload, and the
acknowledgement the aggregator signs back.

The server adds ``market`` (task, chain, market contract, aggregator, round, commitment of the
model it sends) to the round config; a device that trained signs an EIP-712 receipt over those
terms and the sha256 of its masked upload, and returns it beside the upload as ``receipt``. The
server rebuilds the receipt from the terms and the upload it actually received, so a receipt only
verifies for the bytes the device really sent. For each upload it accepts, the server sends an
``ack`` record (:class:`~fedmarket.acks.Ack` and the aggregator's signature) with the next stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from eth_account.signers.local import LocalAccount
from flwr.app import ConfigRecord, RecordDict

from fedmarket.acks import Ack
from fedmarket.exceptions import FedmarketError, ProtocolViolation
from fedmarket.market.bundle import SignedReceipt
from fedmarket.market.sealed_models import SALT_BYTES, model_commitment
from fedmarket.protocol import UPDATE_WEIGHT
from fedmarket.receipts import Receipt, sign_receipt, verify_receipt
from fedmarket.secagg.transcript import upload_digest

MARKET = "market"
RECEIPT = "receipt"
ACK = "ack"


@dataclass(frozen=True)
class MarketTerms:
    """Which task, chain and market contract a federation's rounds are paid from."""

    task: int
    chain_id: int
    market: str
    aggregator: str  # the task's aggregator: the key that signs acknowledgements


@dataclass(frozen=True)
class RoundTerms:
    """The market terms of one round, as sent to the devices."""

    terms: MarketTerms
    round: int
    trained_from: bytes  # commitment of the global model the devices train from
    model_salt: bytes  # its salt: devices check the commitment against the weights they got

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "task": self.terms.task,
                "chain_id": self.terms.chain_id,
                "market": self.terms.market,
                "aggregator": self.terms.aggregator,
                "round": self.round,
                "trained_from": self.trained_from,
                "model_salt": self.model_salt,
            }
        )

    def check_model(self, model: bytes) -> None:
        """Raise ProtocolViolation unless ``trained_from`` commits to ``model`` (the global
        model's bytes, as the device received them): a device signs nothing for a model
        commitment it cannot check."""
        if model_commitment(self.model_salt, model) != self.trained_from:
            raise ProtocolViolation(
                "market terms: trained_from does not commit to the global model I was sent"
            )

    @classmethod
    def from_content(cls, content: RecordDict) -> RoundTerms | None:
        record = content.config_records.get(MARKET)
        return None if record is None else cls.from_record(record)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundTerms:
        terms = MarketTerms(
            _int(record, "task"),
            _int(record, "chain_id"),
            _str(record, "market"),
            _str(record, "aggregator"),
        )
        trained_from, salt = record.get("trained_from"), record.get("model_salt")
        if not isinstance(trained_from, bytes) or len(trained_from) != 32:
            raise ProtocolViolation("market terms: trained_from must be 32 bytes")
        if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
            raise ProtocolViolation(f"market terms: model_salt must be {SALT_BYTES} bytes")
        return cls(terms, _int(record, "round"), trained_from, salt)

    def receipt(
        self, device: str, upload: np.ndarray, *, weight: int, epsilon_micros: int, delta_e18: int
    ) -> Receipt:
        return Receipt(
            task=self.terms.task,
            round=self.round,
            device=device,
            trained_from=self.trained_from,
            upload_digest=upload_digest(upload),
            weight=weight,
            epsilon_micros=epsilon_micros,
            delta_e18=delta_e18,
        )


def sign_upload(
    terms: RoundTerms,
    account: LocalAccount,
    upload: np.ndarray,
    *,
    weight: int,
    epsilon: float,
    delta: float,
) -> ConfigRecord:
    """The device's side: sign a receipt for ``upload``; return it as the reply's record."""
    receipt = Receipt.for_update(
        task=terms.terms.task,
        round=terms.round,
        device=account.address,
        trained_from=terms.trained_from,
        upload_digest=upload_digest(upload),
        weight=weight,
        epsilon=epsilon,
        delta=delta,
    )
    signature = sign_receipt(
        receipt, account, chain_id=terms.terms.chain_id, market=terms.terms.market
    )
    return ConfigRecord(
        {
            "device": receipt.device,
            "weight": receipt.weight,
            "epsilon_micros": receipt.epsilon_micros,
            "delta_e18": receipt.delta_e18,
            "signature": signature,
        }
    )


def read_receipt(record: ConfigRecord, terms: RoundTerms, upload: np.ndarray) -> SignedReceipt:
    """The server's side: the receipt for the upload it received, checked on arrival (its
    fields, its weight, and that its device signed it for these terms and this upload).

    Raises
    ------
    ProtocolViolation
        naming what is wrong; the caller drops the receipt, never the round.
    """
    signature = record.get("signature")
    if not isinstance(signature, bytes):
        raise ProtocolViolation("receipt has no signature bytes")
    weight, epsilon_micros, delta_e18 = (
        _int(record, key) for key in ("weight", "epsilon_micros", "delta_e18")
    )
    if weight != UPDATE_WEIGHT:
        raise ProtocolViolation(f"receipt weight must be {UPDATE_WEIGHT}, got {weight}")
    device = _str(record, "device")
    try:
        receipt = terms.receipt(
            device, upload, weight=weight, epsilon_micros=epsilon_micros, delta_e18=delta_e18
        )
        verify_receipt(receipt, signature, chain_id=terms.terms.chain_id, market=terms.terms.market)
    except (FedmarketError, ValueError, TypeError) as exc:
        raise ProtocolViolation(f"unusable receipt: {exc}") from None
    return SignedReceipt(receipt, signature)


def _int(record: ConfigRecord, key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolViolation(f"{key} must be an integer, got {value!r}")
    return value


def _str(record: ConfigRecord, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ProtocolViolation(f"{key} must be text, got {value!r}")
    return value


def ack_record(ack: Ack, signature: bytes) -> ConfigRecord:
    """The server's side: an acknowledgement as the record sent to the device."""
    return ConfigRecord({**ack.to_json(), "signature": signature})


def read_ack(content: RecordDict) -> tuple[Ack, bytes] | None:
    """The device's side: the acknowledgement in a message, if any (not yet verified)."""
    record = content.config_records.get(ACK)
    if record is None:
        return None
    signature = record.get("signature")
    if not isinstance(signature, bytes):
        raise ProtocolViolation("ack has no signature bytes")
    try:
        return Ack.from_json(dict(record)), signature
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolViolation(f"ack is malformed: {exc}") from None
