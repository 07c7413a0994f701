"""The ledger interface: the data market's operations and views, whatever chain runs them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from fedmarket.acks import Ack
from fedmarket.crypto.key_delivery import G1Point, KeyDelivery, OneTimeKey
from fedmarket.market.rewards import SumNode
from fedmarket.receipts import Receipt
from fedmarket.types import Address, ListingId, PurchaseId, TaskId


class PurchaseState(IntEnum):
    NONE = 0
    PENDING = 1  # paid; the key is due by the deadline
    DELIVERED = 2  # key posted; the buyer may dispute until the deadline
    SETTLED = 3  # proceeds released to the seller and the round's contributors
    REFUNDED = 4  # money back to the buyer (no key in time, or a key proven wrong)


@dataclass(frozen=True)
class TaskState:
    task: TaskId
    sponsor: Address
    aggregator: Address
    last_round: int
    closes_at: int  # 0 while open; chain time when commits stop and the unspent refund opens
    contributors_bps: int  # least share of each sale of the task's models paid to its devices
    escrow: int  # the sponsor's deposits still held for the task
    paid: int  # rewards paid out so far
    reward_per_update: int
    committed: int  # cumulative rewards at the latest round that was not voided
    paid_on_acks: int = 0  # the part of ``paid`` claimed with acknowledgements
    frozen_at: int = 0  # chain time of the latest void: no more commits; acks are payable
    refund_opens_at: int = 0  # chain time of the sponsor's refund: a grace after commits stop

    @property
    def frozen(self) -> bool:
        return self.frozen_at != 0

    @property
    def closing(self) -> bool:
        return self.closes_at != 0

    def acks_payable(self, now: int) -> bool:
        """Whether acknowledgements are paid directly at chain time ``now``: once the task
        commits no more (its close grace is over, or a root was voided)."""
        return self.frozen or (self.closing and now >= self.closes_at)

    @property
    def reserved(self) -> int:
        """What the sponsor's refund keeps back: the committed total plus what acknowledgements
        paid (they may pay devices no root counts), or what was paid, if more."""
        return max(self.committed + self.paid_on_acks, self.paid)


@dataclass(frozen=True)
class RoundState:
    """What the contract stores for one committed round."""

    rewards_root: bytes
    model_commitment: bytes
    cumulative_total: int
    committed_at: int = 0  # chain time of the commit
    open_challenges: int = 0
    voided: bool = False
    final_at: int = 0  # chain time from which the root pays, if no challenge is open then

    def final(self, now: int) -> bool:
        """Whether the root pays claims at chain time ``now``."""
        return not self.voided and self.open_challenges == 0 and now >= self.final_at


@dataclass(frozen=True)
class ChallengeState:
    """An account's challenge of one round's root."""

    amount: int  # what the challenger says it is owed; once answered, what the answer showed
    deadline: int  # chain time by which the aggregator must answer
    open: bool


@dataclass(frozen=True)
class RoundCommit:
    """One ``RoundCommitted`` event."""

    task: TaskId
    round: int
    model_commitment: bytes  # hiding commitment to the plaintext model
    model_cid: str  # the model's ciphertext
    bundle_cid: str
    rewards_root: bytes
    cumulative_total: int
    block: int


@dataclass(frozen=True)
class ListingState:
    listing: ListingId
    seller: Address
    task: TaskId
    round: int
    contributors_bps: int
    active: bool
    price: int
    key_commitment: bytes
    asset_cid: str


@dataclass(frozen=True)
class PurchaseRecord:
    purchase: PurchaseId
    listing: ListingId
    deadline: int  # delivery deadline while pending, dispute deadline once delivered
    state: PurchaseState
    buyer: Address
    price: int
    buyer_key_hash: bytes  # keccak256 of the buyer's one-time public key
    delivery: bytes  # keccak256 of the posted (ephemeral key, masked key); zero until delivered


class Ledger(ABC):
    """Data-market operations signed by one account (:attr:`address`).

    Amounts are integers in the token's base units. CIDs are passed and returned in text form.
    Every failed operation raises a :class:`~fedmarket.exceptions.LedgerError` subclass saying
    what happened and what to do; nothing is half-done.
    """

    @property
    @abstractmethod
    def address(self) -> Address: ...

    @property
    @abstractmethod
    def chain_id(self) -> int: ...

    @property
    @abstractmethod
    def market_address(self) -> Address:
        """The market contract: the EIP-712 domain of receipts and acks, and of key masks."""

    @abstractmethod
    def sign_ack(self, ack: Ack) -> bytes:
        """Sign ``ack`` with this account for this market (EIP-712), as a task's aggregator."""

    # tasks and rewards
    @abstractmethod
    def create_task(
        self,
        *,
        aggregator: str,
        reward_per_update: int,
        budget: int,
        spec_cid: str,
        contributors_bps: int = 0,
    ) -> TaskId:
        """Open a task and escrow ``budget``; ``contributors_bps`` is the least share of every
        sale of its models (basis points) that its devices will get."""

    @abstractmethod
    def commit_round(
        self,
        task: TaskId,
        round: int,
        *,
        model_commitment: bytes,
        model_cid: str,
        bundle_cid: str,
        rewards_root: bytes,
        cumulative_total: int,
    ) -> bool:
        """Commit a round; False (and nothing sent) if exactly this round is already on chain."""

    @abstractmethod
    def claim(
        self,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> int:
        """Claim ``account``'s rewards as committed at ``round`` (any final round)."""

    @abstractmethod
    def challenge(
        self,
        task: TaskId,
        round: int,
        *,
        evidence_round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> None:
        """Challenge ``round``'s root for paying ``account`` less than its leaf
        (``cumulative_amount``, ``proof``) in the earlier root of ``evidence_round``; anyone
        may."""

    @abstractmethod
    def challenge_with_ack(self, task: TaskId, round: int, ack: Ack, signature: bytes) -> None:
        """Challenge ``round``'s root for paying ``ack.device`` less than ``ack``; anyone may."""

    @abstractmethod
    def answer(
        self,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> None:
        """Answer ``account``'s challenge of ``round`` with its leaf in that round's root."""

    @abstractmethod
    def void_round(self, task: TaskId, round: int, account: str) -> None:
        """Void ``round``'s root after ``account``'s challenge went unanswered."""

    @abstractmethod
    def claim_acknowledged(self, ack: Ack, signature: bytes) -> int:
        """Claim what the aggregator acknowledged to ``ack.device``."""

    @abstractmethod
    def credit_ack(
        self, task: TaskId, account: str, leaf_amount: int, proof: Sequence[SumNode]
    ) -> int:
        """Count ``account``'s leaf in the committed (final) root against its ack payments, so
        the escrow does not reserve it twice; return what left ``paid_on_acks``. Anyone may."""

    @abstractmethod
    def claim_sale_share(
        self,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> int:
        """Claim ``account``'s share of the contributors' revenue from ``round``'s sales."""

    @abstractmethod
    def close_task(self, task: TaskId) -> int:
        """Start closing ``task``; return the chain time at which it closes."""

    @abstractmethod
    def refund_unspent(self, task: TaskId) -> int:
        """After the close grace, send the sponsor what nobody is owed; return the amount."""

    # sales
    @abstractmethod
    def list_asset(
        self,
        *,
        task: TaskId,
        round: int,
        asset_cid: str,
        price: int,
        key_commitment: bytes,
        metadata_cid: str,
        contributors_bps: int,
    ) -> ListingId: ...

    @abstractmethod
    def buy(self, listing: ListingId, *, buyer_key: G1Point, max_price: int) -> PurchaseId: ...

    @abstractmethod
    def deliver_key(self, purchase: PurchaseId, delivery: KeyDelivery) -> None: ...

    @abstractmethod
    def dispute(self, purchase: PurchaseId, secret: OneTimeKey, delivery: KeyDelivery) -> int:
        """Prove the delivered key wrong on chain; return the refunded amount."""

    @abstractmethod
    def settle(self, purchase: PurchaseId) -> int:
        """Release a delivered purchase after its dispute window; return the seller's share."""

    @abstractmethod
    def refund(self, purchase: PurchaseId) -> int: ...

    @abstractmethod
    def withdraw(self) -> int: ...

    # views
    @abstractmethod
    def task(self, task: TaskId) -> TaskState: ...

    @abstractmethod
    def round_state(self, task: TaskId, round: int) -> RoundState | None:
        """What the contract stores for ``round`` of ``task``; None if it was not committed."""

    @abstractmethod
    def claimed(self, task: TaskId, account: str) -> int: ...

    @abstractmethod
    def challenge_state(self, task: TaskId, round: int, account: str) -> ChallengeState | None:
        """``account``'s challenge of ``round``'s root, or None if it never challenged it."""

    @abstractmethod
    def ack_counted(self, task: TaskId, account: str) -> int:
        """``account``'s part of ``paid_on_acks``: its ack payments beyond its committed leaf."""

    @abstractmethod
    def acks_paid(self, task: TaskId) -> list[Address]:
        """The accounts paid on an acknowledgement in ``task``, once each, oldest first."""

    @abstractmethod
    def challenges_opened(self, task: TaskId) -> list[tuple[int, Address]]:
        """(round, account) of every challenge opened in ``task``, oldest first."""

    @abstractmethod
    def sale_claimed(self, task: TaskId, round: int, account: str) -> int: ...

    @abstractmethod
    def sales_revenue(self, task: TaskId, round: int) -> tuple[int, int]:
        """(contributors' revenue from ``round``'s sales, how much of it was paid out)."""

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
    def buyer_key(self, purchase: PurchaseId) -> G1Point:
        """The one-time public key ``purchase`` was bought with (from its ``Purchased`` event)."""

    @abstractmethod
    def now(self) -> int:
        """The chain's latest block time (unix seconds): deadlines are in chain time."""

    @abstractmethod
    def key_delivery(self, purchase: PurchaseId) -> KeyDelivery | None:
        """The key delivery posted for ``purchase``, or None while none has come."""

    @abstractmethod
    def round_matches(self, commit: RoundCommit) -> bool:
        """Whether the contract's stored values for that round match ``commit``."""
