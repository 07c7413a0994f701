"""EIP-712 acknowledgements: the aggregator's signed word that it accepted a device's upload.

An :class:`Ack` names the task, round, device, the sha256 of the masked upload it accepted and
the device's cumulative reward in the task once that round is paid. It matches
``DataMarket.Ack``. A root of that round or later that pays the device less is challenged with
it (``challengeWithAck``, :mod:`fedmarket.market.watch`): the aggregator must show a leaf paying
at least ``cumulative_amount`` or the root is voided. Once the task commits no more (its close
grace is over, or a root was voided), the ack is also paid directly (``claimAcknowledged``)
from the escrow no root reserves, which covers rounds the aggregator acknowledged but never
committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from fedmarket.exceptions import InvalidInput, ReceiptInvalid
from fedmarket.receipts import eip712_domain

_UINT64 = 2**64 - 1
ACK_TYPES = {
    "Ack": [
        {"name": "task", "type": "uint256"},
        {"name": "round", "type": "uint64"},
        {"name": "device", "type": "address"},
        {"name": "uploadDigest", "type": "bytes32"},
        {"name": "cumulativeAmount", "type": "uint256"},
    ]
}


@dataclass(frozen=True)
class Ack:
    """The aggregator's acknowledgement of one accepted upload (amounts in token base units)."""

    task: int
    round: int
    device: str
    upload_digest: bytes
    cumulative_amount: int

    def __post_init__(self) -> None:
        for name in ("task", "round", "cumulative_amount"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"ack {name} must be an integer, got {value!r}")
        if self.task < 1 or not 1 <= self.round <= _UINT64:
            raise InvalidInput(f"ack task and round must be >= 1, got {self.task}, {self.round}")
        if not 0 < self.cumulative_amount < 2**256:
            raise InvalidInput("ack cumulative_amount must be in 1..2**256-1")
        if len(self.upload_digest) != 32:
            raise InvalidInput(f"ack upload_digest must be 32 bytes, got {len(self.upload_digest)}")
        object.__setattr__(self, "device", to_checksum_address(self.device))

    def as_struct(self) -> dict[str, Any]:
        """The ``DataMarket.Ack`` struct, as web3 and EIP-712 take it."""
        return {
            "task": self.task,
            "round": self.round,
            "device": self.device,
            "uploadDigest": self.upload_digest,
            "cumulativeAmount": self.cumulative_amount,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "round": self.round,
            "device": self.device,
            "upload_digest": self.upload_digest.hex(),
            # Decimal text: token amounts exceed JSON's exact integer range in some readers.
            "cumulative_amount": str(self.cumulative_amount),
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Ack:
        return cls(
            task=item["task"],
            round=item["round"],
            device=item["device"],
            upload_digest=bytes.fromhex(item["upload_digest"]),
            cumulative_amount=int(item["cumulative_amount"]),
        )


def sign_ack(ack: Ack, aggregator: LocalAccount, *, chain_id: int, market: str) -> bytes:
    """Sign ``ack`` with the task's aggregator key."""
    domain = eip712_domain(chain_id, market)
    return bytes(aggregator.sign_typed_data(domain, ACK_TYPES, ack.as_struct()).signature)


def verify_ack(ack: Ack, signature: bytes, *, aggregator: str, chain_id: int, market: str) -> None:
    """Raise :class:`ReceiptInvalid` unless ``aggregator`` signed exactly ``ack``."""
    message = encode_typed_data(eip712_domain(chain_id, market), ACK_TYPES, ack.as_struct())
    try:
        signer = str(Account.recover_message(message, signature=signature))
    except Exception as exc:  # eth_keys raises several types for malformed signatures
        raise ReceiptInvalid(f"ack signature is malformed ({type(exc).__name__})") from None
    if signer != to_checksum_address(aggregator):
        raise ReceiptInvalid(
            f"ack for task {ack.task} round {ack.round} was signed by {signer}, not by the "
            f"task's aggregator {aggregator}; it proves nothing"
        )
