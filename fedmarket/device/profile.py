"""Who a device is and what its owner allows: data, privacy cap, ledger location."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from flwr.app import Context

from fedmarket.data.dataset import Dataset
from fedmarket.device.eligibility import EligibilityPolicy
from fedmarket.privacy.config import AccountantKind
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.types import DeviceId


@dataclass(frozen=True)
class DeviceProfile:
    """Everything the ClientApp needs to know about the device it runs on."""

    device: DeviceId
    data: Dataset
    home: Path
    epsilon_cap: float
    delta: float = 1e-5
    accountant: AccountantKind = "prv"
    private: bool = True
    account: LocalAccount | None = None  # payout key: signs receipts, receives rewards
    eligibility: EligibilityPolicy | None = None  # the owner's conditions (None: always)

    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger(
            self.home,
            device=self.device,
            dataset=self.data.fingerprint(),
            epsilon_cap=self.epsilon_cap,
            delta=self.delta,
            accountant=self.accountant,
        )


DeviceResolver = Callable[[Context], DeviceProfile]
"""Finds the device profile for the node a message arrived on (simulation or deployment)."""
