"""The persistent per-device, per-dataset privacy ledger.

The ledger stores the DP-SGD history (sigma, sample rate, steps per round) in a JSON file under
``$FEDMARKET_HOME/privacy/<device>/<dataset>.json`` and recomputes epsilon(delta) from the whole
history with an Opacus accountant, so epsilon survives restarts and is never taken from a fresh
per-round accountant.

A round goes through two steps. :meth:`PrivacyLedger.reserve` checks the owner's cap against
the history *plus* this round and, if it fits, writes the round as ``pending`` before training
starts. :meth:`Reservation.commit` marks it ``spent`` once the update has been handed over;
:meth:`Reservation.release` removes it when training failed and nothing left the device. A
pending entry left by a crash counts as spent: we cannot prove its update was not sent.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedmarket.exceptions import InvalidInput, LedgerCorrupted, PrivacyBudgetExceeded
from fedmarket.privacy.accounting import Spend, check_delta, epsilon
from fedmarket.privacy.config import AccountantKind
from fedmarket.types import DatasetId, DeviceId

FORMAT_VERSION = 1
EntryStatus = Literal["pending", "spent"]


@dataclass(frozen=True)
class LedgerEntry:
    """One round of training recorded in the ledger."""

    round_label: str
    spend: Spend
    status: EntryStatus
    recorded_at: float


class PrivacyLedger:
    """Epsilon spent by one device on one data set, enforced against the owner's cap.

    Parameters
    ----------
    home : data directory (``$FEDMARKET_HOME``)
    device, dataset : whose privacy this is
    epsilon_cap : the owner's cap on epsilon(delta); a round that would pass it is declined
    delta : the delta at which epsilon is computed
    accountant : ``"prv"`` (default, tighter) or ``"rdp"``
    """

    def __init__(
        self,
        home: Path,
        *,
        device: DeviceId,
        dataset: DatasetId,
        epsilon_cap: float,
        delta: float = 1e-5,
        accountant: AccountantKind = "prv",
    ) -> None:
        if not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
            raise InvalidInput(f"epsilon cap must be a positive number, got {epsilon_cap}")
        check_delta(delta)
        if not device or "/" in device or device.startswith("."):
            raise InvalidInput(f"device id {device!r} must be a plain non-empty name")
        self.device, self.dataset = device, dataset
        self.epsilon_cap, self.delta, self.accountant = epsilon_cap, delta, accountant
        self.path = home / "privacy" / device / f"{dataset}.json"
        self._entries = self._read()

    @classmethod
    def open(cls, path: Path) -> PrivacyLedger:
        """An existing ledger file with the owner's settings it was last written with."""
        try:
            raw = json.loads(path.read_text())
            home = path.parents[2]
            return cls(
                home,
                device=DeviceId(raw["device"]),
                dataset=DatasetId(raw["dataset"]),
                epsilon_cap=float(raw["epsilon_cap"]),
                delta=float(raw["delta"]),
                accountant=raw["accountant"],
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise LedgerCorrupted(f"{path}: unreadable privacy ledger ({exc})") from None

    @staticmethod
    def find(home: Path, device: str | None = None) -> list[Path]:
        """Ledger files under ``home`` (of one device, or of every device)."""
        return sorted((home / "privacy").glob(f"{device or '*'}/*.json"))

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def epsilon(self) -> float:
        """epsilon(delta) over every recorded round, pending ones included."""
        return epsilon(
            [e.spend for e in self._entries], delta=self.delta, accountant=self.accountant
        )

    def epsilon_after(self, spend: Spend) -> float:
        """epsilon(delta) if ``spend`` were added to the history."""
        history = [e.spend for e in self._entries] + [spend]
        return epsilon(history, delta=self.delta, accountant=self.accountant)

    def rounds_spent(self) -> int:
        return len(self._entries)

    def reserve(self, spend: Spend, *, round_label: str) -> Reservation:
        """Check the cap and record ``spend`` as pending; raise if it would pass the cap.

        Raises
        ------
        PrivacyBudgetExceeded
            if epsilon after this round would be above the cap. Nothing is written.
        """
        with self._locked():
            self._entries = self._read()
            spent, after = self.epsilon(), self.epsilon_after(spend)
            if after > self.epsilon_cap:
                raise PrivacyBudgetExceeded(
                    spent=spent, would_spend=after, cap=self.epsilon_cap, delta=self.delta
                )
            entry = LedgerEntry(round_label, spend, "pending", time.time())
            self._write([*self._entries, entry])
        return Reservation(self, entry, epsilon_after=after)

    def _settle(self, entry: LedgerEntry, status: EntryStatus | None) -> None:
        with self._locked():
            entries = self._read()
            if entry not in entries:
                raise LedgerCorrupted(f"{self.path}: reservation {entry.round_label!r} vanished")
            index = entries.index(entry)
            if status is None:
                del entries[index]
            else:
                entries[index] = LedgerEntry(entry.round_label, entry.spend, status, time.time())
            self._write(entries)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> list[LedgerEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise LedgerCorrupted(f"{self.path}: unreadable privacy ledger ({exc})") from None
        try:
            if raw["version"] != FORMAT_VERSION:
                raise LedgerCorrupted(f"{self.path}: unknown ledger version {raw['version']}")
            if raw["device"] != self.device or raw["dataset"] != self.dataset:
                raise LedgerCorrupted(f"{self.path}: ledger belongs to another device or dataset")
            return [
                LedgerEntry(
                    e["round"],
                    Spend(float(e["noise_multiplier"]), float(e["sample_rate"]), int(e["steps"])),
                    e["status"],
                    float(e["recorded_at"]),
                )
                for e in raw["entries"]
            ]
        except (KeyError, TypeError, InvalidInput) as exc:
            raise LedgerCorrupted(f"{self.path}: malformed ledger entry ({exc})") from None

    def _write(self, entries: list[LedgerEntry]) -> None:
        """Atomically replace the file: temp file, fsync, rename, fsync the folder."""
        document = {
            "version": FORMAT_VERSION,
            "device": self.device,
            "dataset": self.dataset,
            # The owner's settings when last written, so `fedmarket device status` can show them.
            "epsilon_cap": self.epsilon_cap,
            "delta": self.delta,
            "accountant": self.accountant,
            "entries": [
                {
                    "round": e.round_label,
                    "noise_multiplier": e.spend.noise_multiplier,
                    "sample_rate": e.spend.sample_rate,
                    "steps": e.spend.steps,
                    "status": e.status,
                    "recorded_at": e.recorded_at,
                }
                for e in entries
            ],
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._entries = entries


class Reservation:
    """A round's spend recorded as pending; settle it with :meth:`commit` or :meth:`release`."""

    def __init__(self, ledger: PrivacyLedger, entry: LedgerEntry, *, epsilon_after: float) -> None:
        self._ledger, self._entry = ledger, entry
        self.epsilon_after = epsilon_after
        self._settled = False

    @property
    def spend(self) -> Spend:
        return self._entry.spend

    def commit(self) -> None:
        """The update was handed over: the spend is final."""
        self._settle("spent")

    def release(self) -> None:
        """Nothing left the device: forget the spend."""
        self._settle(None)

    def _settle(self, status: EntryStatus | None) -> None:
        if self._settled:
            raise InvalidInput("this reservation was already committed or released")
        self._ledger._settle(self._entry, status)
        self._settled = True
