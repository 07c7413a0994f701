"""EIP-712 contribution receipts: a device's signed statement of one update it contributed.

The typed data matches ``DataMarket.Receipt`` (domain "fedmarket", version "2", the chain id and
the market's address), so the contract's ``receiptSigner`` view recovers the same signer as
:func:`recover_signer`. A signature is bound to one task, round, model and upload: replaying it
for another task or round recovers a different address. The model a device trained from is named
by its hiding commitment (:mod:`fedmarket.market.models`), never by a plaintext CID.
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from fedmarket.exceptions import InvalidInput, ReceiptInvalid

_UINT64 = 2**64 - 1
RECEIPT_TYPES = {
    "Receipt": [
        {"name": "task", "type": "uint256"},
        {"name": "round", "type": "uint64"},
        {"name": "device", "type": "address"},
        {"name": "trainedFrom", "type": "bytes32"},
        {"name": "uploadDigest", "type": "bytes32"},
        {"name": "weight", "type": "uint64"},
        {"name": "epsilonMicros", "type": "uint64"},
        {"name": "deltaE18", "type": "uint64"},
    ]
}


@dataclass(frozen=True)
class Receipt:
    """One contributed update; ε is stored times 1e6 rounded up, δ times 1e18, as on chain."""

    task: int
    round: int
    device: str
    trained_from: bytes  # commitment of the global model the update was trained from
    upload_digest: bytes
    weight: int  # the update's weight in the sum: 1 (no example count leaves a device)
    epsilon_micros: int
    delta_e18: int

    def __post_init__(self) -> None:
        for name in ("task", "round", "weight", "epsilon_micros", "delta_e18"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"receipt {name} must be an integer, got {value!r}")
        if self.task < 1:
            raise InvalidInput(f"receipt task must be >= 1, got {self.task}")
        if not 1 <= self.round <= _UINT64:
            raise InvalidInput(f"receipt round must be in 1..2**64-1, got {self.round}")
        if not 1 <= self.weight <= _UINT64:
            raise InvalidInput(f"receipt weight must be >= 1, got {self.weight}")
        if not 0 <= self.epsilon_micros <= _UINT64:
            raise InvalidInput(f"receipt epsilon_micros must be >= 0, got {self.epsilon_micros}")
        if not 0 < self.delta_e18 < 10**18:
            raise InvalidInput(f"receipt delta_e18 must encode 0 < delta < 1, got {self.delta_e18}")
        if len(self.upload_digest) != 32:
            raise InvalidInput(f"upload_digest must be 32 bytes, got {len(self.upload_digest)}")
        if len(self.trained_from) != 32:
            raise InvalidInput(f"trained_from must be 32 bytes, got {len(self.trained_from)}")
        object.__setattr__(self, "device", to_checksum_address(self.device))

    @classmethod
    def for_update(
        cls,
        *,
        task: int,
        round: int,
        device: str,
        trained_from: bytes,
        upload_digest: bytes,
        weight: int,
        epsilon: float,
        delta: float,
    ) -> Receipt:
        """Build a receipt from ε and δ as the privacy ledger reports them."""
        if not math.isfinite(epsilon) or epsilon < 0:
            raise InvalidInput(f"epsilon must be a finite number >= 0, got {epsilon}")
        return cls(
            task=task,
            round=round,
            device=device,
            trained_from=trained_from,
            upload_digest=upload_digest,
            weight=weight,
            epsilon_micros=math.ceil(epsilon * 1e6),  # rounded up: never understate the spend
            delta_e18=builtins.round(delta * 1e18),
        )

    def as_struct(self) -> dict[str, Any]:
        """The ``DataMarket.Receipt`` struct, as web3 and EIP-712 take it."""
        return {
            "task": self.task,
            "round": self.round,
            "device": self.device,
            "trainedFrom": self.trained_from,
            "uploadDigest": self.upload_digest,
            "weight": self.weight,
            "epsilonMicros": self.epsilon_micros,
            "deltaE18": self.delta_e18,
        }


def eip712_domain(chain_id: int, market: str) -> dict[str, Any]:
    """The market's EIP-712 domain: receipts and acknowledgements are signed for one contract."""
    return {
        "name": "fedmarket",
        "version": "2",
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(market),
    }


def sign_receipt(receipt: Receipt, account: LocalAccount, *, chain_id: int, market: str) -> bytes:
    """Sign ``receipt`` with the device's key; the key must be the receipt's device."""
    if account.address != receipt.device:
        raise InvalidInput(
            f"receipt names device {receipt.device}, but the key is {account.address}"
        )
    signed = account.sign_typed_data(
        eip712_domain(chain_id, market), RECEIPT_TYPES, receipt.as_struct()
    )
    return bytes(signed.signature)


def recover_signer(receipt: Receipt, signature: bytes, *, chain_id: int, market: str) -> str:
    message = encode_typed_data(eip712_domain(chain_id, market), RECEIPT_TYPES, receipt.as_struct())
    try:
        return str(Account.recover_message(message, signature=signature))
    except Exception as exc:  # eth_keys raises several types for malformed signatures
        raise ReceiptInvalid(f"receipt signature is malformed ({type(exc).__name__})") from None


def verify_receipt(receipt: Receipt, signature: bytes, *, chain_id: int, market: str) -> None:
    """Raise :class:`ReceiptInvalid` unless ``receipt.device`` signed exactly this receipt."""
    signer = recover_signer(receipt, signature, chain_id=chain_id, market=market)
    if signer != receipt.device:
        raise ReceiptInvalid(
            f"receipt for task {receipt.task} round {receipt.round} names device "
            f"{receipt.device} but was signed by {signer}: it was altered or replayed "
            "from another task, round or chain; it earns nothing"
        )
