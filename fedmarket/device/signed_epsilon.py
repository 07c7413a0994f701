"""The ε a device signed into its published receipts, checked against its privacy ledger.

Every receipt in a committed round's receipts bundle is public, signed by the device's key, and
states the ε (and δ) its ledger reported for that round; the device cannot take it back. So the
receipts are a record of the ledger that lives outside the device: a ledger restored from an old
copy, started afresh for a key that had trained, or edited, no longer explains them.
:func:`check_signed_epsilon` says where: a receipt for a round the ledger does not hold, one
whose ε differs from what the ledger reserved for it or exceeds the ledger's ε for that
generation, and ε that goes down from one receipt to the next within a generation.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from fedmarket.ledger.base import Ledger
from fedmarket.market.bundle import ReceiptsBundle
from fedmarket.market.lineage import verified_prefix
from fedmarket.privacy.ledger import PrivacyLedger
from fedmarket.privacy.replay import LedgerEntry, PaidRound
from fedmarket.store.base import ContentStore


@dataclass(frozen=True)
class SignedEpsilon:
    """What one published receipt of the device states: its round, ε x 1e6 (rounded up) and
    δ x 1e18."""

    paid: PaidRound
    epsilon_micros: int
    delta_e18: int


def published_epsilons(chain: Ledger, store: ContentStore, account: str) -> list[SignedEpsilon]:
    """Every receipt ``account`` signed in the verified committed rounds of every task."""
    account = to_checksum_address(account)
    found: list[SignedEpsilon] = []
    for task in sorted({c.task for c in chain.round_commits()}):
        lineage, _ = verified_prefix(
            chain, store, task, chain_id=chain.chain_id, market=chain.market_address
        )
        for verified in lineage.rounds if lineage else ():
            bundle = ReceiptsBundle.from_bytes(store.get_bytes(verified.bundle_cid))
            found.extend(
                SignedEpsilon(
                    PaidRound(bundle.chain_id, bundle.market, bundle.task, bundle.round),
                    s.receipt.epsilon_micros,
                    s.receipt.delta_e18,
                )
                for s in bundle.receipts
                if s.receipt.device == account
            )
    return found


def check_signed_epsilon(ledger: PrivacyLedger, signed: Iterable[SignedEpsilon]) -> list[str]:
    """What the published receipts state that ``ledger`` does not explain (empty: all agree)."""
    rounds = {_key(e.paid): e for e in ledger.history if e.paid is not None}
    delta_e18 = builtins.round(ledger.delta * 1e18)
    problems: list[str] = []
    matched: list[tuple[LedgerEntry, SignedEpsilon]] = []
    for s in sorted(signed, key=lambda s: _key(s.paid)):
        where, stated = _where(s.paid), s.epsilon_micros / 1e6
        entry = rounds.get(_key(s.paid))
        if entry is None:
            problems.append(
                f"{where}: the published receipt states ε {stated:.6f}, but the ledger has no "
                "such round: it was replaced or restored from an older copy, or this key trains "
                "on another device too"
            )
            continue
        if entry.status == "released":
            problems.append(f"{where}: a receipt was published for a round the ledger released")
        if s.epsilon_micros != math.ceil(entry.epsilon_after * 1e6):
            problems.append(
                f"{where}: the receipt states ε {stated:.6f}, the ledger reserved ε "
                f"{entry.epsilon_after:.6f} for that round"
            )
        ceiling = ledger.epsilon_of(entry.generation)
        if s.epsilon_micros > math.ceil(ceiling * 1e6):
            problems.append(
                f"{where}: the receipt states ε {stated:.6f}, above the ledger's ε "
                f"{ceiling:.6f} for generation {entry.generation}"
            )
        if s.delta_e18 != delta_e18:
            problems.append(
                f"{where}: the receipt states δ {s.delta_e18 / 1e18:g}, the ledger's δ is "
                f"{ledger.delta:g}"
            )
        matched.append((entry, s))
    highest: dict[int, tuple[int, PaidRound]] = {}
    for entry, s in sorted(matched, key=lambda m: m[0].seq):  # in the order it was signed
        before = highest.get(entry.generation)
        if before is not None and s.epsilon_micros < before[0]:
            problems.append(
                f"{_where(s.paid)}: the receipt states ε {s.epsilon_micros / 1e6:.6f}, lower "
                f"than the ε {before[0] / 1e6:.6f} signed before it for {_where(before[1])} in "
                f"generation {entry.generation}: ε went down"
            )
        if before is None or s.epsilon_micros > before[0]:
            highest[entry.generation] = (s.epsilon_micros, s.paid)
    return problems


def _key(paid: PaidRound) -> tuple[int, str, int, int]:
    return (paid.chain_id, paid.market.lower(), paid.task, paid.round)


def _where(paid: PaidRound) -> str:
    return f"task {paid.task} round {paid.round} (chain {paid.chain_id}, market {paid.market})"
