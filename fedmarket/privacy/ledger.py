"""The device's privacy ledger: one per device identity, hash-chained, signed, never silently empty.

The ledger belongs to the device's identity key (in deployment its payout key), not to a device
name or a data file: it lives at ``$FEDMARKET_HOME/privacy/<checksum address>.json``, so renaming
the device, editing, re-sorting or extending its data, or reloading it, all continue the same
cumulative ε. Only the owner's explicit declaration that every record is new
(:meth:`PrivacyLedger.declare_new_data`) starts a new *generation* whose ε restarts at 0.

The file is an append-only chain of entries (:mod:`fedmarket.privacy.entries`): ``genesis``
(identity, δ, accountant, the owner's cap), ``reserve`` (one round's noise multiplier, sample
rate, steps and the ε after it), ``settle`` (a reservation committed or released),
``new-data`` and ``cap`` (the owner changed the cap). Each entry links to the digest of the
one before it and is signed by the identity key. ε(δ) is recomputed from the current
generation's rounds with an Opacus accountant, and is never lower than the ε recorded by any
of its live reservations, so the ε the device reports (and signs into its receipts) never
goes down within a generation.

A round goes through two steps. :meth:`PrivacyLedger.reserve` checks the owner's cap against
the history *plus* this round and, if it fits, appends it as pending before training starts.
:meth:`Reservation.commit` marks it spent once training has started (every answer from then on
depends on the private training); :meth:`Reservation.release` takes it back only when nothing
about the round left the device. A pending entry left by a crash counts as spent: we cannot
prove its update was not sent.

What is refused, never read as empty: a missing ledger (:class:`LedgerMissing`; only
:meth:`PrivacyLedger.create` makes one); an entry edited, dropped, inserted or reordered, or one
not signed by the identity (another device's ledger); a ledger behind its *head*, the
``<address>.head`` file beside it that records the last entry's position and digest after every
write (truncation, or a rollback to an older copy); a ledger deleted while its head remains.

What this cannot catch on its own: an owner who deletes or rolls back *both* files and keeps the
key. The published receipts can: every receipt the identity signed names the ε of its round,
and ``fedmarket device status --key`` reports receipts the ledger does not explain
(:mod:`fedmarket.device.signed_epsilon`). An owner who deletes both files *and* the key starts a
new device identity, which the receipts show as a new device with no history.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eth_account.signers.local import LocalAccount
from eth_utils.address import is_checksum_address

from fedmarket.exceptions import (
    InvalidInput,
    LedgerCorrupted,
    LedgerMissing,
    PrivacyBudgetExceeded,
)
from fedmarket.files import atomic_write
from fedmarket.privacy.accounting import Spend, check_delta, epsilon
from fedmarket.privacy.config import AccountantKind
from fedmarket.privacy.entries import RESTORE, EntryKind, SignedEntry, seal, verify_chain
from fedmarket.privacy.replay import LedgerEntry, LedgerState, PaidRound, derive
from fedmarket.types import DatasetId

FORMAT = "fedmarket.privacy-ledger/2"
HEAD_FORMAT = "fedmarket.privacy-ledger-head/2"


@dataclass(frozen=True)
class _Head:
    seq: int
    digest: str


class PrivacyLedger:
    """ε spent by one device identity, enforced against the owner's cap.

    Use :meth:`create` (once per identity, an explicit act of the owner), :meth:`open` (to
    train: needs the identity key) or :meth:`read` (to inspect: no key).

    Raises
    ------
    LedgerMissing
        from :meth:`open` or :meth:`read` when the ledger file does not exist.
    LedgerCorrupted
        whenever the file or its head does not verify (see the module docstring).
    """

    def __init__(self, path: Path, identity: str, signer: LocalAccount | None) -> None:
        self.path, self.identity, self._signer = path, identity, signer
        self.head_path = path.with_suffix(".head")
        self._chain: list[SignedEntry] = []
        self._state: LedgerState | None = None

    # -- opening -------------------------------------------------------------------------

    @staticmethod
    def path_for(home: Path, identity: str) -> Path:
        if not is_checksum_address(identity):
            raise InvalidInput(f"ledger identity must be a checksum address, got {identity!r}")
        return home / "privacy" / f"{identity}.json"

    @classmethod
    def create(
        cls,
        home: Path,
        identity: LocalAccount,
        *,
        epsilon_cap: float,
        delta: float = 1e-5,
        accountant: AccountantKind = "prv",
        device: str = "",
        dataset: DatasetId | None = None,
    ) -> PrivacyLedger:
        """Start ``identity``'s ledger at ε 0: right only if it never trained before.

        Raises
        ------
        InvalidInput
            if the cap, δ or accountant is invalid, or the identity already has a ledger.
        LedgerMissing
            if its ledger was deleted (its head records entries beyond the genesis).
        """
        _check_cap(epsilon_cap)
        check_delta(delta)
        if accountant not in ("prv", "rdp"):
            raise InvalidInput(f"accountant must be 'prv' or 'rdp', got {accountant!r}")
        ledger = cls(cls.path_for(home, identity.address), identity.address, identity)
        body = {
            "identity": identity.address,
            "delta": delta,
            "accountant": accountant,
            "epsilon_cap": epsilon_cap,
            "device": device,
            "dataset": dataset,
        }
        with ledger._locked():
            if ledger.path.exists():
                raise InvalidInput(
                    f"identity {identity.address} already has a privacy ledger ({ledger.path}); "
                    "keep using it (a new one would forget the ε already spent). If every "
                    "record on the device is new, declare new data instead"
                )
            head = ledger._read_head()
            if head is not None and head.seq > 0:
                raise ledger._deleted(head)
            genesis = seal(identity, previous=None, kind="genesis", at=time.time(), body=body)
            ledger._chain, ledger._state = [genesis], derive([genesis], ledger.path)
            # The head first: a crash before the ledger is written leaves a head at entry 0,
            # which a new create may replace (nothing was spent), never a ledger without head.
            ledger._write_head(genesis)
            ledger._write_chain([genesis])
        return ledger

    @classmethod
    def open(cls, home: Path, identity: LocalAccount) -> PrivacyLedger:
        """``identity``'s ledger, verified, ready to reserve rounds."""
        ledger = cls(cls.path_for(home, identity.address), identity.address, identity)
        ledger._load(all_signatures=False)
        return ledger

    @classmethod
    def read(cls, path: Path) -> PrivacyLedger:
        """A ledger file, every signature verified; read-only (no key)."""
        if not is_checksum_address(path.stem):
            raise LedgerCorrupted(f"{path}: a ledger file is named after its identity's address")
        ledger = cls(path, path.stem, None)
        ledger._load(all_signatures=True)
        return ledger

    @staticmethod
    def find(home: Path) -> list[Path]:
        """Every ledger under ``home``, and every ledger whose head remains but file is gone."""
        folder = home / "privacy"
        found = {p.with_suffix(".json") for p in folder.glob("0x*.head")}
        found |= set(folder.glob("0x*.json"))
        return sorted(found)

    # -- what it says -----------------------------------------------------------------------

    @property
    def delta(self) -> float:
        return self._view().delta

    @property
    def accountant(self) -> AccountantKind:
        return self._view().accountant

    @property
    def epsilon_cap(self) -> float:
        return self._view().epsilon_cap

    @property
    def generation(self) -> int:
        """0 at creation; +1 each time the owner declared new data."""
        return self._view().generation

    @property
    def device(self) -> str:
        """The device name last recorded (names are informational)."""
        return self._view().device

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """The current generation's rounds that count: pending and spent."""
        return self._live(self.generation)

    @property
    def history(self) -> tuple[LedgerEntry, ...]:
        """Every round of every generation, released ones included."""
        return self._view().rounds

    @property
    def length(self) -> int:
        """Number of entries in the chain."""
        return len(self._chain)

    def epsilon(self) -> float:
        """ε(δ) of the current generation, pending rounds included."""
        return self.epsilon_of(self.generation)

    def epsilon_of(self, generation: int) -> float:
        """ε(δ) of ``generation``: its rounds' composition, and never below the ε any of its
        live rounds reported (a reservation released later cannot lower it)."""
        live = self._live(generation)
        composed = epsilon([e.spend for e in live], delta=self.delta, accountant=self.accountant)
        return max([composed, *(e.epsilon_after for e in live)])

    def epsilon_after(self, spend: Spend) -> float:
        """ε(δ) if ``spend`` were added to the current generation."""
        live = self.entries
        composed = epsilon(
            [*(e.spend for e in live), spend], delta=self.delta, accountant=self.accountant
        )
        return max([composed, *(e.epsilon_after for e in live)])

    def rounds_spent(self) -> int:
        return len(self.entries)

    # -- what the owner and the device write --------------------------------------------------

    def reserve(
        self,
        spend: Spend,
        *,
        round_label: str,
        device: str | None = None,
        dataset: DatasetId | None = None,
        paid: PaidRound | None = None,
    ) -> Reservation:
        """Check the cap and record ``spend`` as pending; raise if it would pass the cap.

        Raises
        ------
        PrivacyBudgetExceeded
            if ε after this round would be above the cap. Nothing is written.
        """
        with self._locked():
            self._load(all_signatures=False)
            spent, after = self.epsilon(), self.epsilon_after(spend)
            if after > self.epsilon_cap:
                raise PrivacyBudgetExceeded(
                    spent=spent, would_spend=after, cap=self.epsilon_cap, delta=self.delta
                )
            entry = self._append(
                "reserve",
                {
                    "generation": self.generation,
                    "round": round_label,
                    "noise_multiplier": spend.noise_multiplier,
                    "sample_rate": spend.sample_rate,
                    "steps": spend.steps,
                    "epsilon_after": after,
                    "device": self.device if device is None else device,
                    "dataset": dataset,
                    "paid": None if paid is None else paid.to_json(),
                },
            )
        return Reservation(self, entry.seq, spend, epsilon_after=after)

    def declare_new_data(self, *, dataset: DatasetId, device: str | None = None) -> int:
        """The owner declares that every record in ``dataset`` is new: never used for training
        by this identity. Starts a new generation at ε 0 and returns its number.

        A false declaration makes every ε reported afterwards wrong; the ledger can only
        refuse data it has seen before (the same fingerprint).

        Raises
        ------
        InvalidInput
            if this identity's ledger already recorded this exact data.
        """
        with self._locked():
            self._load(all_signatures=False)
            if dataset in self._view().datasets:
                raise InvalidInput(
                    f"this data (fingerprint {dataset[:12]}) was already used by identity "
                    f"{self.identity}: it is not new, and its ε continues ({self.epsilon():.3f} "
                    f"in generation {self.generation})"
                )
            generation = self.generation + 1
            self._append(
                "new-data",
                {
                    "generation": generation,
                    "dataset": dataset,
                    "device": self.device if device is None else device,
                },
            )
        return generation

    def use_settings(
        self, *, epsilon_cap: float, delta: float, accountant: AccountantKind
    ) -> PrivacyLedger:
        """Apply the owner's current settings: a new cap is recorded; δ and the accountant are
        the ledger's for good (ε at another δ would be another number)."""
        _check_cap(epsilon_cap)
        if (delta, accountant) != (self.delta, self.accountant):
            raise InvalidInput(
                f"the privacy ledger {self.path} computes ε at δ={self.delta:g} with the "
                f"{self.accountant} accountant; this device is set to δ={delta:g} with "
                f"{accountant}: use the ledger's settings"
            )
        if epsilon_cap != self.epsilon_cap:
            with self._locked():
                self._load(all_signatures=False)
                if epsilon_cap != self.epsilon_cap:
                    self._append("cap", {"epsilon_cap": epsilon_cap})
        return self

    def _settle(self, seq: int, outcome: Literal["commit", "release"]) -> None:
        with self._locked():
            self._load(all_signatures=False)
            if not any(e.seq == seq and e.status == "pending" for e in self.history):
                raise LedgerCorrupted(
                    f"{self.path}: reservation at entry {seq} is not pending in the file; {RESTORE}"
                )
            self._append("settle", {"reserve": seq, "outcome": outcome})

    # -- the files ------------------------------------------------------------------------------

    def _view(self) -> LedgerState:
        if self._state is None:
            raise LedgerCorrupted(f"{self.path}: the ledger was not loaded")
        return self._state

    def _live(self, generation: int) -> tuple[LedgerEntry, ...]:
        return tuple(
            e for e in self.history if e.generation == generation and e.status != "released"
        )

    def _append(self, kind: EntryKind, body: Mapping[str, Any]) -> SignedEntry:
        if self._signer is None:  # _locked() refuses first; this keeps mypy and -O honest
            raise InvalidInput(f"{self.path} was opened read-only, without the identity key")
        entry = seal(self._signer, previous=self._chain[-1], kind=kind, at=time.time(), body=body)
        chain = [*self._chain, entry]
        state = derive(chain, self.path)  # never write what would not read back
        self._write_chain(chain)
        self._write_head(entry)
        self._chain, self._state = chain, state
        return entry

    def _load(self, *, all_signatures: bool) -> None:
        head = self._read_head()
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            if head is None or head.seq == 0:  # nothing was ever spent (or create crashed)
                raise LedgerMissing(
                    f"no privacy ledger for identity {self.identity} ({self.path}). If this "
                    "identity has never trained, create one explicitly (`fedmarket device join "
                    "--new-ledger`): ε starts at 0. If it has trained, restore its ledger from a "
                    "backup: a new one would forget the ε already spent",
                    deleted=False,
                ) from None
            raise self._deleted(head) from None
        except (OSError, ValueError) as exc:
            raise LedgerCorrupted(
                f"{self.path}: unreadable privacy ledger ({exc}); {RESTORE}"
            ) from None
        if (
            not isinstance(raw, dict)
            or raw.get("format") != FORMAT
            or raw.get("identity") != self.identity
            or not isinstance(raw.get("entries"), list)
        ):
            raise LedgerCorrupted(
                f"{self.path}: not the privacy ledger of identity {self.identity}; {RESTORE}"
            )
        chain = [
            SignedEntry.from_json(item, f"{self.path}: entry {i}")
            for i, item in enumerate(raw["entries"])
        ]
        verify_chain(chain, self.identity, self.path, all_signatures=all_signatures)
        if head is None:
            raise LedgerCorrupted(
                f"{self.path}: its head file {self.head_path.name} is missing, so deletion or "
                f"rollback cannot be ruled out; {RESTORE}"
            )
        if head.seq >= len(chain) or chain[head.seq].digest != head.digest:
            raise LedgerCorrupted(
                f"{self.path}: the ledger is behind or differs from its head ({self.head_path.name}"
                f" records entry {head.seq}; the file has {len(chain)} entries): it was "
                f"truncated, replaced or rolled back to an older copy; {RESTORE}"
            )
        self._state = derive(chain, self.path)
        self._chain = chain

    def _deleted(self, head: _Head) -> LedgerMissing:
        return LedgerMissing(
            f"the privacy ledger of identity {self.identity} was deleted: {self.head_path} "
            f"records {head.seq + 1} entries but {self.path} is missing. Restore it from a "
            "backup; a new ledger would forget the ε already spent",
            deleted=True,
        )

    def _read_head(self) -> _Head | None:
        try:
            raw = json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LedgerCorrupted(
                f"{self.head_path}: unreadable ledger head ({exc}); {RESTORE}"
            ) from None
        seq, digest = (raw.get("seq"), raw.get("digest")) if isinstance(raw, dict) else (0, 0)
        if (
            not isinstance(raw, dict)
            or raw.get("format") != HEAD_FORMAT
            or raw.get("identity") != self.identity
            or isinstance(seq, bool)
            or not isinstance(seq, int)
            or seq < 0
            or not isinstance(digest, str)
        ):
            raise LedgerCorrupted(
                f"{self.head_path}: not the ledger head of identity {self.identity}; {RESTORE}"
            )
        return _Head(seq, digest)

    def _write_chain(self, chain: list[SignedEntry]) -> None:
        document = {
            "format": FORMAT,
            "identity": self.identity,
            "entries": [e.to_json() for e in chain],
        }
        text = json.dumps(document, indent=1).encode()
        atomic_write(self.path, lambda out: out.write(text), mode=0o600)

    def _write_head(self, last: SignedEntry) -> None:
        document = {
            "format": HEAD_FORMAT,
            "identity": self.identity,
            "seq": last.seq,
            "digest": last.digest,
        }
        text = json.dumps(document).encode()
        atomic_write(self.head_path, lambda out: out.write(text), mode=0o600)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the ledger's lock to write; only with the identity key."""
        if self._signer is None:
            raise InvalidInput(f"{self.path} was opened read-only, without the identity key")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class Reservation:
    """A round's spend recorded as pending; settle it with :meth:`commit` or :meth:`release`."""

    def __init__(
        self, ledger: PrivacyLedger, seq: int, spend: Spend, *, epsilon_after: float
    ) -> None:
        self._ledger, self.seq, self.spend = ledger, seq, spend
        self.epsilon_after = epsilon_after
        self._settled = False

    def commit(self) -> None:
        """The update was handed over: the spend is final."""
        self._settle("commit")

    def release(self) -> None:
        """Nothing left the device: the spend is taken back (the entry stays in the chain)."""
        self._settle("release")

    def _settle(self, outcome: Literal["commit", "release"]) -> None:
        if self._settled:
            raise InvalidInput("this reservation was already committed or released")
        self._ledger._settle(self.seq, outcome)
        self._settled = True


def _check_cap(epsilon_cap: float) -> None:
    if not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
        raise InvalidInput(f"epsilon cap must be a positive number, got {epsilon_cap}")
