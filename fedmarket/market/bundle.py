"""The receipts bundle of a round: every survivor's signed receipt, as canonical JSON (RFC 8785),
and the round's SecAgg+ transcript (:mod:`fedmarket.secagg.transcript`).

Canonical bytes give one CID per bundle, so anyone holding the receipts and the transcript can
rebuild the bundle, its CID and the round's rewards and compare them with what was committed on
chain; the aggregator commits the bundle, and with it the transcript, in its round's
transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import rfc8785

from fedmarket.exceptions import DataError
from fedmarket.receipts import Receipt

BUNDLE_FORMAT = "fedmarket.receipts/3"
_READABLE = ("fedmarket.receipts/2", BUNDLE_FORMAT)  # /2: no transcript


@dataclass(frozen=True)
class SignedReceipt:
    receipt: Receipt
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "task": r.task,
            "round": r.round,
            "device": r.device,
            "trained_from": r.trained_from.hex(),
            "upload_digest": r.upload_digest.hex(),
            "weight": r.weight,
            "epsilon_micros": r.epsilon_micros,
            "delta_e18": r.delta_e18,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> SignedReceipt:
        receipt = Receipt(
            task=item["task"],
            round=item["round"],
            device=item["device"],
            trained_from=bytes.fromhex(item["trained_from"]),
            upload_digest=bytes.fromhex(item["upload_digest"]),
            weight=item["weight"],
            epsilon_micros=item["epsilon_micros"],
            delta_e18=item["delta_e18"],
        )
        return cls(receipt, bytes.fromhex(item["signature"]))


@dataclass(frozen=True)
class ReceiptsBundle:
    """The receipts that earned rewards in one round, sorted by device address."""

    task: int
    round: int
    chain_id: int
    market: str
    receipts: tuple[SignedReceipt, ...]
    transcript: dict[str, Any] | None = None  # Transcript.to_json() of a secure round

    def to_bytes(self) -> bytes:
        document: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "task": self.task,
            "round": self.round,
            "chain_id": self.chain_id,
            "market": self.market,
            "receipts": [
                s.to_json() for s in sorted(self.receipts, key=lambda s: s.receipt.device)
            ],
            "transcript": self.transcript,
        }
        return rfc8785.dumps(document)

    @classmethod
    def from_bytes(cls, data: bytes) -> ReceiptsBundle:
        try:
            document = json.loads(data)
            if document.get("format") not in _READABLE:
                raise ValueError(f"format is {document.get('format')!r}, not {BUNDLE_FORMAT}")
            transcript = document.get("transcript")
            if transcript is not None and not isinstance(transcript, dict):
                raise ValueError("transcript must be an object")
            return cls(
                task=document["task"],
                round=document["round"],
                chain_id=document["chain_id"],
                market=document["market"],
                receipts=tuple(SignedReceipt.from_json(i) for i in document["receipts"]),
                transcript=transcript,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a receipts bundle: {exc}") from None


def canonical_json(document: Any) -> bytes:
    """RFC 8785 canonical JSON bytes (for evidence and manifests stored by CID)."""
    return rfc8785.dumps(document)
