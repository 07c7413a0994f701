"""One exception root for fedmarket; every error carries a stable process exit code.

The CLI turns any :class:`FedmarketError` into one line on stderr and exits with its
``exit_code``. Codes are grouped by range (see :data:`EXIT_CODES`); a test checks that every
exception's code is registered with help text.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_CODES: dict[int, str] = {
    1: "Unexpected fedmarket error.",
    2: "Invalid input: an argument or configuration value broke a rule named in the message.",
    3: "Data could not be loaded: the file is missing, corrupt or has the wrong layout.",
    4: "The data cannot be partitioned as asked.",
    10: "The privacy budget does not allow this: the device's epsilon cap would be exceeded.",
    11: "The privacy ledger file is corrupt or belongs to another device or dataset.",
    20: "A federated round failed: too few devices trained or replies were invalid.",
    21: "Secure aggregation aborted: too few devices survived a stage to unmask the sum.",
    22: "A secure-aggregation message broke the protocol and was rejected.",
}


class FedmarketError(Exception):
    """Root of all fedmarket errors."""

    exit_code: ClassVar[int] = 1


class InvalidInput(FedmarketError, ValueError):
    """A value given by the user or a config broke a rule; the message names the rule."""

    exit_code: ClassVar[int] = 2


class DataError(FedmarketError, ValueError):
    """A data file is missing, corrupt, or does not have the expected layout."""

    exit_code: ClassVar[int] = 3


class PartitionError(FedmarketError, ValueError):
    """A data set cannot be split across devices as requested."""

    exit_code: ClassVar[int] = 4


class PrivacyError(FedmarketError):
    """Base for privacy accounting errors."""

    exit_code: ClassVar[int] = 10


class PrivacyBudgetExceeded(PrivacyError):
    """Training would push the device's epsilon past the owner's cap."""

    exit_code: ClassVar[int] = 10

    def __init__(self, *, spent: float, would_spend: float, cap: float, delta: float) -> None:
        self.spent = spent
        self.would_spend = would_spend
        self.cap = cap
        self.delta = delta
        super().__init__(
            f"this round would raise epsilon from {spent:.3f} to {would_spend:.3f}, "
            f"above the owner's cap {cap:.3f} (delta={delta:g}); the device declines"
        )


class LedgerCorrupted(PrivacyError):
    """A privacy ledger file cannot be read or does not match its device and dataset."""

    exit_code: ClassVar[int] = 11


class RoundFailed(FedmarketError):
    """A federated round could not produce a new global model."""

    exit_code: ClassVar[int] = 20


class SecAggAborted(RoundFailed):
    """Too few devices survived a secure-aggregation stage; the sum stays masked."""

    exit_code: ClassVar[int] = 21


class ProtocolViolation(FedmarketError):
    """A secure-aggregation message was malformed, out of order or inconsistent."""

    exit_code: ClassVar[int] = 22
