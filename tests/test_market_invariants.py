"""Money invariants of the data market under random operation sequences, on a real anvil node.

A Hypothesis state machine drives honest and dishonest actors through create, commit, claim,
list, buy, deliver, refund, withdraw and close, keeps a plain-Python model of who should hold
what, and after every step checks the chain against it: supply conserved, the market holding
exactly what it owes, nobody paid more than committed or twice, escrow never short, sellers paid
only after delivery, refunds only to buyers after the deadline of undelivered purchases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from chain_helpers import EMPTY_CID, MODEL_CID, Chain, commit
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fedmarket.exceptions import ContractRejected, InvalidInput
from fedmarket.ledger import errors as market_errors
from fedmarket.market.rewards import RewardTree
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPONSOR, AGGREGATOR, BUYER, OUTSIDER = 0, 1, 8, 9
DEVICES = (2, 3, 4, 5)
PRICE = 40


@dataclass
class TaskModel:
    escrow: int
    committed: int = 0
    closed: bool = False
    last_round: int = 0
    cumulative: dict[str, int] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)
    tree: RewardTree | None = None


@dataclass
class PurchaseModel:
    listing: ListingId
    state: str = "pending"


class MarketMachine(RuleBasedStateMachine):
    chain: Chain  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = self.chain.snapshot()
        self.ledgers = {i: self.chain.ledger(i) for i in (SPONSOR, AGGREGATOR, BUYER, OUTSIDER)}
        self.ledgers.update({i: self.chain.ledger(i) for i in DEVICES})
        self.address = {i: ledger.address for i, ledger in self.ledgers.items()}
        self.tasks: dict[TaskId, TaskModel] = {}
        self.listings: dict[ListingId, TaskId] = {}
        self.purchases: dict[PurchaseId, PurchaseModel] = {}
        self.owed: dict[str, int] = {}
        self.paid_out: dict[str, int] = {}  # tokens the market sent to each account
        self.supply = self.ledgers[SPONSOR]._c.token.functions.totalSupply().call()

    def teardown(self) -> None:
        self.chain.revert(self.snapshot)

    @initialize()
    def fund_actors(self) -> None:
        for index in (BUYER, OUTSIDER):
            self.ledgers[SPONSOR].transfer(self.address[index], 10_000)
        self.start = {i: self.ledgers[i].balance(a) for i, a in self.address.items()}

    # -- rules ---------------------------------------------------------------------------------

    @rule(budget=st.integers(min_value=1, max_value=500))
    def create_task(self, budget: int) -> None:
        task = self.ledgers[SPONSOR].create_task(
            aggregator=self.address[AGGREGATOR],
            reward_per_update=1,
            budget=budget,
            spec_cid=EMPTY_CID,
        )
        self.tasks[task] = TaskModel(escrow=budget)

    @rule(data=st.data(), skip=st.integers(min_value=1, max_value=3))
    def commit(self, data: st.DataObject, skip: int) -> None:
        if not self.tasks:
            return
        task = data.draw(st.sampled_from(sorted(self.tasks)))
        model = self.tasks[task]
        rewards = data.draw(st.lists(st.integers(0, 60), min_size=len(DEVICES), max_size=4))
        cumulative = dict(model.cumulative)
        for index, reward in zip(DEVICES, rewards, strict=True):
            cumulative[self.address[index]] = cumulative.get(self.address[index], 0) + reward
        tree = RewardTree.build(cumulative)
        round_ = model.last_round + skip
        expected: type[ContractRejected] | None = None
        if model.closed:
            expected = market_errors.TaskIsClosed
        elif tree.total > model.escrow:
            expected = market_errors.ExceedsEscrow
        outcome = self._try(lambda: commit(self.ledgers[AGGREGATOR], task, round_, tree))
        assert outcome is expected, (outcome, expected)
        if expected is None:
            model.cumulative, model.tree, model.committed = cumulative, tree, tree.total
            model.last_round = round_

    @rule(data=st.data())
    def stale_or_foreign_commit(self, data: st.DataObject) -> None:
        if not self.tasks:
            return
        task = data.draw(st.sampled_from(sorted(self.tasks)))
        model = self.tasks[task]
        who = data.draw(st.sampled_from([AGGREGATOR, OUTSIDER, DEVICES[0]]))
        outcome = self._try(
            lambda: self.ledgers[who].commit_round(
                task,
                model.last_round if who == AGGREGATOR else model.last_round + 1,
                model_cid=EMPTY_CID,  # differs from any honest commit
                bundle_cid=EMPTY_CID,
                rewards_root=bytes(32),
                cumulative_total=model.committed,
            )
        )
        assert outcome is not None  # stale rounds, closed tasks and outsiders all fail

    @rule(data=st.data(), forged=st.booleans())
    def claim(self, data: st.DataObject, forged: bool) -> None:
        committed = [t for t, m in self.tasks.items() if m.tree is not None]
        if not committed:
            return
        task = data.draw(st.sampled_from(committed))
        model = self.tasks[task]
        assert model.tree is not None
        device = self.address[data.draw(st.sampled_from(DEVICES))]
        amount = model.cumulative[device] + (data.draw(st.integers(1, 100)) if forged else 0)
        already = model.claimed.get(device, 0)
        expected: type[ContractRejected] | None = None
        if forged:
            expected = market_errors.InvalidProof
        elif amount <= already:
            expected = market_errors.NothingToClaim
        outcome = self._try(
            lambda: self.ledgers[OUTSIDER].claim(task, device, amount, model.tree.proof(device))
        )
        assert outcome is expected, (outcome, expected)
        if expected is None:
            model.claimed[device] = amount
            self.paid_out[device] = self.paid_out.get(device, 0) + amount - already

    @rule(data=st.data(), by_sponsor=st.booleans())
    def close(self, data: st.DataObject, by_sponsor: bool) -> None:
        if not self.tasks:
            return
        task = data.draw(st.sampled_from(sorted(self.tasks)))
        model = self.tasks[task]
        who = SPONSOR if by_sponsor else OUTSIDER
        expected: type[ContractRejected] | None = None
        if model.closed:
            expected = market_errors.TaskIsClosed
        elif not by_sponsor:
            expected = market_errors.NotSponsor
        outcome = self._try(lambda: self.ledgers[who].close_task(task))
        assert outcome is expected, (outcome, expected)
        if expected is None:
            refund = model.escrow - model.committed
            self.paid_out[self.address[SPONSOR]] = (
                self.paid_out.get(self.address[SPONSOR], 0) + refund
            )
            model.escrow, model.closed = model.committed, True

    @rule(data=st.data())
    def list_model(self, data: st.DataObject) -> None:
        if not self.tasks:
            return
        task = data.draw(st.sampled_from(sorted(self.tasks)))
        listing = self.ledgers[AGGREGATOR].list_asset(
            task=task,
            asset_cid=MODEL_CID,
            price=PRICE,
            key_commitment=bytes(32),
            metadata_cid=EMPTY_CID,
            contributors_bps=2500,
        )
        self.listings[listing] = task

    @rule(data=st.data())
    def buy(self, data: st.DataObject) -> None:
        if not self.listings:
            return
        listing = data.draw(st.sampled_from(sorted(self.listings)))
        purchase = self.ledgers[BUYER].buy(listing, buyer_key=bytes(32), max_price=PRICE)
        self.purchases[purchase] = PurchaseModel(listing)

    @rule(data=st.data(), honest=st.booleans())
    def deliver(self, data: st.DataObject, honest: bool) -> None:
        if not self.purchases:
            return
        purchase = data.draw(st.sampled_from(sorted(self.purchases)))
        model = self.purchases[purchase]
        record = self.ledgers[BUYER].purchase(purchase)
        late = self._now() > record.deadline
        expected: type[ContractRejected] | None = None
        if model.state != "pending":
            expected = market_errors.NotPending
        elif not honest:
            expected = market_errors.NotSeller
        elif late:
            expected = market_errors.DeliveryWindowClosed
        who = AGGREGATOR if honest else OUTSIDER
        outcome = self._try(lambda: self.ledgers[who].deliver_key(purchase, b"sealed"))
        assert outcome is expected, (outcome, expected)
        if expected is None:
            model.state = "delivered"
            share = PRICE * 2500 // 10_000
            task = self.tasks[self.listings[model.listing]]
            seller = self.address[AGGREGATOR]
            self.owed[seller] = self.owed.get(seller, 0) + PRICE - share
            if task.closed:
                sponsor = self.address[SPONSOR]
                self.owed[sponsor] = self.owed.get(sponsor, 0) + share
            else:
                task.escrow += share

    @rule(data=st.data(), by_buyer=st.booleans())
    def refund(self, data: st.DataObject, by_buyer: bool) -> None:
        if not self.purchases:
            return
        purchase = data.draw(st.sampled_from(sorted(self.purchases)))
        model = self.purchases[purchase]
        record = self.ledgers[BUYER].purchase(purchase)
        expected: type[ContractRejected] | None = None
        if model.state != "pending":
            expected = market_errors.NotPending
        elif not by_buyer:
            expected = market_errors.NotBuyer
        elif self._now() <= record.deadline:
            expected = market_errors.DeliveryWindowOpen
        who = BUYER if by_buyer else OUTSIDER
        outcome = self._try(lambda: self.ledgers[who].refund(purchase))
        assert outcome is expected, (outcome, expected)
        if expected is None:
            model.state = "refunded"
            buyer = self.address[BUYER]
            self.paid_out[buyer] = self.paid_out.get(buyer, 0) + PRICE

    @rule()
    def wait_past_deadlines(self) -> None:
        self.chain.advance(3601)

    @rule(who=st.sampled_from([AGGREGATOR, SPONSOR, OUTSIDER]))
    def withdraw(self, who: int) -> None:
        address = self.address[who]
        due = self.owed.get(address, 0)
        outcome = self._try(lambda: self.ledgers[who].withdraw())
        assert outcome is (None if due else market_errors.ZeroAmount)
        if due:
            self.owed[address] = 0
            self.paid_out[address] = self.paid_out.get(address, 0) + due

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def market_holds_exactly_what_it_owes(self) -> None:
        ledger = self.ledgers[SPONSOR]
        owed_to_contributors = sum(m.escrow - sum(m.claimed.values()) for m in self.tasks.values())
        pending = sum(PRICE for p in self.purchases.values() if p.state == "pending")
        owed = sum(self.owed.values())
        market = ledger.balance(ledger.deployment.market)
        assert market == owed_to_contributors + pending + owed

    @invariant()
    def supply_is_conserved(self) -> None:
        ledger = self.ledgers[SPONSOR]
        holders = [*self.address.values(), ledger.deployment.market]
        assert sum(ledger.balance(a) for a in set(holders)) == self.supply

    @invariant()
    def chain_agrees_with_the_model(self) -> None:
        ledger = self.ledgers[SPONSOR]
        for task, model in self.tasks.items():
            state = ledger.task(task)
            assert (state.escrow, state.committed, state.closed) == (
                model.escrow,
                model.committed,
                model.closed,
            )
            assert state.committed <= state.escrow
            for device, claimed in model.claimed.items():
                assert ledger.claimed(task, device) == claimed <= model.cumulative[device]
        for address, due in self.owed.items():
            assert ledger.owed(address) == due

    @invariant()
    def nobody_received_more_than_earned(self) -> None:
        # Devices only ever receive claims: exactly their claimed totals, never more.
        for index in DEVICES:
            address = self.address[index]
            received = self.ledgers[SPONSOR].balance(address) - self.start[index]
            assert received == self.paid_out.get(address, 0)
            earned = sum(m.cumulative.get(address, 0) for m in self.tasks.values())
            assert received <= earned

    # -- helpers -------------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.chain.w3.eth.get_block("latest")["timestamp"])

    @staticmethod
    def _try(action: object) -> type[ContractRejected | InvalidInput] | None:
        """Run ``action``; return the type of the refusal (by the contract or by the ledger's
        own checks before sending), or None if it went through."""
        try:
            action()  # type: ignore[operator]
        except (ContractRejected, InvalidInput) as exc:
            return type(exc)
        return None


def test_market_invariants_hold_under_random_operations(chain: Chain) -> None:
    MarketMachine.chain = chain
    run_state_machine_as_test(
        MarketMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=18,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
