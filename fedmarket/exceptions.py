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
    11: "The privacy ledger does not verify: edited, truncated, rolled back or another device's.",
    12: "The device has no privacy ledger: create one explicitly, or restore the deleted one.",
    13: "The ε in the device's published receipts disagrees with its privacy ledger.",
    20: "A federated round failed: too few devices trained or replies were invalid.",
    21: "Secure aggregation aborted: too few devices survived a stage to unmask the sum.",
    22: "A secure-aggregation message broke the protocol and was rejected.",
    23: "A committed round's SecAgg+ transcript does not show this device's upload in its sum.",
    30: "Stored content failed verification: a block does not match its CID.",
    31: "The content store has no object with this CID.",
    32: "The content store cannot be reached (IPFS daemon down or wrong address).",
    40: "Decryption failed.",
    41: "Decryption failed: the key is not the one this file was encrypted with.",
    42: "Decryption failed: the ciphertext was modified or its chunks reordered.",
    43: "Decryption failed: the ciphertext ends before its final chunk.",
    44: "Decryption failed: the sealed key was not sealed to this private key.",
    45: "The delivered key does not match the listing's key commitment.",
    46: "The file is not a fedmarket encrypted asset (bad header).",
    50: "Unexpected ledger (blockchain) error.",
    51: "The chain's JSON-RPC endpoint cannot be reached or timed out.",
    52: "A transaction failed or was not mined in time; the message says whether it was sent.",
    53: "The market contract rejected the call; the message says why and what to do.",
    54: "A key store could not be read: wrong passphrase, missing or corrupt key file.",
    55: "A contribution receipt's signature does not match its device.",
    56: "A model's lineage does not verify: the message names the broken link.",
    60: "A Flower deployment process (SuperLink, SuperNode, flwr CLI) failed; see its log.",
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
    """A privacy ledger cannot be read, is not a hash chain signed by its identity, or is behind
    its head (truncated, rolled back); it is refused, never read as empty."""

    exit_code: ClassVar[int] = 11


class LedgerMissing(PrivacyError):
    """A device identity has no privacy ledger; ``deleted`` when its head shows it had one."""

    exit_code: ClassVar[int] = 12

    def __init__(self, message: str, *, deleted: bool = False) -> None:
        super().__init__(message)
        self.deleted = deleted


class EpsilonMismatch(PrivacyError):
    """Receipts the device signed state an ε its privacy ledger does not explain."""

    exit_code: ClassVar[int] = 13


class RoundFailed(FedmarketError):
    """A federated round could not produce a new global model."""

    exit_code: ClassVar[int] = 20


class SecAggAborted(RoundFailed):
    """Too few devices survived a secure-aggregation stage; the sum stays masked."""

    exit_code: ClassVar[int] = 21


class DealerCheated(SecAggAborted):
    """A device dealt shares off its own commitments, so its secret cannot be rebuilt; the
    round ends and ``culprits`` (node ids) are named so that they are left out from now on."""

    def __init__(self, message: str, culprits: tuple[int, ...]) -> None:
        super().__init__(message)
        self.culprits = culprits


class ProtocolViolation(FedmarketError):
    """A secure-aggregation message was malformed, out of order or inconsistent."""

    exit_code: ClassVar[int] = 22


class NotInTranscript(FedmarketError):
    """A committed round paid this device but its signed transcript does not hold its upload."""

    exit_code: ClassVar[int] = 23


class StoreError(FedmarketError):
    """Base for content-store errors."""

    exit_code: ClassVar[int] = 30


class IntegrityError(StoreError):
    """A stored block does not hash to its CID: the stored copy is corrupt."""

    exit_code: ClassVar[int] = 30


class ContentNotFound(StoreError, LookupError):
    """The store holds no object (or misses a block) for a CID."""

    exit_code: ClassVar[int] = 31


class StoreUnavailable(StoreError, ConnectionError):
    """The store's backend (an IPFS daemon) cannot be reached or timed out."""

    exit_code: ClassVar[int] = 32


class DecryptionFailed(FedmarketError):
    """Base for every decryption failure; the subclass and message say which check failed."""

    exit_code: ClassVar[int] = 40


class WrongKey(DecryptionFailed):
    """The key does not match the one the asset was encrypted with."""

    exit_code: ClassVar[int] = 41


class TamperedCiphertext(DecryptionFailed):
    """A chunk failed authentication: the ciphertext was modified or reordered."""

    exit_code: ClassVar[int] = 42


class TruncatedCiphertext(DecryptionFailed):
    """The ciphertext stops before its final chunk."""

    exit_code: ClassVar[int] = 43


class WrongRecipient(DecryptionFailed):
    """A sealed key cannot be opened with this private key."""

    exit_code: ClassVar[int] = 44


class KeyCommitmentMismatch(DecryptionFailed):
    """A key does not hash to the commitment published with its listing."""

    exit_code: ClassVar[int] = 45


class NotAnAsset(DecryptionFailed):
    """The input does not start with a fedmarket encrypted-asset header."""

    exit_code: ClassVar[int] = 46


class LedgerError(FedmarketError):
    """Base for chain and contract errors."""

    exit_code: ClassVar[int] = 50


class ChainUnavailable(LedgerError, ConnectionError):
    """The JSON-RPC endpoint cannot be reached, or it did not answer in time."""

    exit_code: ClassVar[int] = 51


class TransactionFailed(LedgerError):
    """A transaction reverted without a known reason, or was not mined before the timeout."""

    exit_code: ClassVar[int] = 52


class ContractRejected(LedgerError):
    """The contract refused the call with one of its custom errors (see ``fedmarket.ledger``)."""

    exit_code: ClassVar[int] = 53


class KeystoreError(FedmarketError):
    """A keystore is missing, corrupt, or the passphrase is wrong."""

    exit_code: ClassVar[int] = 54


class ReceiptInvalid(FedmarketError):
    """A contribution receipt was not signed by the device it names."""

    exit_code: ClassVar[int] = 55


class LineageBroken(FedmarketError):
    """A link between a model, its rounds, receipts and rewards does not verify."""

    exit_code: ClassVar[int] = 56


class DeploymentError(FedmarketError):
    """A SuperLink, SuperNode or ``flwr`` CLI call failed; the message quotes its log."""

    exit_code: ClassVar[int] = 60
