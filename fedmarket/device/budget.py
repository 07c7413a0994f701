"""How a device's privacy ledger is opened: only the owner's explicit choices create or reset it.

``fedmarket device join`` calls :func:`prepare_ledger` before anything starts. Without a flag the
identity's ledger must exist and verify. ``new_ledger`` (``--new-ledger``) creates it at ε 0: right
only for an identity that never trained, and refused where the device keeps acknowledgements of
uploads (it did train). ``new_data`` (``--new-data``) records the owner's declaration that every
record is new, never used for training by this identity: a new generation whose ε starts at 0.
"""

from __future__ import annotations

from pathlib import Path

from eth_account.signers.local import LocalAccount
from flwr.app import RecordDict

from fedmarket.device.acks import AckBook
from fedmarket.exceptions import InvalidInput
from fedmarket.market.terms import RoundTerms
from fedmarket.privacy.config import AccountantKind
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.privacy.replay import PaidRound
from fedmarket.types import DatasetId


def prepare_ledger(
    home: Path,
    identity: LocalAccount,
    *,
    epsilon_cap: float,
    delta: float,
    accountant: AccountantKind,
    device: str,
    dataset: DatasetId,
    new_ledger: bool = False,
    new_data: bool = False,
) -> PrivacyLedger:
    """``identity``'s ledger, verified, with the owner's cap; created or moved to new data only
    when asked.

    Raises
    ------
    LedgerMissing
        without ``new_ledger``, if the identity has no ledger (or it was deleted).
    LedgerCorrupted
        if the ledger does not verify.
    InvalidInput
        if both flags are given, ``new_ledger`` where a ledger exists or the device kept
        acknowledgements, or ``new_data`` for data this identity already used.
    """
    if new_ledger and new_data:
        raise InvalidInput(
            "--new-ledger and --new-data exclude each other: --new-ledger starts an identity "
            "that never trained, --new-data a new generation of an existing ledger"
        )
    if new_ledger:
        book = AckBook(home, identity.address)
        if any(book.folder.glob("*.json")):
            raise InvalidInput(
                f"identity {identity.address} trained before: {book.folder} holds the "
                "aggregators' acknowledgements of its uploads. Restore its privacy ledger from a "
                "backup; a new one would forget the ε already spent"
            )
        return PrivacyLedger.create(
            home,
            identity,
            epsilon_cap=epsilon_cap,
            delta=delta,
            accountant=accountant,
            device=device,
            dataset=dataset,
        )
    ledger = PrivacyLedger.open(home, identity).use_settings(
        epsilon_cap=epsilon_cap, delta=delta, accountant=accountant
    )
    if new_data:
        ledger.declare_new_data(dataset=dataset, device=device)
    return ledger


def paid_round(content: RecordDict) -> PaidRound | None:
    """The market round a train message is for (None: an unpaid round)."""
    terms = RoundTerms.from_content(content)
    if terms is None:
        return None
    market = terms.terms
    return PaidRound(market.chain_id, market.market, market.task, terms.round)
