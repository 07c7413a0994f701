"""Who a device is and what its owner allows: identity, data, privacy cap, eligibility."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from flwr.app import Context

from fedmarket.data.dataset import Dataset
from fedmarket.device.eligibility import EligibilityPolicy
from fedmarket.exceptions import InvalidInput
from fedmarket.privacy.config import AccountantKind
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.secagg.parameters import DEFAULT_ASSUMPTIONS, Assumptions
from fedmarket.types import DeviceId


@dataclass(frozen=True)
class DeviceProfile:
    """Everything the ClientApp needs to know about the device it runs on.

    ``identity`` is the device's key: its privacy ledger belongs to it (not to ``device``, a
    display name, nor to the data). With a payout key (``account``) the two are the same key,
    so the ε the device signs into its receipts is the ε of the ledger of the signing key.
    ``secagg_policy`` is the weakest SecAgg+ round the owner allows: the round must assume at
    least this share of colluding devices and this security level.
    """

    device: DeviceId
    data: Dataset
    home: Path
    epsilon_cap: float
    identity: LocalAccount  # owns the privacy ledger; signs its entries
    delta: float = 1e-5
    accountant: AccountantKind = "prv"
    private: bool = True
    account: LocalAccount | None = None  # payout key: signs receipts, receives rewards
    eligibility: EligibilityPolicy | None = None  # the owner's conditions (None: always)
    secagg_policy: Assumptions = DEFAULT_ASSUMPTIONS  # the weakest SecAgg+ round it joins

    def __post_init__(self) -> None:
        if self.account is not None and self.account.address != self.identity.address:
            raise InvalidInput(
                f"device {self.device}: the payout key {self.account.address} must be its "
                f"identity key {self.identity.address}, whose ledger backs the ε it signs"
            )

    def ledger(self) -> PrivacyLedger:
        """The identity's ledger with the owner's current cap; never created here.

        Raises
        ------
        LedgerMissing
            if the identity has no ledger (see :meth:`create_ledger`).
        """
        return PrivacyLedger.open(self.home, self.identity).use_settings(
            epsilon_cap=self.epsilon_cap, delta=self.delta, accountant=self.accountant
        )

    def create_ledger(self) -> PrivacyLedger:
        """Start the identity's ledger at ε 0: the owner's explicit act, for a first run."""
        return PrivacyLedger.create(
            self.home,
            self.identity,
            epsilon_cap=self.epsilon_cap,
            delta=self.delta,
            accountant=self.accountant,
            device=self.device,
            dataset=self.data.fingerprint(),
        )


DeviceResolver = Callable[[Context], DeviceProfile]
"""Finds the device profile for the node a message arrived on (simulation or deployment)."""
