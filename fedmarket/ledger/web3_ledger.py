"""Web3Ledger: the data market on any EVM JSON-RPC endpoint (anvil locally), through web3.py.

Transactions are built with a gas estimate (a call that would revert fails here, decoded into
a typed error, and nothing is sent), signed locally, and sent with retries: a retry re-sends the
same signed bytes, so a transient RPC failure can never make a second transaction. Nonces come
from the chain's pending count and a local counter, whichever is ahead.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from multiformats import CID
from web3 import Web3
from web3.contract.contract import Contract, ContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.logs import DISCARD
from web3.types import Nonce, TxParams, TxReceipt

from fedmarket.acks import Ack, sign_ack
from fedmarket.contracts import load_artifact
from fedmarket.crypto.key_delivery import G1Point, KeyDelivery, OneTimeKey
from fedmarket.exceptions import ChainUnavailable, InvalidInput, TransactionFailed
from fedmarket.ledger.base import (
    ChallengeState,
    Ledger,
    ListingState,
    PurchaseRecord,
    PurchaseState,
    RoundCommit,
    RoundState,
    TaskState,
)
from fedmarket.ledger.deployment import Deployment
from fedmarket.ledger.errors import RevertDecoder
from fedmarket.market.rewards import SumNode, encode_proof
from fedmarket.receipts import Receipt
from fedmarket.store.cid import canonical, parse_cid
from fedmarket.types import Address, ListingId, PurchaseId, TaskId

_GAS_MARGIN = 1.2  # estimates can fall short when state moves between estimate and inclusion
_TRANSIENT = (requests.ConnectionError, requests.Timeout)


def _positive(name: str, value: int) -> int:
    return _amount(name, value, minimum=1)


def _amount(name: str, value: int, *, minimum: int = 0) -> int:
    """Validate a token amount or counter before anything is signed."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer number of base units, got {value!r}")
    if not minimum <= value < 2**256:
        raise InvalidInput(f"{name} must be in {minimum}..2**256-1, got {value}")
    return value


def _bps(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
        raise InvalidInput(f"contributors_bps must be an integer in 0..10000, got {value!r}")
    return value


def _bytes32(name: str, value: bytes) -> bytes:
    if len(value) != 32:
        raise InvalidInput(f"{name} must be 32 bytes, got {len(value)}")
    return value


def _same(got: object, wanted: object) -> bool:
    if isinstance(got, str) and isinstance(wanted, str):
        return got.lower() == wanted.lower()  # addresses, in any case
    return got == wanted


def _checksum(address: str) -> ChecksumAddress:
    return to_checksum_address(address)


def cid_bytes(text: str) -> bytes:
    """A CID's binary form, as the contract stores and emits it."""
    return bytes(parse_cid(text))


def cid_text(data: bytes) -> str:
    """A CID from the chain in text form. Anyone can put junk where a CID belongs: that comes
    back as 0x-hex, which every CID parser refuses (InvalidInput), so it breaks only the task or
    listing that holds it, never a command that reads the whole market."""
    try:
        return canonical(CID.decode(bytes(data)))
    except (ValueError, KeyError):
        return "0x" + bytes(data).hex()


class _Nonces:
    """Next nonce per account, shared by every ledger on one connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}

    @contextlib.contextmanager
    def reserve(self, w3: Web3, address: str) -> Iterator[int]:
        """Yield the next nonce; it counts as used only if the block exits without error."""
        with self._lock:
            pending = w3.eth.get_transaction_count(to_checksum_address(address), "pending")
            nonce = max(pending, self._next.get(address, 0))
            yield nonce
            self._next[address] = nonce + 1


@dataclass(frozen=True)
class _Connection:
    w3: Web3
    deployment: Deployment
    market: Contract
    token: Contract
    decoder: RevertDecoder
    nonces: _Nonces
    token_name: str  # the EIP-712 domain name of permits; read once per connection
    # (challenge, response, close grace) windows, read once: they are immutable on chain
    windows: list[int] = field(default_factory=list)


class Web3Ledger(Ledger):
    """The market contracts of ``deployment``, used by ``account``.

    Parameters
    ----------
    receipt_timeout:
        Seconds to wait for a sent transaction to be mined.
    retries:
        Extra attempts at sending after a transient RPC failure.
    """

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        account: LocalAccount,
        *,
        receipt_timeout: float = 120.0,
        retries: int = 3,
        _connection: _Connection | None = None,
    ) -> None:
        if receipt_timeout <= 0 or retries < 0:
            raise InvalidInput("receipt_timeout must be > 0 and retries >= 0")
        self._account = account
        self.receipt_timeout = receipt_timeout
        self.retries = retries
        if _connection is None:
            market_abi = load_artifact("DataMarket").abi
            token_abi = load_artifact("FedToken").abi
            with self._rpc("connect"):
                chain_id = w3.eth.chain_id
            if chain_id != deployment.chain_id:
                raise InvalidInput(
                    f"the RPC endpoint serves chain {chain_id}, but the deployment is for chain "
                    f"{deployment.chain_id}; point --rpc at the right chain or deploy again"
                )
            token = w3.eth.contract(address=_checksum(deployment.token), abi=token_abi)
            with self._rpc("read the token's name"):
                token_name = str(token.functions.name().call())
            _connection = _Connection(
                w3=w3,
                deployment=deployment,
                market=w3.eth.contract(address=_checksum(deployment.market), abi=market_abi),
                token=token,
                decoder=RevertDecoder([market_abi, token_abi]),
                nonces=_Nonces(),
                token_name=token_name,
            )
        self._c = _connection

    @classmethod
    def connect(
        cls, rpc_url: str, deployment: Deployment, account: LocalAccount, *, timeout: float = 30.0
    ) -> Web3Ledger:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        return cls(w3, deployment, account)

    def as_account(self, account: LocalAccount) -> Web3Ledger:
        """The same market and connection, signing as ``account``."""
        return Web3Ledger(
            self._c.w3,
            self._c.deployment,
            account,
            receipt_timeout=self.receipt_timeout,
            retries=self.retries,
            _connection=self._c,
        )

    @property
    def address(self) -> Address:
        return Address(self._account.address)

    @property
    def chain_id(self) -> int:
        return self._c.deployment.chain_id

    @property
    def market_address(self) -> Address:
        return Address(self._c.deployment.market)

    def sign_ack(self, ack: Ack) -> bytes:
        deployment = self._c.deployment
        return sign_ack(ack, self._account, chain_id=deployment.chain_id, market=deployment.market)

    @property
    def w3(self) -> Web3:
        return self._c.w3

    @property
    def deployment(self) -> Deployment:
        return self._c.deployment

    # -- tasks and rewards ---------------------------------------------------------------------

    def create_task(
        self,
        *,
        aggregator: str,
        reward_per_update: int,
        budget: int,
        spec_cid: str,
        contributors_bps: int = 0,
    ) -> TaskId:
        _positive("reward_per_update", reward_per_update)
        _positive("budget", budget)
        _bps(contributors_bps)
        deadline, v, r, s = self._permit(budget)
        receipt = self._transact(
            self._c.market.functions.createTaskWithPermit(
                to_checksum_address(aggregator),
                reward_per_update,
                budget,
                contributors_bps,
                cid_bytes(spec_cid),
                deadline,
                v,
                r,
                s,
            ),
            "create a task",
        )
        return TaskId(self._event(receipt, "TaskCreated")["task"])

    def fund_task(self, task: TaskId, amount: int) -> None:
        _positive("amount", amount)
        self.approve(self._c.deployment.market, amount)
        self._transact(self._c.market.functions.fundTask(task, amount), f"fund task {task}")

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
        _positive("round", round)
        _amount("cumulative_total", cumulative_total)
        _bytes32("rewards_root", rewards_root)
        _bytes32("model_commitment", model_commitment)
        with self._rpc("roundMatches"):
            done = self._c.market.functions.roundMatches(
                task, round, model_commitment, rewards_root, cumulative_total
            ).call()
        if done:
            return False  # idempotent: exactly this round is on chain already
        self._transact(
            self._c.market.functions.commitRound(
                task,
                round,
                model_commitment,
                cid_bytes(model_cid),
                cid_bytes(bundle_cid),
                rewards_root,
                cumulative_total,
            ),
            f"commit round {round} of task {task}",
        )
        return True

    def claim(
        self,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> int:
        receipt = self._leaf_call(
            "claim", task, round, account, cumulative_amount, proof, "claim rewards"
        )
        return int(self._event(receipt, "Claimed", task=task, account=account)["amount"])

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
        _amount("cumulative_amount", cumulative_amount)
        self._transact(
            self._c.market.functions.challenge(
                task,
                round,
                evidence_round,
                _checksum(account),
                cumulative_amount,
                encode_proof(proof),
            ),
            f"challenge task {task} round {round} for {account} with round {evidence_round}",
        )

    def challenge_with_ack(self, task: TaskId, round: int, ack: Ack, signature: bytes) -> None:
        self._transact(
            self._c.market.functions.challengeWithAck(
                task, round, tuple(ack.as_struct().values()), signature
            ),
            f"challenge task {task} round {round} with the ack of round {ack.round}",
        )

    def answer(
        self,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> None:
        self._leaf_call(
            "answer", task, round, account, cumulative_amount, proof, "answer the challenge"
        )

    def void_round(self, task: TaskId, round: int, account: str) -> None:
        self._transact(
            self._c.market.functions.voidRound(task, round, _checksum(account)),
            f"void task {task} round {round} on {account}'s challenge",
        )

    def claim_acknowledged(self, ack: Ack, signature: bytes) -> int:
        receipt = self._transact(
            self._c.market.functions.claimAcknowledged(tuple(ack.as_struct().values()), signature),
            f"claim task {ack.task} round {ack.round} acknowledged rewards for {ack.device}",
        )
        return int(self._event(receipt, "Claimed", task=ack.task, account=ack.device)["amount"])

    def credit_ack(
        self, task: TaskId, account: str, leaf_amount: int, proof: Sequence[SumNode]
    ) -> int:
        _amount("leaf_amount", leaf_amount)
        receipt = self._transact(
            self._c.market.functions.creditAck(
                task, _checksum(account), leaf_amount, encode_proof(proof)
            ),
            f"credit {account}'s committed leaf against its acknowledgements in task {task}",
        )
        return int(self._event(receipt, "AckCredited", task=task, account=account)["amount"])

    def claim_sale_share(
        self,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
    ) -> int:
        receipt = self._leaf_call(
            "claimSaleShare", task, round, account, cumulative_amount, proof, "claim sale share"
        )
        shared = self._event(receipt, "SaleShareClaimed", task=task, round=round, account=account)
        return int(shared["amount"])

    def _leaf_call(
        self,
        function: str,
        task: TaskId,
        round: int,
        account: str,
        cumulative_amount: int,
        proof: Sequence[SumNode],
        what: str,
    ) -> TxReceipt:
        """A call proven by ``account``'s leaf in ``round``'s rewards root."""
        _amount("cumulative_amount", cumulative_amount)
        call = getattr(self._c.market.functions, function)(
            task, _checksum(account), round, cumulative_amount, encode_proof(proof)
        )
        return self._transact(call, f"{what} of task {task} round {round} for {account}")

    def close_task(self, task: TaskId) -> int:
        receipt = self._transact(self._c.market.functions.closeTask(task), f"close task {task}")
        return int(self._event(receipt, "TaskClosing")["closesAt"])

    def refund_unspent(self, task: TaskId) -> int:
        receipt = self._transact(
            self._c.market.functions.refundUnspent(task), f"refund task {task}'s unspent escrow"
        )
        return int(self._event(receipt, "TaskClosed")["refund"])

    # -- sales ---------------------------------------------------------------------------------

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
    ) -> ListingId:
        _bytes32("key_commitment", key_commitment)
        _positive("price", price)
        _positive("round", round)
        _bps(contributors_bps)
        receipt = self._transact(
            self._c.market.functions.list(
                task,
                round,
                cid_bytes(asset_cid),
                price,
                key_commitment,
                cid_bytes(metadata_cid),
                contributors_bps,
            ),
            "list an asset",
        )
        return ListingId(self._event(receipt, "Listed")["listing"])

    def delist(self, listing: ListingId) -> None:
        self._transact(self._c.market.functions.delist(listing), f"delist listing {listing}")

    def buy(self, listing: ListingId, *, buyer_key: G1Point, max_price: int) -> PurchaseId:
        _positive("max_price", max_price)
        deadline, v, r, s = self._permit(max_price)
        receipt = self._transact(
            self._c.market.functions.buyWithPermit(
                listing, list(buyer_key.as_tuple()), max_price, deadline, v, r, s
            ),
            f"buy listing {listing}",
        )
        return PurchaseId(self._event(receipt, "Purchased")["purchase"])

    def deliver_key(self, purchase: PurchaseId, delivery: KeyDelivery) -> None:
        self._transact(
            self._c.market.functions.deliverKey(
                purchase, list(delivery.ephemeral.as_tuple()), delivery.masked_key
            ),
            f"deliver the key of purchase {purchase}",
        )

    def dispute(self, purchase: PurchaseId, secret: OneTimeKey, delivery: KeyDelivery) -> int:
        receipt = self._transact(
            self._c.market.functions.dispute(
                purchase, secret.secret, list(delivery.ephemeral.as_tuple()), delivery.masked_key
            ),
            f"dispute the key of purchase {purchase}",
        )
        return int(self._event(receipt, "Disputed", purchase=purchase)["amount"])

    def settle(self, purchase: PurchaseId) -> int:
        receipt = self._transact(
            self._c.market.functions.settle(purchase), f"settle purchase {purchase}"
        )
        return int(self._event(receipt, "Settled", purchase=purchase)["sellerShare"])

    def refund(self, purchase: PurchaseId) -> int:
        receipt = self._transact(
            self._c.market.functions.refund(purchase), f"refund purchase {purchase}"
        )
        return int(self._event(receipt, "Refunded", purchase=purchase)["amount"])

    def withdraw(self) -> int:
        receipt = self._transact(self._c.market.functions.withdraw(), "withdraw proceeds")
        return int(self._event(receipt, "Withdrawn", account=self.address)["amount"])

    # -- token ---------------------------------------------------------------------------------

    def transfer(self, to: str, amount: int) -> None:
        self._transact(
            self._c.token.functions.transfer(to_checksum_address(to), amount),
            f"transfer {amount} to {to}",
        )

    def approve(self, spender: str, amount: int) -> None:
        self._transact(
            self._c.token.functions.approve(to_checksum_address(spender), amount),
            f"approve {spender}",
        )

    # -- views ---------------------------------------------------------------------------------

    def task(self, task: TaskId) -> TaskState:
        with self._rpc("tasks"):
            raw = self._c.market.functions.tasks(task).call()
            on_acks = int(self._c.market.functions.paidOnAcks(task).call())
            frozen_at = int(self._c.market.functions.frozenAt(task).call())
        sponsor, last_round, aggregator, closes_at, bps, escrow, paid, reward, committed = raw
        if int(sponsor, 16) == 0:
            raise InvalidInput(f"task {task} does not exist on this market")
        return TaskState(
            TaskId(task),
            Address(sponsor),
            Address(aggregator),
            last_round,
            closes_at,
            bps,
            escrow,
            paid,
            reward,
            committed,
            on_acks,
            frozen_at,
            refund_opens_at=max(closes_at, frozen_at) + self._windows()[2] if closes_at else 0,
        )

    def round_state(self, task: TaskId, round: int) -> RoundState | None:
        with self._rpc("rounds"):
            raw = self._c.market.functions.rounds(task, round).call()
            window = self._windows()[0]
        _key, committed_at, open_challenges, voided, root, commitment, total, _prior = raw
        if bytes(commitment) == bytes(32):
            return None
        return RoundState(
            bytes(root),
            bytes(commitment),
            int(total),
            committed_at=int(committed_at),
            open_challenges=int(open_challenges),
            voided=bool(voided),
            final_at=int(committed_at) + window,
        )

    def challenge_state(self, task: TaskId, round: int, account: str) -> ChallengeState | None:
        with self._rpc("challenges"):
            amount, deadline, is_open = self._c.market.functions.challenges(
                task, round, _checksum(account)
            ).call()
        if deadline == 0:
            return None
        return ChallengeState(int(amount), int(deadline), bool(is_open))

    def ack_counted(self, task: TaskId, account: str) -> int:
        with self._rpc("ackCounted"):
            value = self._c.market.functions.ackCounted(task, _checksum(account)).call()
        return int(value)

    def acks_paid(self, task: TaskId) -> list[Address]:
        event = self._c.market.events.AckClaimed
        with self._rpc("read AckClaimed events"):
            logs = event.get_logs(
                from_block=self._c.deployment.block, argument_filters={"task": task}
            )
        return list(dict.fromkeys(Address(log["args"]["account"]) for log in logs))

    def challenges_opened(self, task: TaskId) -> list[tuple[int, Address]]:
        event = self._c.market.events.ChallengeOpened
        with self._rpc("read ChallengeOpened events"):
            logs = event.get_logs(
                from_block=self._c.deployment.block, argument_filters={"task": task}
            )
        return [(int(log["args"]["round"]), Address(log["args"]["account"])) for log in logs]

    def _windows(self) -> tuple[int, int, int]:
        """(challenge window, response window, close grace) in seconds; immutable, so read
        once."""
        if not self._c.windows:
            market = self._c.market.functions
            with self._rpc("read the market's windows"):
                self._c.windows.extend(
                    int(getattr(market, name)().call())
                    for name in ("challengeWindow", "responseWindow", "closeGrace")
                )
        return self._c.windows[0], self._c.windows[1], self._c.windows[2]

    def claimed(self, task: TaskId, account: str) -> int:
        with self._rpc("claimedBy"):
            value = self._c.market.functions.claimedBy(task, to_checksum_address(account)).call()
        return int(value)

    def sale_claimed(self, task: TaskId, round: int, account: str) -> int:
        with self._rpc("saleClaimedBy"):
            value = self._c.market.functions.saleClaimedBy(
                task, round, to_checksum_address(account)
            ).call()
        return int(value)

    def sales_revenue(self, task: TaskId, round: int) -> tuple[int, int]:
        with self._rpc("salesRevenue"):
            revenue = self._c.market.functions.salesRevenue(task, round).call()
            paid = self._c.market.functions.salesPaid(task, round).call()
        return int(revenue), int(paid)

    def listing(self, listing: ListingId) -> ListingState:
        with self._rpc("listings"):
            seller, task, bps, active, round_, price, commitment, asset = (
                self._c.market.functions.listings(listing).call()
            )
        if int(seller, 16) == 0:
            raise InvalidInput(f"listing {listing} does not exist on this market")
        return ListingState(
            ListingId(listing),
            Address(seller),
            TaskId(task),
            round_,
            bps,
            active,
            price,
            bytes(commitment),
            cid_text(asset),
        )

    def purchase(self, purchase: PurchaseId) -> PurchaseRecord:
        with self._rpc("purchases"):
            listing, deadline, state, buyer, price, key_hash, delivery = (
                self._c.market.functions.purchases(purchase).call()
            )
        if state == PurchaseState.NONE:
            raise InvalidInput(f"purchase {purchase} does not exist on this market")
        return PurchaseRecord(
            PurchaseId(purchase),
            ListingId(listing),
            deadline,
            PurchaseState(state),
            Address(buyer),
            price,
            bytes(key_hash),
            bytes(delivery),
        )

    def owed(self, account: str) -> int:
        with self._rpc("owed"):
            return int(self._c.market.functions.owed(to_checksum_address(account)).call())

    def balance(self, account: str) -> int:
        with self._rpc("balanceOf"):
            return int(self._c.token.functions.balanceOf(to_checksum_address(account)).call())

    def receipt_signer(self, receipt: Receipt, signature: bytes) -> Address:
        struct = receipt.as_struct()
        with self._rpc("receiptSigner"):
            signer = self._c.market.functions.receiptSigner(
                tuple(struct.values()), signature
            ).call()
        return Address(signer)

    def task_ids(self) -> list[TaskId]:
        with self._rpc("taskCount"):
            count = int(self._c.market.functions.taskCount().call())
        return [TaskId(t) for t in range(1, count + 1)]

    def listing_ids(self) -> list[ListingId]:
        with self._rpc("listingCount"):
            count = int(self._c.market.functions.listingCount().call())
        return [ListingId(n) for n in range(1, count + 1)]

    def round_commits(self, task: TaskId | None = None) -> list[RoundCommit]:
        event = self._c.market.events.RoundCommitted
        filters = {"task": task} if task is not None else None
        with self._rpc("read RoundCommitted events"):
            logs = event.get_logs(from_block=self._c.deployment.block, argument_filters=filters)
        return [
            RoundCommit(
                task=TaskId(log["args"]["task"]),
                round=int(log["args"]["round"]),
                model_commitment=bytes(log["args"]["modelCommitment"]),
                model_cid=cid_text(log["args"]["modelCid"]),
                bundle_cid=cid_text(log["args"]["bundleCid"]),
                rewards_root=bytes(log["args"]["rewardsRoot"]),
                cumulative_total=int(log["args"]["cumulativeTotal"]),
                block=int(log["blockNumber"]),
            )
            for log in logs
        ]

    def purchases_of(self, seller: str) -> list[PurchaseRecord]:
        seller = to_checksum_address(seller)
        with self._rpc("read Listed events"):
            listed = self._c.market.events.Listed.get_logs(
                from_block=self._c.deployment.block, argument_filters={"seller": seller}
            )
            mine = [int(log["args"]["listing"]) for log in listed]
            bought = (
                self._c.market.events.Purchased.get_logs(
                    from_block=self._c.deployment.block, argument_filters={"listing": mine}
                )
                if mine
                else []
            )
        return [self.purchase(PurchaseId(int(log["args"]["purchase"]))) for log in bought]

    def listing_metadata_cid(self, listing: ListingId) -> str:
        with self._rpc("read Listed events"):
            logs = self._c.market.events.Listed.get_logs(
                from_block=self._c.deployment.block, argument_filters={"listing": listing}
            )
        if not logs:
            raise InvalidInput(f"listing {listing} does not exist on this market")
        return cid_text(logs[0]["args"]["metadataCid"])

    def now(self) -> int:
        with self._rpc("read the latest block"):
            return int(self._c.w3.eth.get_block("latest")["timestamp"])

    def key_delivery(self, purchase: PurchaseId) -> KeyDelivery | None:
        with self._rpc("read KeyDelivered events"):
            logs = self._c.market.events.KeyDelivered.get_logs(
                from_block=self._c.deployment.block, argument_filters={"purchase": purchase}
            )
        stored = self.purchase(purchase).delivery
        for log in logs:  # only the delivery the contract holds (an RPC endpoint may lie)
            args = log["args"]
            x, y, masked = int(args["ephemeralX"]), int(args["ephemeralY"]), args["maskedKey"]
            if keccak(encode(["uint256", "uint256", "bytes32"], [x, y, masked])) == stored:
                return KeyDelivery(G1Point(x, y), bytes(masked))
        return None

    def buyer_key(self, purchase: PurchaseId) -> G1Point:
        with self._rpc("read Purchased events"):
            logs = self._c.market.events.Purchased.get_logs(
                from_block=self._c.deployment.block, argument_filters={"purchase": purchase}
            )
        if not logs:
            raise InvalidInput(f"purchase {purchase} does not exist on this market")
        return G1Point(int(logs[0]["args"]["buyerKeyX"]), int(logs[0]["args"]["buyerKeyY"]))

    def round_matches(self, commit: RoundCommit) -> bool:
        with self._rpc("roundMatches"):
            return bool(
                self._c.market.functions.roundMatches(
                    commit.task,
                    commit.round,
                    commit.model_commitment,
                    commit.rewards_root,
                    commit.cumulative_total,
                ).call()
            )

    # -- plumbing ------------------------------------------------------------------------------

    def _permit(self, amount: int) -> tuple[int, int, bytes, bytes]:
        """Sign an EIP-2612 permit letting the market take ``amount`` (valid one hour)."""
        token = self._c.token
        with self._rpc("nonces"):
            nonce = token.functions.nonces(self.address).call()
            # Chain time, not ours: a chain's clock may run ahead (anvil time travel, skew).
            now = int(self._c.w3.eth.get_block("latest")["timestamp"])
        deadline = now + 3600
        signed = self._account.sign_typed_data(
            {
                "name": self._c.token_name,
                "version": "1",
                "chainId": self._c.deployment.chain_id,
                "verifyingContract": self._c.deployment.token,
            },
            {
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ]
            },
            {
                "owner": self.address,
                "spender": self._c.deployment.market,
                "value": amount,
                "nonce": nonce,
                "deadline": deadline,
            },
        )
        return deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")

    def _transact(self, call: ContractFunction, what: str) -> TxReceipt:
        w3 = self._c.w3
        with self._rpc(what), self._c.nonces.reserve(w3, self.address) as nonce:
            tx = self._build(call, what, nonce)
            signed = self._account.sign_transaction(tx)
            self._send(signed.raw_transaction, signed.hash, what)
        try:
            receipt = w3.eth.wait_for_transaction_receipt(signed.hash, timeout=self.receipt_timeout)
        except TimeExhausted:
            raise TransactionFailed(
                f"could not {what}: transaction 0x{signed.hash.hex()} was sent but not mined "
                f"within {self.receipt_timeout:g} s; check it before trying again"
            ) from None
        if receipt["status"] != 1:
            self._explain_failure(call, receipt, what)
        return receipt

    def _build(self, call: ContractFunction, what: str, nonce: int) -> dict[str, Any]:
        try:
            params: TxParams = {
                "from": _checksum(self.address),
                "nonce": Nonce(nonce),
                "chainId": self._c.deployment.chain_id,
            }
            tx: dict[str, Any] = dict(call.build_transaction(params))
        except ContractCustomError as exc:
            raise self._decoded(exc.data, what) from None
        except ContractLogicError as exc:
            raise TransactionFailed(f"could not {what}: the call would revert ({exc})") from None
        tx["gas"] = int(tx["gas"] * _GAS_MARGIN)
        tx["accessList"] = self._access_list(tx)
        return tx

    def _access_list(self, tx: dict[str, Any]) -> list[dict[str, Any]]:
        """EIP-2930: prepay the other contracts and slots the call touches (the token and its
        balances on a payout) at 2,400 + 1,900 gas a slot, saving 100 on each first access.
        The market is the recipient, already warm: listing it would cost more than it saves."""
        request: TxParams = {"from": tx["from"], "to": tx["to"], "data": tx["data"]}
        try:
            found = self._c.w3.eth.create_access_list(request, "pending")
        except (Web3RPCError, *_TRANSIENT):  # a node without eth_createAccessList: no list
            return []
        warm = {str(tx["to"]).lower(), str(tx["from"]).lower()}
        return [
            {"address": entry["address"], "storageKeys": list(entry["storageKeys"])}
            for entry in found["accessList"]
            if str(entry["address"]).lower() not in warm and int(str(entry["address"]), 16) > 0xFF
        ]

    def _send(self, raw: bytes, tx_hash: bytes, what: str) -> None:
        """Send, re-sending the same bytes after transient failures (never a new transaction)."""
        for attempt in range(self.retries + 1):
            try:
                self._c.w3.eth.send_raw_transaction(raw)
                return
            except _TRANSIENT:
                if attempt == self.retries:
                    raise
            except Web3RPCError as exc:
                if self._known(tx_hash):  # an earlier attempt did reach the node
                    return
                raise TransactionFailed(f"could not {what}: the node refused it ({exc})") from None
            if self._known(tx_hash):
                return
            time.sleep(0.5 * 2**attempt)

    def _known(self, tx_hash: bytes) -> bool:
        try:
            self._c.w3.eth.get_transaction(HexBytes(tx_hash))
        except (TransactionNotFound, *_TRANSIENT):
            return False
        return True

    def _explain_failure(self, call: ContractFunction, receipt: TxReceipt, what: str) -> None:
        """Re-run a reverted transaction as a call at its block to recover the custom error."""
        try:
            call.call({"from": self.address}, block_identifier=receipt["blockNumber"] - 1)
        except ContractCustomError as exc:
            raise self._decoded(exc.data, what) from None
        except ContractLogicError:
            pass
        raise TransactionFailed(
            f"could not {what}: transaction 0x{bytes(receipt['transactionHash']).hex()} "
            "reverted (out of gas or state changed before it was mined); try again"
        )

    def _decoded(self, data: Any, what: str) -> Exception:
        raw = bytes.fromhex(str(data).removeprefix("0x")) if isinstance(data, str) else b""
        error = self._c.decoder.decode(raw)
        if error is None:
            return TransactionFailed(f"could not {what}: reverted with unknown error {data}")
        return error

    def _event(self, receipt: TxReceipt, name: str, **where: object) -> dict[str, Any]:
        """The ``name`` event whose arguments include ``where``: a hostile token may re-enter
        the market during a payout, so the receipt can hold other accounts' events too."""
        # Discard: the token's Transfer/Approval logs in the same receipt are not market events.
        events = getattr(self._c.market.events, name)().process_receipt(receipt, errors=DISCARD)
        for event in events:
            args = dict(event["args"])
            if all(_same(args.get(key), value) for key, value in where.items()):
                return args
        raise TransactionFailed(f"transaction mined but emitted no {name} event for {where}")

    @contextlib.contextmanager
    def _rpc(self, what: str) -> Iterator[None]:
        try:
            yield
        except _TRANSIENT as exc:
            raise ChainUnavailable(
                f"could not {what}: the chain's RPC endpoint did not answer "
                f"({type(exc).__name__}); check it is running (`fedmarket chain status`)"
            ) from None
