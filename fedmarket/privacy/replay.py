"""Replaying a privacy ledger's entries into what they say: settings, generations, rounds.

Pure: :func:`derive` takes a verified chain (:mod:`fedmarket.privacy.entries`) and replays it in
order; an entry that makes no sense where it stands (a settle of no pending reservation, a
reservation outside the current generation, a field of the wrong type) raises
:class:`~fedmarket.exceptions.LedgerCorrupted` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from fedmarket.exceptions import InvalidInput, LedgerCorrupted
from fedmarket.privacy.accounting import Spend
from fedmarket.privacy.config import AccountantKind
from fedmarket.privacy.entries import RESTORE, SignedEntry

EntryStatus = Literal["pending", "spent", "released"]


@dataclass(frozen=True)
class PaidRound:
    """The market round a reservation was for; its receipt names the same four values."""

    chain_id: int
    market: str
    task: int
    round: int

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "market": self.market,
            "task": self.task,
            "round": self.round,
        }


@dataclass(frozen=True)
class LedgerEntry:
    """One round of training recorded in the ledger."""

    seq: int  # position of its reserve entry in the chain
    round_label: str
    spend: Spend
    status: EntryStatus
    epsilon_after: float  # ε of its generation once this round is added (what it reported)
    recorded_at: float  # unix seconds of the reservation
    generation: int
    paid: PaidRound | None = None


@dataclass(frozen=True)
class LedgerState:
    """What the entries say, derived in order."""

    delta: float
    accountant: AccountantKind
    epsilon_cap: float
    generation: int
    device: str  # the name last recorded (informational: the ledger is not keyed by it)
    rounds: tuple[LedgerEntry, ...]  # every generation, released rounds included
    datasets: frozenset[str]  # every data fingerprint recorded


def derive(chain: list[SignedEntry], path: Path) -> LedgerState:
    """Replay the entries; an entry that makes no sense where it stands is corruption."""
    genesis = chain[0].body
    reader = _Body(genesis, f"{path}: entry 0")
    accountant = reader.text("accountant")
    if accountant not in ("prv", "rdp"):
        raise LedgerCorrupted(f"{path}: entry 0 names an unknown accountant; {RESTORE}")
    delta, cap = reader.number("delta"), reader.number("epsilon_cap")
    if not (0 < delta < 1 and cap > 0):
        reader.fail("has a δ outside (0, 1) or a cap that is not positive")
    generation, device = 0, reader.text("device")
    rounds: dict[int, LedgerEntry] = {}
    datasets = {d for d in [reader.optional_text("dataset")] if d is not None}
    for entry in chain[1:]:
        body = _Body(entry.body, f"{path}: entry {entry.seq}")
        if entry.kind == "cap":
            cap = body.number("epsilon_cap")
            if cap <= 0:
                body.fail("sets a cap that is not positive")
        elif entry.kind == "new-data":
            if body.integer("generation") != generation + 1:
                body.fail("does not start the next generation")
            generation, device = generation + 1, body.text("device")
            datasets.add(body.text("dataset"))
        elif entry.kind == "reserve":
            if body.integer("generation") != generation:
                body.fail(f"is not in the current generation {generation}")
            device = body.text("device")
            if (dataset := body.optional_text("dataset")) is not None:
                datasets.add(dataset)
            try:
                spend = Spend(
                    body.number("noise_multiplier"),
                    body.number("sample_rate"),
                    body.integer("steps"),
                )
            except InvalidInput as exc:
                body.fail(f"has an invalid spend ({exc})")
            rounds[entry.seq] = LedgerEntry(
                entry.seq,
                body.text("round"),
                spend,
                "pending",
                body.number("epsilon_after"),
                entry.at,
                generation,
                body.paid("paid"),
            )
        elif entry.kind == "settle":
            seq, outcome = body.integer("reserve"), body.text("outcome")
            kept = rounds.get(seq)
            if kept is None or kept.status != "pending" or outcome not in ("commit", "release"):
                body.fail("settles no pending reservation")
            status: EntryStatus = "spent" if outcome == "commit" else "released"
            rounds[seq] = LedgerEntry(
                kept.seq,
                kept.round_label,
                kept.spend,
                status,
                kept.epsilon_after,
                kept.recorded_at,
                kept.generation,
                kept.paid,
            )
    return LedgerState(
        delta=delta,
        accountant="rdp" if accountant == "rdp" else "prv",
        epsilon_cap=cap,
        generation=generation,
        device=device,
        rounds=tuple(rounds.values()),
        datasets=frozenset(datasets),
    )


class _Body:
    """Typed reads of an entry's fields; a wrong one raises :class:`LedgerCorrupted`."""

    def __init__(self, body: Mapping[str, Any], where: str) -> None:
        self.body, self.where = body, where

    def fail(self, why: str) -> NoReturn:
        raise LedgerCorrupted(f"{self.where} {why}; {RESTORE}")

    def _get(self, key: str) -> Any:
        if key not in self.body:
            self.fail(f"lacks {key!r}")
        return self.body[key]

    def number(self, key: str) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"has a non-numeric {key!r}")
        if not math.isfinite(value):
            self.fail(f"has a non-numeric {key!r}")
        return float(value)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"has a non-integer {key!r}")
        return int(value)

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            self.fail(f"has a non-text {key!r}")
        return str(value)

    def optional_text(self, key: str) -> str | None:
        return None if self._get(key) is None else self.text(key)

    def paid(self, key: str) -> PaidRound | None:
        value = self._get(key)
        if value is None:
            return None
        inner = _Body(value if isinstance(value, dict) else {}, f"{self.where} ({key})")
        return PaidRound(
            inner.integer("chain_id"),
            inner.text("market"),
            inner.integer("task"),
            inner.integer("round"),
        )
