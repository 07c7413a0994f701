"""The ledger interface: the data market's operations and views, whatever chain runs them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum

from fedmarket.receipts import Receipt
from fedmarket.types import Address, ListingId, PurchaseId, TaskId


class PurchaseState(IntEnum):
    NONE = 0
    PENDING = 1
    DELIVERED = 2
    REFUNDED = 3


@dataclass(frozen=True)
class TaskState:
    task: TaskId
    sponsor: Address
    aggregator: Address
    last_round: int
    closed: bool
    reward_per_update: int
    escrow: int  # all deposits for contributors so far (budget + sales shares)
    committed: int  # cumulative rewards at the latest round
    rewards_root: bytes


@dataclass(frozen=True)
class RoundCommit:
    """One ``RoundCommitted`` event."""

    task: TaskId
    round: int
    model_cid: str
    bundle_cid: str
    rewards_root: bytes
    cumulative_total: int
    block: int


@dataclass(frozen=True)
class ListingState:
    listing: ListingId
    seller: Address
    task: TaskId | None
    contributors_bps: int
    active: bool
    price: int
    key_commitment: bytes
    asset_cid: str


@dataclass(frozen=True)
class PurchaseRecord:
    purchase: PurchaseId
    listing: ListingId
    deadline: int
    state: PurchaseState
    buyer: Address
    price: int
    buyer_key: bytes


class Ledger(ABC):
    """Data-market operations signed by one account (:attr:`address`).

    Amounts are integers in the token's base units. CIDs are passed and returned in text form.
    Every failed operation raises a :class:`~fedmarket.exceptions.LedgerError` subclass saying
    what happened and what to do; nothing is half-done.
    """

    @property
    @abstractmethod
    def address(self) -> Address: ...

    # tasks and rewards
    @abstractmethod
    def create_task(
        self, *, aggregator: str, reward_per_update: int, budget: int, spec_cid: str
    ) -> TaskId: ...

    @abstractmethod
    def commit_round(
        self,
        task: TaskId,
        round: int,
        *,
        model_cid: str,
        bundle_cid: str,
        rewards_root: bytes,
        cumulative_total: int,
    ) -> bool:
        """Commit a round; False (and nothing sent) if exactly this round is already on chain."""

    @abstractmethod
    def claim(
        self, task: TaskId, account: str, cumulative_amount: int, proof: list[bytes]
    ) -> int: ...

    @abstractmethod
    def close_task(self, task: TaskId) -> int: ...

    # sales
    @abstractmethod
    def list_asset(
        self,
        *,
        task: TaskId | None,
        asset_cid: str,
        price: int,
        key_commitment: bytes,
        metadata_cid: str,
        contributors_bps: int,
    ) -> ListingId: ...

    @abstractmethod
    def buy(self, listing: ListingId, *, buyer_key: bytes, max_price: int) -> PurchaseId: ...

    @abstractmethod
    def deliver_key(self, purchase: PurchaseId, sealed_key: bytes) -> None: ...

    @abstractmethod
    def refund(self, purchase: PurchaseId) -> int: ...

    @abstractmethod
    def withdraw(self) -> int: ...

    # views
    @abstractmethod
    def task(self, task: TaskId) -> TaskState: ...

    @abstractmethod
    def claimed(self, task: TaskId, account: str) -> int: ...

    @abstractmethod
    def listing(self, listing: ListingId) -> ListingState: ...

    @abstractmethod
    def purchase(self, purchase: PurchaseId) -> PurchaseRecord: ...

    @abstractmethod
    def owed(self, account: str) -> int: ...

    @abstractmethod
    def balance(self, account: str) -> int: ...

    @abstractmethod
    def receipt_signer(self, receipt: Receipt, signature: bytes) -> Address: ...

    @abstractmethod
    def task_ids(self) -> list[TaskId]:
        """Every task ever created on this market, oldest first."""

    @abstractmethod
    def listing_ids(self) -> list[ListingId]:
        """Every listing ever published on this market, oldest first."""

    @abstractmethod
    def round_commits(self, task: TaskId | None = None) -> list[RoundCommit]:
        """Every committed round (of ``task``), oldest first, from the chain's events."""

    @abstractmethod
    def purchases_of(self, seller: str) -> list[PurchaseRecord]:
        """Every purchase of ``seller``'s listings, oldest first, with its current state."""

    @abstractmethod
    def listing_metadata_cid(self, listing: ListingId) -> str:
        """The metadata CID a listing was published with (kept in its ``Listed`` event)."""

    @abstractmethod
    def now(self) -> int:
        """The chain's latest block time (unix seconds): deadlines are in chain time."""

    @abstractmethod
    def sealed_key(self, purchase: PurchaseId) -> bytes | None:
        """The sealed key delivered for ``purchase``, or None while none has come."""

    @abstractmethod
    def round_matches(self, commit: RoundCommit) -> bool:
        """Whether the contract's stored hash for that round matches ``commit``."""
