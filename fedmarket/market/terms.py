"""The market terms of a round on the wire, and the receipt a device signs for its upload.

The server adds ``market`` (task, chain, market contract, round, CID of the model it sends) to
the round config; a device that trained signs an EIP-712 receipt over those terms and the
sha256 of its masked upload, and returns it beside the upload as ``receipt``. The server rebuilds
the receipt from the terms and the upload it actually received, so a receipt only verifies for
the bytes the device really sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from eth_account.signers.local import LocalAccount
from flwr.app import ConfigRecord, RecordDict

from fedmarket.exceptions import ProtocolViolation
from fedmarket.market.bundle import SignedReceipt
from fedmarket.receipts import Receipt, sign_receipt

MARKET = "market"
RECEIPT = "receipt"


@dataclass(frozen=True)
class MarketTerms:
    """Which task, chain and market contract a federation's rounds are paid from."""

    task: int
    chain_id: int
    market: str


@dataclass(frozen=True)
class RoundTerms:
    """The market terms of one round, as sent to the devices."""

    terms: MarketTerms
    round: int
    model_cid: str  # the global model the devices train from

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "task": self.terms.task,
                "chain_id": self.terms.chain_id,
                "market": self.terms.market,
                "round": self.round,
                "model_cid": self.model_cid,
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> RoundTerms | None:
        record = content.config_records.get(MARKET)
        if record is None:
            return None
        return cls(
            MarketTerms(_int(record, "task"), _int(record, "chain_id"), _str(record, "market")),
            _int(record, "round"),
            _str(record, "model_cid"),
        )

    def receipt(
        self, device: str, upload: np.ndarray, *, weight: int, epsilon_micros: int, delta_e18: int
    ) -> Receipt:
        return Receipt(
            task=self.terms.task,
            round=self.round,
            device=device,
            model_cid=self.model_cid,
            upload_digest=upload_digest(upload),
            weight=weight,
            epsilon_micros=epsilon_micros,
            delta_e18=delta_e18,
        )


def upload_digest(upload: np.ndarray) -> bytes:
    """sha256 of a masked upload, as uint32 little-endian words."""
    return hashlib.sha256(np.ascontiguousarray(upload, dtype="<u4").tobytes()).digest()


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
        model_cid=terms.model_cid,
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
    """The server's side: the receipt for the upload it received (verified later, by the
    publisher, against the chain and market)."""
    signature = record.get("signature")
    if not isinstance(signature, bytes):
        raise ProtocolViolation("receipt has no signature bytes")
    weight, epsilon_micros, delta_e18 = (
        _int(record, key) for key in ("weight", "epsilon_micros", "delta_e18")
    )
    device = _str(record, "device")
    receipt = terms.receipt(
        device, upload, weight=weight, epsilon_micros=epsilon_micros, delta_e18=delta_e18
    )
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
