"""Money invariants of the data market (v2) under random honest and hostile play, on anvil.

A Hypothesis state machine interleaves honest tasks (an honest sponsor, an aggregator that acks
uploads and commits true cumulative trees, honest devices, an honest buyer) with hostile actors
who open their own tasks, commit arbitrary roots (leaves for anyone, huge amounts), sign acks,
forge acks, list, buy, deliver garbage keys, dispute truly and falsely, settle, refund, close,
refund the unspent escrow and claim by tree, ack or sale share, at any time. A plain-Python model
predicts every outcome (which call succeeds, which custom error refuses it, how much moves), and
after every step the chain is checked against it:

- token supply is conserved, and every account holds exactly what the model says;
- the market holds exactly what it owes: Σ tasks (escrow - paid) + Σ rounds (sales revenue -
  sale shares paid) + prices of pending and delivered purchases + seller proceeds owed;
- nobody was paid more than committed or acknowledged to it, or anything twice;
- no honest entitlement falls: honest devices' committed rewards in honest tasks stay payable
  from the task, honest buyers get wrong keys refunded, honest sellers are never refunded away.

Time moves only in ``wait``, by more than every window (3,600 s), after the online honest
parties acted (the buyer disputes wrong keys, sellers deliver, the aggregator commits within
a close grace); so a deadline set in one "epoch" has passed exactly when the epoch moved on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from chain_helpers import EMPTY_CID, MODEL_CID, MODEL_COMMITMENT, Chain
from eth_abi.abi import decode, encode
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fedmarket.acks import Ack, sign_ack
from fedmarket.crypto import AssetKey, KeyDelivery, OneTimeKey, deliver_key
from fedmarket.crypto.key_delivery import GENERATOR
from fedmarket.exceptions import ContractRejected, InvalidInput, TransactionFailed
from fedmarket.ledger import PurchaseState
from fedmarket.ledger import errors as market_errors
from fedmarket.market.rewards import RewardTree
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPONSOR, AGGREGATOR = 0, 1  # honest
DEVICES = (2, 3, 4)  # honest
HOSTILE, SYBIL = 5, 6  # a hostile sponsor / aggregator / seller and its Sybil
BUYER, HOSTILE_BUYER, ANYONE = 7, 8, 9  # an honest buyer, a hostile one, a stranger
EVERYONE = tuple(range(10))
HONEST_SELLERS = (SPONSOR, AGGREGATOR)
SELLERS = (SPONSOR, AGGREGATOR, HOSTILE, SYBIL)  # everyone who may list: the tasks' owners
START_FUNDS = 10_000
UPLOAD = hashlib.sha256(b"masked upload").digest()
Outcome = type[Exception] | None
# DataMarket.tasks(task): sponsor, lastRound, aggregator, closesAt, contributorsBps, escrow, paid,
# reward, committed
TASK_FIELDS = [
    "address",
    "uint64",
    "address",
    "uint64",
    "uint16",
    "uint128",
    "uint128",
    "uint128",
    "uint128",
]


def _calldata(name: str, types: list[str], args: list[object]) -> bytes:
    return keccak(text=f"{name}({','.join(types)})")[:4] + encode(types, args)


@dataclass
class RoundModel:
    tree: RewardTree
    total: int
    commitment: bytes

    def leaf(self, account: str) -> int | None:
        return self.tree.amounts.get(account)


@dataclass
class AckModel:
    ack: Ack
    signature: bytes
    genuine: bool  # signed by the task's aggregator


@dataclass
class TaskModel:
    sponsor: int
    aggregator: int
    honest: bool
    escrow: int
    paid: int = 0
    paid_on_acks: int = 0
    committed: int = 0
    last_round: int = 0
    closes_epoch: int | None = None  # the epoch of the close: closed once the epoch moves on
    rounds: dict[int, RoundModel] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)
    acks: list[AckModel] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # honest: acked, not yet committed

    @property
    def reserved(self) -> int:
        return max(self.committed + self.paid_on_acks, self.paid)

    def entitlement(self, account: str) -> int:
        """The most a committed root or a claimable genuine ack promises ``account``."""
        leaves = [r.leaf(account) or 0 for r in self.rounds.values()]
        acks = [
            a.ack.cumulative_amount
            for a in self.acks
            if a.genuine
            and a.ack.device == account
            and (a.ack.round <= self.last_round or self.closes_epoch is not None)
        ]
        return max([0, *leaves, *acks])


@dataclass
class SalesModel:
    revenue: int = 0
    paid: int = 0
    claimed: dict[str, int] = field(default_factory=dict)


@dataclass
class ListingModel:
    task: TaskId
    round: int
    seller: int
    price: int
    bps: int
    key: AssetKey


@dataclass
class PurchaseModel:
    listing: ListingId
    buyer: int
    price: int
    one_time: OneTimeKey
    epoch: int  # when its current deadline was set (bought, or delivered)
    state: PurchaseState = PurchaseState.PENDING
    delivery: KeyDelivery | None = None
    correct: bool | None = None  # whether the delivered key opens the listing's commitment


class MarketMachine(RuleBasedStateMachine):
    chain: Chain  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = self.chain.snapshot()
        self.ledgers = {i: self.chain.ledger(i) for i in EVERYONE}
        self.address = {i: ledger.address for i, ledger in self.ledgers.items()}
        self.market = self.chain.deployment.market
        self.epoch = 0
        self.tasks: dict[TaskId, TaskModel] = {}
        self.sales: dict[tuple[TaskId, int], SalesModel] = {}
        self.listings: dict[ListingId, ListingModel] = {}
        self.purchases: dict[PurchaseId, PurchaseModel] = {}
        self.owed: dict[int, int] = dict.fromkeys(EVERYONE, 0)
        self.received: dict[int, int] = dict.fromkeys(EVERYONE, 0)  # from the market
        self.sent: dict[int, int] = dict.fromkeys(EVERYONE, 0)  # into the market
        self.seen_entitlement: dict[tuple[TaskId, str], int] = {}
        self.supply = self._read_chain()["supply"]

    def teardown(self) -> None:
        self.chain.revert(self.snapshot)

    @initialize(
        honest_budget=st.integers(60, 300),
        rewards=st.lists(st.integers(1, 20), min_size=len(DEVICES), max_size=len(DEVICES)),
        hostile_budget=st.integers(1, 50),
        hostile_aggregator=st.sampled_from([HOSTILE, SYBIL]),
        hostile_leaves=st.lists(st.integers(1, 60), min_size=3, max_size=3),
    )
    def open_markets(
        self,
        honest_budget: int,
        rewards: list[int],
        hostile_budget: int,
        hostile_aggregator: int,
        hostile_leaves: list[int],
    ) -> None:
        """Fund the actors; an honest task with round 1 committed, and a hostile task whose
        round 1 pays itself, its Sybil and an honest device (the leaves may pass the total)."""
        for index in (HOSTILE, BUYER, HOSTILE_BUYER):
            self.ledgers[SPONSOR].transfer(self.address[index], START_FUNDS)
        self.start = {i: self.ledgers[i].balance(a) for i, a in self.address.items()}
        self.market_start = self.ledgers[SPONSOR].balance(self.market)
        honest = self._create(SPONSOR, AGGREGATOR, honest_budget)
        self.honest_round(honest, rewards, commit=True)
        hostile = self._create(HOSTILE, hostile_aggregator, hostile_budget)
        leaves = zip((HOSTILE, SYBIL, DEVICES[0]), hostile_leaves, strict=True)
        tree = RewardTree.build({self.address[i]: v for i, v in leaves})
        self._commit(hostile, hostile_aggregator, 1, tree, min(tree.total, hostile_budget))
        # each round for sale: the honest one by its aggregator, the hostile one by its owner
        self._list(honest, 1, AGGREGATOR, price=30, bps=2500)
        self._list(hostile, 1, hostile_aggregator, price=20, bps=10_000)

    # -- tasks and commits ---------------------------------------------------------------------

    @rule(
        honest=st.booleans(),
        budget=st.integers(1, 200),
        aggregator=st.sampled_from([HOSTILE, SYBIL]),
    )
    def create_task(self, honest: bool, budget: int, aggregator: int) -> None:
        if honest:
            self._create(SPONSOR, AGGREGATOR, budget)
        else:
            self._create(HOSTILE, aggregator, budget)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), amount=st.integers(1, 50))
    def fund(self, data: st.DataObject, amount: int) -> None:
        task, model = self._task(data)
        expected = market_errors.TaskIsClosed if self._closed(model) else None
        self._expect(lambda: self.ledgers[model.sponsor].fund_task(task, amount), expected)
        if expected is None:
            model.escrow += amount
            self.sent[model.sponsor] += amount

    @precondition(lambda self: any(m.honest and not self._closed(m) for m in self.tasks.values()))
    @rule(
        data=st.data(),
        rewards=st.lists(st.integers(0, 20), min_size=len(DEVICES), max_size=len(DEVICES)),
        commit=st.sampled_from([True, True, False]),
    )
    def honest_round_rule(self, data: st.DataObject, rewards: list[int], commit: bool) -> None:
        open_honest = [t for t, m in self.tasks.items() if m.honest and not self._closed(m)]
        self.honest_round(data.draw(st.sampled_from(open_honest)), rewards, commit=commit)

    def honest_round(self, task: TaskId, rewards: list[int], *, commit: bool) -> None:
        """The honest aggregator acks each device's accepted upload for the next round (0: no
        upload), then commits the true cumulative tree, or leaves the round pending."""
        model = self.tasks[task]
        for index, reward in zip(DEVICES, rewards, strict=True):
            device = self.address[index]
            if not reward or sum(model.pending.values()) + reward > model.escrow:
                continue  # an honest aggregator never promises more than the escrow
            model.pending[device] = model.pending.get(device, 0) + reward
            ack = Ack(task, model.last_round + 1, device, UPLOAD, model.pending[device])
            model.acks.append(AckModel(ack, self._sign(ack, AGGREGATOR), genuine=True))
        if commit:
            self._honest_commit(task)

    @precondition(lambda self: any(m.honest for m in self.tasks.values()))
    @rule(data=st.data())
    def honest_commit(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.honest]))
        self._honest_commit(task)

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        by_aggregator=st.sampled_from([True, True, True, False]),
        skip=st.sampled_from([1, 1, 1, 2, 0]),
        leaves=st.lists(
            st.tuples(
                st.sampled_from(EVERYONE),
                st.one_of(st.integers(0, 100), st.sampled_from(["market", 2**128])),
            ),
            min_size=1,
            max_size=4,
        ),
        total=st.sampled_from(["committed", "escrow", "escrow", "leaves", "below", "above"]),
        zero_commitment=st.sampled_from([False, False, False, False, True]),
    )
    def hostile_commit(
        self,
        data: st.DataObject,
        by_aggregator: bool,
        skip: int,
        leaves: list[tuple[int, int | str]],
        total: str,
        zero_commitment: bool,
    ) -> None:
        """Commit any root: into a hostile task by its aggregator, or into any task by a
        stranger; leaves for anyone (honest devices too), up to the market's whole balance."""
        task, model = self._task(data, hostile_first=True)
        who = model.aggregator if by_aggregator and not model.honest else HOSTILE
        market = self.ledgers[SPONSOR].balance(self.market)
        amounts = {
            self.address[i]: market if v == "market" else int(v) for i, v in dict(leaves).items()
        }
        tree = RewardTree.build(amounts)
        cumulative = {
            "committed": model.committed,
            "below": model.committed - 1,
            "escrow": model.escrow,
            "above": model.escrow + 1,
            "leaves": tree.total,
        }[total]
        round_ = model.last_round + skip
        commitment = bytes(32) if zero_commitment else MODEL_COMMITMENT
        same = model.rounds.get(round_)
        expected: Outcome = None
        if round_ == 0 or cumulative < 0:
            expected = InvalidInput
        elif same and (same.tree.root, same.total, same.commitment) == (
            tree.root,
            cumulative,
            commitment,
        ):
            expected = None  # the ledger sees it on chain already and sends nothing
        elif self._closed(model):
            expected = market_errors.TaskIsClosed
        elif who != model.aggregator:
            expected = market_errors.NotAggregator
        elif round_ <= model.last_round:
            expected = market_errors.RoundNotIncreasing
        elif cumulative < model.committed:
            expected = market_errors.CumulativeDecreased
        elif cumulative > model.escrow:
            expected = market_errors.ExceedsEscrow
        elif zero_commitment:
            expected = market_errors.ZeroCommitment
        sent = self._expect(
            lambda: self.ledgers[who].commit_round(
                task,
                round_,
                model_commitment=commitment,
                model_cid=MODEL_CID,
                bundle_cid=EMPTY_CID,
                rewards_root=tree.root,
                cumulative_total=cumulative,
            ),
            expected,
        )
        if expected is None and sent:
            model.rounds[round_] = RoundModel(tree, cumulative, commitment)
            model.committed, model.last_round = cumulative, round_

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        signer=st.sampled_from([HOSTILE, SYBIL]),
        device=st.sampled_from(EVERYONE),
        amount=st.one_of(st.integers(1, 100), st.just(2**128)),
        ahead=st.integers(0, 1),
    )
    def hostile_ack(
        self, data: st.DataObject, signer: int, device: int, amount: int, ahead: int
    ) -> None:
        """A hostile party signs an ack: genuine in its own task, a forgery in anyone else's."""
        task, model = self._task(data, hostile_first=True)
        ack = Ack(task, max(1, model.last_round + ahead), self.address[device], UPLOAD, amount)
        genuine = signer == model.aggregator
        model.acks.append(AckModel(ack, self._sign(ack, signer), genuine))

    # -- claims --------------------------------------------------------------------------------

    @precondition(lambda self: any(m.rounds for m in self.tasks.values()))
    @rule(data=st.data(), submitter=st.sampled_from(EVERYONE), forged=st.booleans())
    def claim(self, data: st.DataObject, submitter: int, forged: bool) -> None:
        task, model, round_, account, amount, proof, valid = self._leaf_claim(data, forged)
        expected, pay = (
            self._pay_outcome(model, account, amount) if valid else (market_errors.InvalidProof, 0)
        )
        paid = self._expect(
            lambda: self.ledgers[submitter].claim(task, round_, account, amount, proof), expected
        )
        if expected is None:
            assert paid == pay
            self._paid(model, account, amount, pay)

    @precondition(lambda self: any(m.acks for m in self.tasks.values()))
    @rule(data=st.data(), submitter=st.sampled_from(EVERYONE))
    def claim_acknowledged(self, data: st.DataObject, submitter: int) -> None:
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.acks]))
        model = self.tasks[task]
        item = data.draw(st.sampled_from(model.acks))
        account, amount = item.ack.device, item.ack.cumulative_amount
        expected: Outcome
        pay = 0
        if not item.genuine:
            expected = market_errors.NotAcknowledgedByAggregator
        elif item.ack.round > model.last_round and model.closes_epoch is None:
            expected = market_errors.AckRoundNotCommitted
        else:
            expected, pay = self._pay_outcome(model, account, amount)
        paid = self._expect(
            lambda: self.ledgers[submitter].claim_acknowledged(item.ack, item.signature), expected
        )
        if expected is None:
            assert paid == pay
            self._paid(model, account, amount, pay)
            model.paid_on_acks += pay

    @precondition(lambda self: any(m.rounds for m in self.tasks.values()))
    @rule(data=st.data(), submitter=st.sampled_from(EVERYONE), forged=st.booleans())
    def claim_sale_share(self, data: st.DataObject, submitter: int, forged: bool) -> None:
        task, model, round_, account, amount, proof, valid = self._leaf_claim(data, forged)
        sales = self.sales.setdefault((task, round_), SalesModel())
        already = sales.claimed.get(account, 0)
        expected: Outcome = None
        due = 0
        if not valid:
            expected = market_errors.InvalidProof
        elif sales.revenue == 0:
            expected = market_errors.NothingToClaim
        else:
            due = sales.revenue * amount // model.rounds[round_].total
            if due <= already:
                expected = market_errors.NothingToClaim
            elif sales.paid + due - already > sales.revenue:
                expected = market_errors.TaskUnderfunded
        paid = self._expect(
            lambda: self.ledgers[submitter].claim_sale_share(task, round_, account, amount, proof),
            expected,
        )
        if expected is None:
            assert paid == due - already
            sales.claimed[account] = due
            sales.paid += paid
            self.received[self._index(account)] += paid

    @precondition(lambda self: any(m.honest and m.rounds for m in self.tasks.values()))
    @rule(data=st.data())
    def honest_devices_collect(self, data: st.DataObject) -> None:
        """Every honest device takes all it is owed in an honest task, by tree and sale share:
        whatever the hostile actors did before, each of these must go through."""
        task = data.draw(
            st.sampled_from([t for t, m in self.tasks.items() if m.honest and m.rounds])
        )
        model = self.tasks[task]
        for index in DEVICES:
            device = self.address[index]
            best = max(model.rounds, key=lambda r: model.rounds[r].leaf(device) or 0)
            tree = model.rounds[best].tree
            amount = tree.amounts.get(device, 0)
            if amount > model.claimed.get(device, 0):
                expected, pay = self._pay_outcome(model, device, amount)
                assert expected is None, "an honest device could not be paid its reward"
                paid = self.ledgers[index].claim(task, best, device, amount, tree.proof(device))
                assert paid == pay
                self._paid(model, device, amount, pay)
            for round_, root in model.rounds.items():
                sales = self.sales.get((task, round_))
                leaf = root.leaf(device)
                if sales is None or not leaf or not sales.revenue:
                    continue
                due = sales.revenue * leaf // root.total
                if due > sales.claimed.get(device, 0):
                    paid = self.ledgers[index].claim_sale_share(
                        task, round_, device, leaf, root.tree.proof(device)
                    )
                    assert paid == due - sales.claimed.get(device, 0)
                    sales.claimed[device] = due
                    sales.paid += paid
                    self.received[index] += paid

    # -- closing -------------------------------------------------------------------------------

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), by_sponsor=st.sampled_from([True, True, True, False]))
    def close(self, data: st.DataObject, by_sponsor: bool) -> None:
        task, model = self._task(data)
        who = model.sponsor if by_sponsor else ANYONE
        expected: Outcome = None
        if self._closed(model):
            expected = market_errors.TaskIsClosed
        elif not by_sponsor:
            expected = market_errors.NotSponsor
        elif model.closes_epoch is not None:
            expected = market_errors.TaskIsClosed
        self._expect(lambda: self.ledgers[who].close_task(task), expected)
        if expected is None:
            model.closes_epoch = self.epoch

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), who=st.sampled_from(EVERYONE))
    def refund_unspent(self, data: st.DataObject, who: int) -> None:
        task, model = self._task(data)
        expected: Outcome = None
        if not self._closed(model):
            expected = market_errors.TaskNotClosed
        elif model.escrow <= model.reserved:
            expected = market_errors.NothingToRefund
        refund = self._expect(lambda: self.ledgers[who].refund_unspent(task), expected)
        if expected is None:
            assert refund == model.escrow - model.reserved
            model.escrow = model.reserved
            self.received[model.sponsor] += refund

    # -- sales ---------------------------------------------------------------------------------

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        seller=st.sampled_from(["sponsor", "aggregator", "aggregator", "stranger"]),
        ahead=st.sampled_from([0, 0, 0, 1]),
        price=st.integers(1, 50),
        bps=st.sampled_from([0, 2500, 10_000]),
    )
    def list_round(
        self, data: st.DataObject, seller: str, ahead: int, price: int, bps: int
    ) -> None:
        task, model = self._task(data)
        who = {"sponsor": model.sponsor, "aggregator": model.aggregator, "stranger": ANYONE}[seller]
        round_ = model.last_round + ahead
        expected: Outcome = None
        if round_ == 0:
            expected = InvalidInput
        elif who not in (model.sponsor, model.aggregator):
            expected = market_errors.NotTaskOwner
        elif round_ not in model.rounds:
            expected = market_errors.UnknownRound
        elif bps and model.rounds[round_].total == 0:
            expected = market_errors.NoContributors
        self._list(task, round_, who, price=price, bps=bps, expected=expected)

    @precondition(lambda self: self.listings)
    @rule(
        data=st.data(),
        buyer=st.sampled_from([BUYER, HOSTILE_BUYER, HOSTILE]),
        short=st.sampled_from([False, False, False, True]),
        then=st.sampled_from(["nothing", "deliver", "deliver garbage"]),
    )
    def buy(self, data: st.DataObject, buyer: int, short: bool, then: str) -> None:
        """Buy a listing; then its seller may deliver at once (an honest seller always the
        committed key, a hostile one maybe garbage)."""
        listing = data.draw(st.sampled_from(sorted(self.listings)))
        model = self.listings[listing]
        max_price = model.price - 1 if short and model.price > 1 else model.price
        expected = market_errors.PriceChanged if max_price < model.price else None
        one_time = OneTimeKey.generate()
        purchase = self._expect(
            lambda: self.ledgers[buyer].buy(
                listing, buyer_key=one_time.public, max_price=max_price
            ),
            expected,
        )
        if expected is not None:
            return
        self.purchases[purchase] = PurchaseModel(listing, buyer, model.price, one_time, self.epoch)
        self.sent[buyer] += model.price
        if then != "nothing":
            correct = then == "deliver" or model.seller in HONEST_SELLERS
            self._deliver(purchase, correct, model.seller)

    @precondition(lambda self: self.purchases)
    @rule(
        data=st.data(), correct=st.booleans(), by_seller=st.sampled_from([True, True, True, False])
    )
    def deliver(self, data: st.DataObject, correct: bool, by_seller: bool) -> None:
        purchase, model = self._purchase(data)
        seller = self.listings[model.listing].seller
        # honest sellers only ever deliver the committed key; hostile ones anything
        self._deliver(
            purchase, correct or seller in HONEST_SELLERS, seller if by_seller else ANYONE
        )

    @precondition(lambda self: self.purchases)
    @rule(
        data=st.data(),
        by_buyer=st.sampled_from([True, True, True, False]),
        true_secret=st.sampled_from([True, True, True, False]),
    )
    def dispute(self, data: st.DataObject, by_buyer: bool, true_secret: bool) -> None:
        purchase, model = self._purchase(data)
        self._dispute(purchase, model.buyer if by_buyer else ANYONE, true_secret)

    @precondition(lambda self: self.purchases)
    @rule(data=st.data(), who=st.sampled_from(EVERYONE))
    def settle(self, data: st.DataObject, who: int) -> None:
        purchase, _ = self._purchase(data)
        self._settle(purchase, who)

    @precondition(lambda self: self.purchases)
    @rule(data=st.data(), by_buyer=st.sampled_from([True, True, True, False]))
    def refund(self, data: st.DataObject, by_buyer: bool) -> None:
        purchase, model = self._purchase(data)
        self._refund(purchase, model.buyer if by_buyer else ANYONE)

    @rule(who=st.sampled_from([SPONSOR, AGGREGATOR, HOSTILE, SYBIL, ANYONE]))
    def withdraw(self, who: int) -> None:
        due = self.owed[who]
        amount = self._expect(
            lambda: self.ledgers[who].withdraw(), None if due else market_errors.ZeroAmount
        )
        if due:
            assert amount == due
            self.owed[who] = 0
            self.received[who] += due

    @rule()
    def wait(self) -> None:
        """The online honest parties act, then chain time passes every window."""
        for task, model in self.tasks.items():
            if model.honest and model.closes_epoch == self.epoch:
                self._honest_commit(task)  # within the close grace
        for purchase, model in self.purchases.items():
            if self._past(model.epoch):
                continue
            seller = self.listings[model.listing].seller
            if model.state == PurchaseState.PENDING and seller in HONEST_SELLERS:
                self._deliver(purchase, True, seller)
            elif (model.buyer, model.state, model.correct) == (
                BUYER,
                PurchaseState.DELIVERED,
                False,
            ):  # the honest buyer checks every key it gets and disputes a wrong one
                self._dispute(purchase, BUYER, True)
        self.chain.advance(3601)
        self.epoch += 1
        for purchase, model in self.purchases.items():
            if not self._past(model.epoch):
                continue
            seller = self.listings[model.listing].seller
            if model.state == PurchaseState.DELIVERED and seller in HONEST_SELLERS:
                self._settle(purchase, seller)  # honest sellers collect once the window ends
            elif model.state == PurchaseState.PENDING and model.buyer == BUYER:
                self._refund(purchase, BUYER)  # the honest buyer takes an undelivered one back

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def money_is_where_the_model_says(self) -> None:
        view = self._read_chain()
        balances, market = view["balances"], view["market"]
        # supply conserved: every token is with a dev account or the market
        assert sum(balances.values()) + market == view["supply"] == self.supply
        # each account holds its start, plus what the market paid it, minus what it paid in
        for i in EVERYONE:
            assert balances[i] == self.start[i] + self.received[i] - self.sent[i], i
        # the market holds exactly what it owes
        in_escrow = sum(m.escrow - m.paid for m in self.tasks.values())
        in_sales = sum(s.revenue - s.paid for s in self.sales.values())
        in_purchases = sum(
            p.price
            for p in self.purchases.values()
            if p.state in (PurchaseState.PENDING, PurchaseState.DELIVERED)
        )
        owed = sum(self.owed.values())
        assert market - self.market_start == in_escrow + in_sales + in_purchases + owed
        for task, model in self.tasks.items():
            _, last_round, _, _, _, escrow, paid, _, committed = view["tasks"][task]
            assert (escrow, paid, committed, last_round) == (
                model.escrow,
                model.paid,
                model.committed,
                model.last_round,
            )
            assert paid <= escrow
        for key, sales in self.sales.items():
            if sales.revenue:
                assert view["sales"][key] == (sales.revenue, sales.paid)
                assert sales.paid <= sales.revenue
        assert view["owed"] == {i: self.owed[i] for i in SELLERS}

    @invariant()
    def nobody_was_paid_more_than_promised(self) -> None:
        for model in self.tasks.values():
            for account, claimed in model.claimed.items():
                assert claimed <= model.entitlement(account)
            assert model.paid == sum(model.claimed.values())  # each unit paid once
        for (task, round_), sales in self.sales.items():
            root = self.tasks[task].rounds.get(round_)
            for account, claimed in sales.claimed.items():
                assert root is not None
                leaf = root.leaf(account) or 0
                assert claimed <= sales.revenue * leaf // root.total

    @invariant()
    def honest_entitlements_never_fall(self) -> None:
        for task, model in self.tasks.items():
            if not model.honest:
                continue
            outstanding = 0
            for index in DEVICES:
                device = self.address[index]
                entitled = model.entitlement(device)
                assert entitled >= self.seen_entitlement.get((task, device), 0)
                self.seen_entitlement[task, device] = entitled
                outstanding += entitled - model.claimed.get(device, 0)
            assert model.escrow - model.paid >= outstanding  # all still payable from the task
            for round_, root in model.rounds.items():
                sales = self.sales.get((task, round_))
                if sales is None or not sales.revenue:
                    continue
                due = sum(
                    sales.revenue * amount // root.total - sales.claimed.get(device, 0)
                    for device, amount in root.tree.amounts.items()
                )
                assert sales.revenue - sales.paid >= due
        for model in self.purchases.values():
            seller = self.listings[model.listing].seller
            if model.buyer == BUYER and model.correct is False:  # a wrong key to the honest buyer
                assert model.state in (PurchaseState.DELIVERED, PurchaseState.REFUNDED)
                assert model.state == PurchaseState.REFUNDED or not self._past(model.epoch)
            if seller in HONEST_SELLERS:  # an honest seller delivers in time, and is paid
                assert model.state != PurchaseState.REFUNDED
                assert model.correct is not False

    # -- helpers -------------------------------------------------------------------------------

    def _read_chain(self) -> dict[str, Any]:
        """Everything the invariants compare, as one JSON-RPC batch of raw ``eth_call``s
        (web3's per-call ABI handling would cost more than the calls themselves)."""
        token, market = self.chain.deployment.token, self.market
        tasks = sorted(self.tasks)
        rounds = sorted(key for key, sales in self.sales.items() if sales.revenue)
        calls: list[tuple[str, str, list[str], list[object]]] = [
            (token, "totalSupply", [], []),
            (token, "balanceOf", ["address"], [market]),
            *[(token, "balanceOf", ["address"], [self.address[i]]) for i in EVERYONE],
            *[(market, "tasks", ["uint256"], [task]) for task in tasks],
            *[
                (market, name, ["uint256", "uint256"], [task, round_])
                for task, round_ in rounds
                for name in ("salesRevenue", "salesPaid")
            ],
            *[(market, "owed", ["address"], [self.address[i]]) for i in SELLERS],
        ]
        batch = [
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "eth_call",
                "params": [{"to": to, "data": "0x" + _calldata(name, types, args).hex()}, "latest"],
            }
            for n, (to, name, types, args) in enumerate(calls)
        ]
        response = requests.post(self.chain.local.rpc_url, json=batch, timeout=30)
        answers = {item["id"]: bytes.fromhex(item["result"][2:]) for item in response.json()}
        words = iter(
            decode(TASK_FIELDS, answers[n])
            if name == "tasks"
            else decode(["uint256"], answers[n])[0]
            for n, (_, name, _, _) in enumerate(calls)
        )
        return {
            "supply": next(words),
            "market": next(words),
            "balances": {i: next(words) for i in EVERYONE},
            "tasks": {task: next(words) for task in tasks},
            "sales": {key: (next(words), next(words)) for key in rounds},
            "owed": {i: next(words) for i in SELLERS},
        }

    def _task(
        self, data: st.DataObject, *, hostile_first: bool = False
    ) -> tuple[TaskId, TaskModel]:
        """Any task; with ``hostile_first``, a hostile one three times in four."""
        hostile = sorted(t for t, m in self.tasks.items() if not m.honest)
        if hostile_first and hostile and data.draw(st.integers(0, 3)):
            task = data.draw(st.sampled_from(hostile))
        else:
            task = data.draw(st.sampled_from(sorted(self.tasks)))
        return task, self.tasks[task]

    def _create(self, sponsor: int, aggregator: int, budget: int) -> TaskId:
        task = self.ledgers[sponsor].create_task(
            aggregator=self.address[aggregator],
            reward_per_update=1,
            budget=budget,
            spec_cid=EMPTY_CID,
        )
        self.tasks[task] = TaskModel(sponsor, aggregator, sponsor == SPONSOR, escrow=budget)
        self.sent[sponsor] += budget
        return task

    def _purchase(self, data: st.DataObject) -> tuple[PurchaseId, PurchaseModel]:
        purchase = data.draw(st.sampled_from(sorted(self.purchases)))
        return purchase, self.purchases[purchase]

    def _index(self, account: str) -> int:
        return next(i for i, a in self.address.items() if a == account)

    def _past(self, epoch: int) -> bool:
        """Whether a deadline set (WINDOW after a time) in ``epoch`` has passed."""
        return self.epoch > epoch

    def _closed(self, model: TaskModel) -> bool:
        return model.closes_epoch is not None and self._past(model.closes_epoch)

    def _sign(self, ack: Ack, signer: int) -> bytes:
        deployment = self.chain.deployment
        return sign_ack(
            ack,
            self.chain.accounts[signer],
            chain_id=deployment.chain_id,
            market=deployment.market,
        )

    def _list(
        self,
        task: TaskId,
        round_: int,
        who: int,
        *,
        price: int,
        bps: int,
        expected: Outcome = None,
    ) -> None:
        key = AssetKey.generate()
        listing = self._expect(
            lambda: self.ledgers[who].list_asset(
                task=task,
                round=round_,
                asset_cid=MODEL_CID,
                price=price,
                key_commitment=key.commitment,
                metadata_cid=EMPTY_CID,
                contributors_bps=bps,
            ),
            expected,
        )
        if expected is None:
            self.listings[listing] = ListingModel(task, round_, who, price, bps, key)

    def _commit(self, task: TaskId, who: int, round_: int, tree: RewardTree, total: int) -> None:
        """A commit the model expects to go through."""
        model = self.tasks[task]
        self._expect(
            lambda: self.ledgers[who].commit_round(
                task,
                round_,
                model_commitment=MODEL_COMMITMENT,
                model_cid=MODEL_CID,
                bundle_cid=EMPTY_CID,
                rewards_root=tree.root,
                cumulative_total=total,
            ),
            None,
        )
        model.rounds[round_] = RoundModel(tree, total, MODEL_COMMITMENT)
        model.committed, model.last_round = total, round_

    def _honest_commit(self, task: TaskId) -> None:
        """The honest aggregator commits the true cumulative tree of the acked uploads."""
        model = self.tasks[task]
        latest = model.rounds.get(model.last_round)
        if not model.pending or (latest and dict(latest.tree.amounts) == model.pending):
            return
        tree = RewardTree.build(model.pending)
        round_ = model.last_round + 1
        expected = market_errors.TaskIsClosed if self._closed(model) else None
        self._expect(
            lambda: self.ledgers[AGGREGATOR].commit_round(
                task,
                round_,
                model_commitment=MODEL_COMMITMENT,
                model_cid=MODEL_CID,
                bundle_cid=EMPTY_CID,
                rewards_root=tree.root,
                cumulative_total=tree.total,
            ),
            expected,
        )
        if expected is None:
            model.rounds[round_] = RoundModel(tree, tree.total, MODEL_COMMITMENT)
            model.committed, model.last_round = tree.total, round_

    def _leaf_claim(
        self, data: st.DataObject, forged: bool
    ) -> tuple[TaskId, TaskModel, int, str, int, list[bytes], bool]:
        """A (task, round, account, amount, proof) to claim with, and whether it is valid."""
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.rounds]))
        model = self.tasks[task]
        round_ = data.draw(st.sampled_from(sorted(model.rounds)))
        tree = model.rounds[round_].tree
        account = data.draw(st.sampled_from(sorted(tree.amounts)))
        amount, proof = tree.amounts[account], tree.proof(account)
        if forged:
            amount += data.draw(st.integers(1, 100))
        return task, model, round_, account, amount, proof, not forged

    def _pay_outcome(self, model: TaskModel, account: str, amount: int) -> tuple[Outcome, int]:
        """DataMarket._pay: what paying ``account`` up to ``amount`` cumulative does."""
        already = model.claimed.get(account, 0)
        if amount <= already:
            return market_errors.NothingToClaim, 0
        if model.paid + amount - already > model.escrow:
            return market_errors.TaskUnderfunded, 0
        return None, amount - already

    def _paid(self, model: TaskModel, account: str, amount: int, pay: int) -> None:
        model.claimed[account] = amount
        model.paid += pay
        self.received[self._index(account)] += pay

    def _deliver(self, purchase: PurchaseId, correct: bool, who: int) -> None:
        model = self.purchases[purchase]
        listing = self.listings[model.listing]
        expected: Outcome = None
        if model.state != PurchaseState.PENDING:
            expected = market_errors.WrongPurchaseState
        elif who != listing.seller:
            expected = market_errors.NotSeller
        elif self._past(model.epoch):
            expected = market_errors.DeliveryWindowClosed
        key = listing.key if correct else AssetKey.generate()  # garbage: any other key
        delivery = deliver_key(
            key,
            model.one_time.public,
            purchase=purchase,
            chain_id=self.chain.deployment.chain_id,
            market=self.market,
        )
        self._expect(lambda: self.ledgers[who].deliver_key(purchase, delivery), expected)
        if expected is None:
            model.state, model.delivery, model.correct = PurchaseState.DELIVERED, delivery, correct
            model.epoch = self.epoch

    def _settle(self, purchase: PurchaseId, who: int) -> None:
        model = self.purchases[purchase]
        expected: Outcome = None
        if model.state != PurchaseState.DELIVERED:
            expected = market_errors.WrongPurchaseState
        elif not self._past(model.epoch):
            expected = market_errors.DisputeWindowOpen
        seller_share = self._expect(lambda: self.ledgers[who].settle(purchase), expected)
        if expected is None:
            listing = self.listings[model.listing]
            contributors = model.price * listing.bps // 10_000
            assert seller_share == model.price - contributors
            key = (listing.task, listing.round)
            self.sales.setdefault(key, SalesModel()).revenue += contributors
            self.owed[listing.seller] += seller_share
            model.state = PurchaseState.SETTLED

    def _refund(self, purchase: PurchaseId, who: int) -> None:
        model = self.purchases[purchase]
        expected: Outcome = None
        if model.state != PurchaseState.PENDING:
            expected = market_errors.WrongPurchaseState
        elif who != model.buyer:
            expected = market_errors.NotBuyer
        elif not self._past(model.epoch):
            expected = market_errors.DeliveryWindowOpen
        refunded = self._expect(lambda: self.ledgers[who].refund(purchase), expected)
        if expected is None:
            assert refunded == model.price
            model.state = PurchaseState.REFUNDED
            self.received[model.buyer] += model.price

    def _dispute(self, purchase: PurchaseId, who: int, true_secret: bool) -> None:
        model = self.purchases[purchase]
        secret = model.one_time if true_secret else OneTimeKey.generate()
        delivery = model.delivery or KeyDelivery(GENERATOR, bytes(32))
        expected: Outcome = None
        if model.state != PurchaseState.DELIVERED:
            expected = market_errors.WrongPurchaseState
        elif who != model.buyer:
            expected = market_errors.NotBuyer
        elif self._past(model.epoch):
            expected = market_errors.DisputeWindowClosed
        elif not true_secret:
            expected = market_errors.InvalidSecret
        elif model.correct:
            expected = market_errors.KeyMatchesCommitment  # a false dispute
        refunded = self._expect(
            lambda: self.ledgers[who].dispute(purchase, secret, delivery), expected
        )
        if expected is None:
            assert refunded == model.price
            model.state = PurchaseState.REFUNDED
            self.received[model.buyer] += model.price

    @staticmethod
    def _expect(action: Callable[[], Any], expected: Outcome) -> Any:
        """Run ``action``; assert it is refused with ``expected`` (by the contract, or by the
        ledger's own checks before sending), or goes through if ``expected`` is None."""
        try:
            result = action()
        except (ContractRejected, InvalidInput, TransactionFailed) as exc:
            assert type(exc) is expected, (exc, expected)  # noqa: PT017  (an oracle, not a test)
            return None
        assert expected is None, f"expected {expected.__name__}, but it went through"
        return result


def test_market_invariants_hold_under_random_honest_and_hostile_play(chain: Chain) -> None:
    MarketMachine.chain = chain
    run_state_machine_as_test(
        MarketMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
