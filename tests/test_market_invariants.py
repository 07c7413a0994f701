"""Money invariants of the data market (v2) under random honest and hostile play, on anvil.

A Hypothesis state machine interleaves honest tasks (an honest sponsor, an aggregator that acks
uploads, commits true cumulative trees and answers every challenge, honest devices, an honest
buyer) with hostile actors who open their own tasks, commit arbitrary roots (leaves for anyone,
huge amounts, totals the leaves do not add up to), sign acks, forge acks, challenge any root
(with their own earlier leaves or acks, someone else's, forged ones), answer challenges (rightly
or not), void roots, list, buy, deliver garbage keys, dispute truly and falsely, settle, refund,
close, refund the unspent escrow and claim by tree, ack or sale share, at any time. A
plain-Python model predicts every outcome (which call succeeds, which custom error refuses it,
how much moves), and after every step the chain is checked against it:

- token supply is conserved, and every account holds exactly what the model says;
- the market holds exactly what it owes: Σ tasks (escrow - paid) + Σ rounds (sales revenue -
  sale shares paid) + prices of pending and delivered purchases + seller proceeds owed; and
  every root's open challenges and voided flag, every challenge, every task's frozen flag and
  what it paid on acks are as modelled;
- nobody was paid more than a final root or a payable ack promised it, or anything twice;
- no honest entitlement falls. The honest devices watch every task, as ``fedmarket device
  watch`` does: they challenge any root in its window that pays any account less than its
  leaf in an earlier root (anyone may challenge for anyone, so silent Sybils cannot hide a
  decrease), or pays the device less than an ack it holds; they answer baseless challenges
  and void roots whose challenge went unanswered. So no final root pays any account less than
  an earlier final root, nor a device less than an ack it held while the root was
  challengeable, and every account's best final leaf stays payable from its task, in hostile
  tasks too; the honest aggregator can answer every challenge of its roots; an ack is paid
  once its task is closing or frozen whenever the escrow no root reserves covers it; honest
  buyers get wrong keys refunded, honest sellers are never refunded away.

Hostile parties also press at every turn: a hostile aggregator answers every challenge with
whatever leaf it has and commits once more in its close grace, counting on the whole escrow;
challengers ask again once answered; whoever holds a leaf of a root under challenge claims from
it; a stranger voids every challenged root, too early and as soon as it may; every genuine ack
of a closing or frozen task is claimed outright, first come first served; sponsors take back
what they can as soon as they can.

Time moves only in ``wait``, by a tick of TICK seconds of chain time, after the online honest
parties acted (the devices watch, the aggregator answers challenges and commits within a close
grace, the buyer disputes wrong keys, sellers deliver). The market under test is deployed with
windows away from multiples of a tick: a deadline of WINDOW (delivery, dispute, challenge) set
in one tick has passed exactly when the tick moved on, one of RESPONSE_WINDOW (an answer)
exactly when it moved on twice, and a CLOSE_GRACE three times, whatever the wall clock adds.
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
from fedmarket.contracts import load_artifact
from fedmarket.crypto import AssetKey, KeyDelivery, OneTimeKey, deliver_key
from fedmarket.crypto.key_delivery import GENERATOR
from fedmarket.exceptions import ContractRejected, InvalidInput, TransactionFailed
from fedmarket.ledger import PurchaseState, deploy
from fedmarket.ledger import errors as market_errors
from fedmarket.market.rewards import Proof, RewardTree
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPONSOR, AGGREGATOR = 0, 1  # honest
DEVICES = (2, 3, 4)  # honest; they watch every task
HOSTILE, SYBIL = 5, 6  # a hostile sponsor / aggregator / seller and its Sybil
BUYER, HOSTILE_BUYER, ANYONE = 7, 8, 9  # an honest buyer, a hostile one, a stranger
EVERYONE = tuple(range(10))
HONEST_SELLERS = (SPONSOR, AGGREGATOR)
SELLERS = (SPONSOR, AGGREGATOR, HOSTILE, SYBIL)  # everyone who may list: the tasks' owners
START_FUNDS = 10_000
UPLOAD = hashlib.sha256(b"masked upload").digest()
TICK = 20_000  # chain seconds per `wait`
WINDOW = 10_000  # delivery, dispute and challenge windows: over after one tick
RESPONSE_WINDOW = 30_000  # over after two ticks: a challenge outlives its root's window
# At least challenge + response (the market refuses less): a close grace set in one tick is
# over three ticks later, and the refund, a second grace after it, five ticks after the close.
CLOSE_GRACE = 50_000
GRACE_TICKS, REFUND_TICKS = 3, 5
# Commits may end with time passing too: Hypothesis disables a random subset of rules in each
# example, and time must pass in most examples for roots to become final or be voided.
TICKS = st.sampled_from([0, 0, 0, 1, 2])
UINT128 = 2**128  # challenges name amounts as uint128: larger acks cannot be challenged with
Outcome = type[Exception] | None


def _getter(name: str) -> tuple[list[str], list[str]]:
    """The output types and names of one of DataMarket's public getters, from its ABI: the
    machine reads struct fields by name, whatever their order and packing."""
    (item,) = [x for x in load_artifact("DataMarket").abi if x.get("name") == name]
    return [o["type"] for o in item["outputs"]], [o["name"] for o in item["outputs"]]


TASK_FIELDS, TASK_NAMES = _getter("tasks")
ROUND_FIELDS, ROUND_NAMES = _getter("rounds")
CHALLENGE_FIELDS, CHALLENGE_NAMES = _getter("challenges")


# An eth_call: (to, function, argument types, arguments, (output types, output names))
_Call = tuple[str, str, list[str], list[object], tuple[list[str], list[str]]]


def _calldata(name: str, types: list[str], args: list[object]) -> bytes:
    return keccak(text=f"{name}({','.join(types)})")[:4] + encode(types, args)


def _amount(evidence: LeafEvidence | AckModel | None) -> int:
    """What a challenge's evidence says its account is owed (0: no evidence)."""
    if evidence is None:
        return 0
    return evidence.ack.cumulative_amount if isinstance(evidence, AckModel) else evidence.amount


def _fit(amounts: dict[str, int], low: int, high: int) -> dict[str, int]:
    """``amounts`` scaled down to add up to at most ``high``, the first topped up to reach
    ``low`` (when low <= high): a root a hostile aggregator can commit and prove."""
    total = sum(amounts.values())
    if total > high:
        amounts = {a: v * high // total for a, v in amounts.items()}
    first = next(iter(amounts))
    amounts[first] += max(0, low - sum(amounts.values()))
    return amounts


@dataclass
class RoundModel:
    tree: RewardTree
    total: int
    commitment: bytes
    tick: int  # committed in this tick: challengeable until the tick moves on
    prior_round: int  # the task's round committed before it (0: none)
    voided: bool = False
    open_challenges: int = 0

    @property
    def provable(self) -> bool:
        """Whether its leaves' proofs reach it: a Merkle-sum root proves only its own total."""
        return self.tree.total == self.total

    def leaf(self, account: str) -> int | None:
        return self.tree.amounts.get(account) if self.provable else None


@dataclass
class ChallengeModel:
    amount: int  # what the challenger says it is owed; once answered, what the answer showed
    tick: int  # when it was (re)opened: its answer is due before two more ticks
    evidence: LeafEvidence | AckModel  # what it was (last) opened or raised with
    open: bool = True
    pressed: bool = False  # the hostile press already tried it in this state
    rushed: bool = False  # its root was already claimed from and voided too early


@dataclass
class AckModel:
    ack: Ack
    signature: bytes
    genuine: bool  # signed by the task's aggregator
    tick: int  # when the device got it
    pressed: bool = False  # the hostile press already claimed it in vain


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
    closes_tick: int | None = None  # the tick of the close: closed GRACE_TICKS later
    frozen_tick: int | None = None  # the tick of the latest void: no more commits
    rounds: dict[int, RoundModel] = field(default_factory=dict)
    challenges: dict[tuple[int, str], ChallengeModel] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)
    acks: list[AckModel] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # honest: acked, not yet committed
    ack_counted: dict[str, int] = field(default_factory=dict)  # each account's paid_on_acks

    @property
    def committed_round(self) -> int:
        """The round whose total counts as committed: the latest not voided (0: none)."""
        return max((r for r, root in self.rounds.items() if not root.voided), default=0)

    @property
    def reserved(self) -> int:
        return max(self.committed + self.paid_on_acks, self.paid)

    @property
    def frozen(self) -> bool:
        return self.frozen_tick is not None

    @property
    def available(self) -> int:
        """What a root may promise: the escrow, less what acks took."""
        return self.escrow - self.paid_on_acks

    def acks_payable(self, tick: int) -> bool:
        """Whether acks pay directly: the task commits no more (closed, or a root voided)."""
        return self.frozen or (
            self.closes_tick is not None and tick >= self.closes_tick + GRACE_TICKS
        )

    def final(self, round_: int, tick: int) -> bool:
        root = self.rounds[round_]
        return not root.voided and tick > root.tick and root.open_challenges == 0

    def final_leaf(self, account: str, tick: int) -> tuple[int, int]:
        """(amount, round) of ``account``'s largest leaf in a final root; (0, 0) if none."""
        return max(
            (
                (root.leaf(account) or 0, round_)
                for round_, root in self.rounds.items()
                if self.final(round_, tick)
            ),
            default=(0, 0),
        )

    def genuine_acks(self, account: str) -> list[AckModel]:
        return [a for a in self.acks if a.genuine and a.ack.device == account]

    def entitlement(self, account: str, tick: int) -> int:
        """The most a final root or a payable genuine ack promises ``account``."""
        acks = [a.ack.cumulative_amount for a in self.genuine_acks(account)]
        payable = self.acks_payable(tick)
        return max([self.final_leaf(account, tick)[0], *(acks if payable else [])])


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
    tick: int  # when its current deadline was set (bought, or delivered)
    state: PurchaseState = PurchaseState.PENDING
    delivery: KeyDelivery | None = None
    correct: bool | None = None  # whether the delivered key opens the listing's commitment


@dataclass(frozen=True)
class LeafEvidence:
    """A challenge's evidence: ``account``'s leaf in an earlier root, and whether the
    contract takes it (that root's leaf of that account, as proven)."""

    round: int
    account: str
    amount: int
    proof: Proof
    valid: bool


class MarketMachine(RuleBasedStateMachine):
    chain: Chain  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.snapshot = self.chain.snapshot()
        self.ledgers = {i: self.chain.ledger(i) for i in EVERYONE}
        self.address = {i: ledger.address for i, ledger in self.ledgers.items()}
        self.index = {address: i for i, address in self.address.items()}
        self.market = self.chain.deployment.market
        self.tick = 0
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
        slack=st.integers(-10, 30),
        hostile_aggregator=st.sampled_from([HOSTILE, SYBIL]),
        hostile_leaves=st.lists(st.integers(1, 20), min_size=3, max_size=3),
        dropping=st.booleans(),
        bonus=st.integers(0, 10),
        kept=st.integers(-1, 3),
        promised=st.integers(0, 40),
    )
    def open_markets(
        self,
        honest_budget: int,
        rewards: list[int],
        slack: int,
        hostile_aggregator: int,
        hostile_leaves: list[int],
        dropping: bool,
        bonus: int,
        kept: int,
        promised: int,
    ) -> None:
        """Fund the actors; an honest task with round 1 committed, and a hostile task (its
        escrow ``slack`` above its leaves) whose round 1 pays itself, its Sybil and an honest
        device (the leaves may pass the escrow); once both are final, each is listed. Then,
        ``dropping``, the hostile aggregator acks ``promised`` more to the device for round 2
        (if any) and commits a round 2 that moves all of the device's amount but ``kept`` (and
        ``bonus`` more) to the Sybil."""
        for index in (HOSTILE, BUYER, HOSTILE_BUYER):
            self.ledgers[SPONSOR].transfer(self.address[index], START_FUNDS)
        self.start = {i: self.ledgers[i].balance(a) for i, a in self.address.items()}
        self.market_start = self.ledgers[SPONSOR].balance(self.market)
        honest = self._create(SPONSOR, AGGREGATOR, honest_budget)
        self.honest_round(honest, rewards, commit=True)
        budget = max(1, sum(hostile_leaves) + slack)
        hostile = self._create(HOSTILE, hostile_aggregator, budget)
        leaves = zip((HOSTILE, SYBIL, DEVICES[0]), hostile_leaves, strict=True)
        tree = RewardTree.build({self.address[i]: v for i, v in leaves})
        self._commit(hostile, hostile_aggregator, 1, tree, min(tree.total, budget))
        self.wait()
        # each round for sale: the honest one by its aggregator, the hostile one by its owner
        self._list(honest, 1, AGGREGATOR, price=30, bps=2500)
        self._list(hostile, 1, hostile_aggregator, price=20, bps=10_000)
        device = self.address[DEVICES[0]]
        if dropping and self.tasks[hostile].rounds[1].provable:
            if promised:
                amount = tree.amounts[device] + promised
                ack = Ack(hostile, 2, device, UPLOAD, amount)
                signature = self._sign(ack, hostile_aggregator)
                self.tasks[hostile].acks.append(AckModel(ack, signature, True, self.tick))
            tree = RewardTree.build(self._dropping(hostile, device, bonus, kept))
            self._commit(hostile, hostile_aggregator, 2, tree, tree.total)
            self._seen(hostile)

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
        ticks=TICKS,
    )
    def honest_round_rule(
        self, data: st.DataObject, rewards: list[int], commit: bool, ticks: int
    ) -> None:
        open_honest = [t for t, m in self.tasks.items() if m.honest and not self._closed(m)]
        self.honest_round(data.draw(st.sampled_from(open_honest)), rewards, commit=commit)
        self.wait(ticks)

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
            model.acks.append(AckModel(ack, self._sign(ack, AGGREGATOR), True, self.tick))
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
        by_aggregator=st.sampled_from([True, True, True, True, False]),
        skip=st.sampled_from([1, 1, 1, 2, 0]),
        leaves=st.lists(
            st.tuples(
                st.sampled_from(EVERYONE),
                # 2**125: past any escrow, yet four of them still make a tree (sums < 2**128)
                st.one_of(st.integers(0, 100), st.sampled_from(["market", 2**125])),
            ),
            min_size=1,
            max_size=4,
        ),
        total=st.sampled_from(
            ["drop", "drop", "fit", "fit", "committed", "escrow", "leaves", "below", "above"]
        ),
        zero_commitment=st.sampled_from([False, False, False, False, True]),
        ticks=TICKS,
    )
    def hostile_commit(
        self,
        data: st.DataObject,
        by_aggregator: bool,
        skip: int,
        leaves: list[tuple[int, int | str]],
        total: str,
        zero_commitment: bool,
        ticks: int,
    ) -> None:
        """Commit any root: into a hostile task by its aggregator, or into any task by a
        stranger; leaves for anyone (honest devices too), up to the market's whole balance,
        under the leaves' own total or another one (then no proof reaches it), or leaves cut
        down to fit between the committed total and the escrow; or the latest root again with
        one account's amount moved to the Sybil (the attack a watching device must catch)."""
        task, model = self._task(data, hostile_first=True)
        who = model.aggregator if by_aggregator and not model.honest else HOSTILE
        market = self.ledgers[SPONSOR].balance(self.market)
        amounts = {
            self.address[i]: market if v == "market" else int(v) for i, v in dict(leaves).items()
        }
        latest = [r for r in model.rounds.values() if r.provable and not r.voided]
        if total == "drop" and latest:
            accounts = sorted(latest[-1].tree.amounts)
            devices = [a for a in accounts if self.index[a] in DEVICES]
            victim = data.draw(st.sampled_from(devices or accounts))
            bonus, kept = data.draw(st.integers(0, 10)), data.draw(st.integers(-1, 3))
            amounts = self._dropping(task, victim, bonus, kept)
        elif total in ("drop", "fit"):
            amounts = _fit(amounts, model.committed, model.available)
        total = "leaves" if total in ("drop", "fit") else total
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
        self._hostile_commit(who, task, round_, tree, cumulative, commitment)
        self.wait(ticks)

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
        model.acks.append(AckModel(ack, self._sign(ack, signer), genuine, self.tick))

    # -- challenges ----------------------------------------------------------------------------

    @precondition(lambda self: any(m.rounds for m in self.tasks.values()))
    @rule(
        data=st.data(),
        at=st.sampled_from(["open", "open", "open", "committed", "next"]),
        valid=st.sampled_from([True, True, True, False]),
        with_ack=st.booleans(),
        forged=st.sampled_from([False, False, False, True]),
    )
    def challenge(
        self, data: st.DataObject, at: str, valid: bool, with_ack: bool, forged: bool
    ) -> None:
        """Anyone challenges a root (or a round not committed), mostly one in its window: with
        a leaf of an earlier root (its own, someone else's, or inflated), or with an ack (its
        own or someone else's, genuine or forged); mostly with evidence the contract takes.
        Anyone may challenge for any account."""
        tasks = sorted(t for t, m in self.tasks.items() if m.rounds)
        in_window = [t for t in tasks if self._challengeable(self.tasks[t])]
        task = data.draw(st.sampled_from(in_window if at == "open" and in_window else tasks))
        model = self.tasks[task]
        committed = sorted(model.rounds)
        round_ = model.last_round + 1
        if at != "next":
            open_ = self._challengeable(model) if at == "open" else []
            round_ = data.draw(st.sampled_from(open_ or committed))
        if with_ack and model.acks:
            usable = [a for a in model.acks if a.genuine and a.ack.round <= round_]
            item = data.draw(st.sampled_from(usable if valid and usable else model.acks))
            self._challenge_with_ack(data.draw(st.sampled_from(EVERYONE)), task, round_, item)
            return
        leaves = [
            (r, account)
            for r in committed
            if r < round_ and model.rounds[r].provable
            for account in sorted(model.rounds[r].tree.amounts)
        ]
        if valid and leaves:
            evidence_round, account = data.draw(st.sampled_from(leaves))
            named = account
        else:  # maybe the proof of one account's leaf for another
            evidence_round = data.draw(st.sampled_from(committed))
            account = data.draw(st.sampled_from(sorted(model.rounds[evidence_round].tree.amounts)))
            named = data.draw(st.sampled_from([account, self.address[ANYONE]]))
        root = model.rounds[evidence_round]
        amount = root.tree.amounts[account] + (data.draw(st.integers(1, 50)) if forged else 0)
        valid = root.provable and not forged and named == account
        evidence = LeafEvidence(evidence_round, named, amount, root.tree.proof(account), valid)
        self._challenge_with_leaf(data.draw(st.sampled_from(EVERYONE)), task, round_, evidence)

    @precondition(lambda self: any(m.challenges for m in self.tasks.values()))
    @rule(data=st.data(), who=st.sampled_from(EVERYONE), forged=st.booleans())
    def answer(self, data: st.DataObject, who: int, forged: bool) -> None:
        """Anyone answers a challenge: with the challenger's leaf in the root (maybe inflated)
        or, when it has none, with someone else's."""
        task = data.draw(st.sampled_from(sorted(t for t, m in self.tasks.items() if m.challenges)))
        model = self.tasks[task]
        round_, account = data.draw(st.sampled_from(sorted(model.challenges)))
        root = model.rounds[round_]
        shown = account if account in root.tree.amounts else None
        shown = shown or data.draw(st.sampled_from(sorted(root.tree.amounts)))
        amount = root.tree.amounts[shown] + (data.draw(st.integers(1, 50)) if forged else 0)
        valid = root.provable and not forged and shown == account
        self._answer(who, task, round_, account, amount, root.tree.proof(shown), valid)

    @precondition(lambda self: any(m.challenges for m in self.tasks.values()))
    @rule(data=st.data(), who=st.sampled_from(EVERYONE))
    def void(self, data: st.DataObject, who: int) -> None:
        task = data.draw(st.sampled_from(sorted(t for t, m in self.tasks.items() if m.challenges)))
        round_, account = data.draw(st.sampled_from(sorted(self.tasks[task].challenges)))
        self._void(who, task, round_, account)

    # -- claims --------------------------------------------------------------------------------

    @precondition(lambda self: any(m.rounds for m in self.tasks.values()))
    @rule(data=st.data(), submitter=st.sampled_from(EVERYONE), forged=st.booleans())
    def claim(self, data: st.DataObject, submitter: int, forged: bool) -> None:
        task, _, round_, account, amount, proof, valid = self._leaf_claim(data, forged)
        self._claim_leaf(submitter, task, round_, account, amount, proof, valid)

    @precondition(lambda self: any(m.acks for m in self.tasks.values()))
    @rule(data=st.data(), submitter=st.sampled_from(EVERYONE))
    def claim_acknowledged(self, data: st.DataObject, submitter: int) -> None:
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.acks]))
        self._claim_ack(
            submitter, self.tasks[task], data.draw(st.sampled_from(self.tasks[task].acks))
        )

    @precondition(lambda self: any(m.ack_counted for m in self.tasks.values()))
    @rule(data=st.data(), who=st.sampled_from(EVERYONE), forged=st.booleans())
    def credit_ack(self, data: st.DataObject, who: int, forged: bool) -> None:
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.ack_counted]))
        model = self.tasks[task]
        account = data.draw(st.sampled_from(sorted(model.ack_counted)))
        root = model.rounds.get(model.committed_round)
        if root is None or account not in root.tree.amounts:  # no leaf to show: any other
            round_ = data.draw(st.sampled_from(sorted(model.rounds))) if model.rounds else 0
            tree = model.rounds[round_].tree if round_ else RewardTree.build({account: 1})
            other = next(iter(tree.amounts))
            leaf, proof, valid = tree.amounts[other], tree.proof(other), False
        else:
            leaf, proof = root.tree.amounts[account], root.tree.proof(account)
            valid = root.provable and not forged
            if forged:
                leaf += data.draw(st.integers(1, 100))
        self._credit_ack(who, task, account, leaf, proof, valid)

    @precondition(lambda self: any(m.rounds for m in self.tasks.values()))
    @rule(data=st.data(), submitter=st.sampled_from(EVERYONE), forged=st.booleans())
    def claim_sale_share(self, data: st.DataObject, submitter: int, forged: bool) -> None:
        task, model, round_, account, amount, proof, valid = self._leaf_claim(data, forged)
        sales = self.sales.setdefault((task, round_), SalesModel())
        already = sales.claimed.get(account, 0)
        expected = self._leaf_outcome(model, round_, valid)
        due = 0
        if expected is not None:
            pass
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
            self.received[self.index[account]] += paid

    @precondition(lambda self: any(m.rounds or m.acks for m in self.tasks.values()))
    @rule(data=st.data())
    def honest_devices_collect(self, data: st.DataObject) -> None:
        """Every honest device takes all it is owed in a task: its best final leaf, then its
        best ack once acks are payable, then its sale shares. Whatever the hostile actors did
        before, in any task, each leaf and sale-share claim must go through; an ack does
        whenever the escrow no root reserves covers it."""
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.rounds or m.acks]))
        model = self.tasks[task]
        for index in DEVICES:
            device = self.address[index]
            amount, best = model.final_leaf(device, self.tick)
            if amount > model.claimed.get(device, 0):
                proof = model.rounds[best].tree.proof(device)
                outcome = self._claim_leaf(index, task, best, device, amount, proof, True)
                assert outcome is None, "a watching device went unpaid its best final leaf"
            acks = model.genuine_acks(device) if model.acks_payable(self.tick) else []
            item = max(acks, key=lambda a: a.ack.cumulative_amount, default=None)
            if item is not None and item.ack.cumulative_amount > model.claimed.get(device, 0):
                self._claim_ack(index, model, item)
            for round_, root in model.rounds.items():
                sales = self.sales.get((task, round_))
                leaf = root.leaf(device)
                if sales is None or not leaf or not sales.revenue:
                    continue
                if not model.final(round_, self.tick):
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
        elif model.closes_tick is not None:
            expected = market_errors.TaskIsClosed
        self._expect(lambda: self.ledgers[who].close_task(task), expected)
        if expected is None:
            model.closes_tick = self.tick

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), who=st.sampled_from(EVERYONE))
    def refund_unspent(self, data: st.DataObject, who: int) -> None:
        task, _ = self._task(data)
        self._refund_unspent(who, task)

    # -- sales ---------------------------------------------------------------------------------

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        seller=st.sampled_from(["sponsor", "aggregator", "aggregator", "stranger"]),
        which=st.sampled_from(["latest", "latest", "any", "next"]),
        price=st.integers(1, 50),
        bps=st.sampled_from([0, 2500, 10_000]),
    )
    def list_round(
        self, data: st.DataObject, seller: str, which: str, price: int, bps: int
    ) -> None:
        task, model = self._task(data)
        who = {"sponsor": model.sponsor, "aggregator": model.aggregator, "stranger": ANYONE}[seller]
        round_ = model.last_round + (which == "next")
        if which == "any" and model.rounds:
            round_ = data.draw(st.sampled_from(sorted(model.rounds)))
        expected: Outcome = None
        if round_ == 0:
            expected = InvalidInput
        elif who not in (model.sponsor, model.aggregator):
            expected = market_errors.NotTaskOwner
        elif round_ not in model.rounds:
            expected = market_errors.UnknownRound
        elif model.rounds[round_].voided:
            expected = market_errors.RoundIsVoided
        elif not model.final(round_, self.tick):
            expected = market_errors.RoundNotFinal
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
        self.purchases[purchase] = PurchaseModel(listing, buyer, model.price, one_time, self.tick)
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

    @rule(ticks=st.sampled_from([1, 1, 2]))
    def wait_rule(self, ticks: int) -> None:
        self.wait(ticks)

    def wait(self, ticks: int = 1) -> None:
        """``ticks`` times: the online honest parties act, then a tick of chain time passes."""
        for _ in range(ticks):
            self._tick()

    def _tick(self) -> None:
        self._claim_acks_outright()  # as soon as acks pay, before their devices' leaves
        for task, model in list(self.tasks.items()):
            if model.closes_tick == self.tick and model.honest:
                self._honest_commit(task)  # within the close grace
            elif model.closes_tick == self.tick and not model.frozen:
                self._last_minute_commit(task)
        for index in DEVICES:
            for task in sorted(self.tasks):
                self._watch(index, task)
        for task, model in self.tasks.items():
            if model.honest:
                self._answer_challenges(task)
        for purchase, model in self.purchases.items():
            if self._past(model.tick):
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
        for task in sorted(self.tasks):
            self._press(task)
        self.chain.advance(TICK)
        self.tick += 1
        self._press_after_the_tick()
        for purchase, model in self.purchases.items():
            if not self._past(model.tick):
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
            on_chain = view["tasks"][task]
            last_round, escrow, paid, committed = (
                on_chain[k] for k in ("lastRound", "escrow", "paid", "committed")
            )
            assert (escrow, paid, committed, last_round) == (
                model.escrow,
                model.paid,
                model.committed,
                model.last_round,
            )
            assert paid <= escrow
            frozen_at, paid_on_acks = view["acks"][task]
            assert (frozen_at != 0, paid_on_acks) == (model.frozen, model.paid_on_acks)
            # paid_on_acks is each account's ack payments beyond its committed leaf, summed
            assert paid_on_acks == sum(model.ack_counted.values())
            for account, counted in model.ack_counted.items():
                assert view["ack_counted"][task, account] == counted, (task, account)
            for round_, root in model.rounds.items():
                on_chain = view["rounds"][task, round_]
                total, open_challenges, voided, prior = (
                    on_chain[k]
                    for k in ("cumulativeTotal", "openChallenges", "voided", "priorRound")
                )
                modelled = (root.total, root.open_challenges, root.voided, root.prior_round)
                assert (total, open_challenges, voided, prior) == modelled, (task, round_)
            for (round_, account), challenge in model.challenges.items():
                amount, is_open = (
                    view["challenges"][task, round_, account][k] for k in ("amount", "open")
                )
                assert (amount, is_open) == (challenge.amount, challenge.open)
        for key, sales in self.sales.items():
            if sales.revenue:
                assert view["sales"][key] == (sales.revenue, sales.paid)
                assert sales.paid <= sales.revenue
        assert view["owed"] == {i: self.owed[i] for i in SELLERS}

    @invariant()
    def nobody_was_paid_more_than_promised(self) -> None:
        for model in self.tasks.values():
            for account, claimed in model.claimed.items():
                assert claimed <= model.entitlement(account, self.tick)
            assert model.paid == sum(model.claimed.values())  # each unit paid once
        for (task, round_), sales in self.sales.items():
            model = self.tasks[task]
            for account, claimed in sales.claimed.items():
                assert claimed == 0 or model.final(round_, self.tick)
                leaf = model.rounds[round_].leaf(account) or 0
                assert claimed <= sales.revenue * leaf // model.rounds[round_].total

    @invariant()
    def final_roots_never_take_an_amount_back(self) -> None:
        """With the devices watching, no final root pays any account less than an earlier
        final root, nor an honest device less than an ack of that round or before that it held
        while the root was challengeable; so every account's best final leaf stays payable:
        together they are the latest final root's total, which the escrow keeps beside what
        acks took (in every task, hostile ones too)."""
        for model in self.tasks.values():
            final = [model.rounds[r] for r in sorted(model.rounds) if model.final(r, self.tick)]
            best: dict[str, int] = {}
            for root in final:
                for account in best.keys() | root.tree.amounts.keys():
                    pays = root.leaf(account) or 0
                    assert pays >= best.get(account, 0), account
                    best[account] = pays
            for index in DEVICES:
                device = self.address[index]
                for item in model.genuine_acks(device):
                    owed = item.ack.cumulative_amount
                    for round_, root in model.rounds.items():
                        held = item.ack.round <= round_ and item.tick <= root.tick
                        if held and owed < UINT128 and model.final(round_, self.tick):
                            assert (root.leaf(device) or 0) >= owed, (round_, device)
            unpaid = sum(max(0, v - model.claimed.get(a, 0)) for a, v in best.items())
            assert model.escrow - model.paid >= unpaid

    @invariant()
    def honest_entitlements_never_fall(self) -> None:
        for task, model in self.tasks.items():
            for index in DEVICES:
                device = self.address[index]
                entitled = model.entitlement(device, self.tick)
                assert entitled >= self.seen_entitlement.get((task, device), 0)
                self.seen_entitlement[task, device] = entitled
            if not model.honest:
                continue
            assert not model.frozen  # the honest aggregator answered every challenge
            outstanding = sum(
                model.entitlement(self.address[i], self.tick)
                - model.claimed.get(self.address[i], 0)
                for i in DEVICES
            )
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
                assert model.state == PurchaseState.REFUNDED or not self._past(model.tick)
            if seller in HONEST_SELLERS:  # an honest seller delivers in time, and is paid
                assert model.state != PurchaseState.REFUNDED
                assert model.correct is not False

    # -- helpers -------------------------------------------------------------------------------

    def _read_chain(self) -> dict[str, Any]:
        """Everything the invariants compare, as one JSON-RPC batch of raw ``eth_call``s
        (web3's per-call ABI handling would cost more than the calls themselves). A struct
        getter's answer comes back as a dict by field name, any other as its one value."""
        token, market = self.chain.deployment.token, self.market
        tasks = sorted(self.tasks)
        rounds = sorted((t, r) for t in tasks for r in self.tasks[t].rounds)
        challenges = sorted((t, r, a) for t in tasks for r, a in self.tasks[t].challenges)
        sold = sorted(key for key, sales in self.sales.items() if sales.revenue)
        counted = sorted((t, a) for t in tasks for a in self.tasks[t].ack_counted)
        uint, one = ["uint256"], (["uint256"], [])
        at = ["uint256", "uint256"]
        calls: list[_Call] = [
            (token, "totalSupply", [], [], one),
            (token, "balanceOf", ["address"], [market], one),
            *[(token, "balanceOf", ["address"], [self.address[i]], one) for i in EVERYONE],
            *[(market, "tasks", uint, [task], (TASK_FIELDS, TASK_NAMES)) for task in tasks],
            *[
                (market, name, uint, [task], (out, []))
                for task in tasks
                for name, out in (("frozenAt", uint), ("paidOnAcks", uint))
            ],
            *[(market, "rounds", at, [t, r], (ROUND_FIELDS, ROUND_NAMES)) for t, r in rounds],
            *[
                (
                    market,
                    "challenges",
                    [*at, "address"],
                    [t, r, a],
                    (CHALLENGE_FIELDS, CHALLENGE_NAMES),
                )
                for t, r, a in challenges
            ],
            *[
                (market, name, at, [task, round_], one)
                for task, round_ in sold
                for name in ("salesRevenue", "salesPaid")
            ],
            *[(market, "owed", ["address"], [self.address[i]], one) for i in SELLERS],
            *[(market, "ackCounted", ["uint256", "address"], [t, a], one) for t, a in counted],
        ]
        batch = [
            {
                "jsonrpc": "2.0",
                "id": n,
                "method": "eth_call",
                "params": [{"to": to, "data": "0x" + _calldata(name, types, args).hex()}, "latest"],
            }
            for n, (to, name, types, args, _) in enumerate(calls)
        ]
        response = requests.post(self.chain.local.rpc_url, json=batch, timeout=30)
        answers = {item["id"]: bytes.fromhex(item["result"][2:]) for item in response.json()}

        def value(n: int, out: list[str], names: list[str]) -> Any:
            values = decode(out, answers[n])
            return dict(zip(names, values, strict=True)) if names else values[0]

        words = (value(n, *shape) for n, (*_, shape) in enumerate(calls))
        return {
            "supply": next(words),
            "market": next(words),
            "balances": {i: next(words) for i in EVERYONE},
            "tasks": {task: next(words) for task in tasks},
            "acks": {task: (next(words), next(words)) for task in tasks},
            "rounds": {key: next(words) for key in rounds},
            "challenges": {key: next(words) for key in challenges},
            "sales": {key: (next(words), next(words)) for key in sold},
            "owed": {i: next(words) for i in SELLERS},
            "ack_counted": {key: next(words) for key in counted},
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

    def _past(self, tick: int) -> bool:
        """Whether a deadline set (WINDOW after a time) in ``tick`` has passed."""
        return self.tick > tick

    def _challengeable(self, model: TaskModel) -> list[int]:
        """The rounds of a task whose roots are still in their challenge window."""
        return [r for r, root in model.rounds.items() if not root.voided and root.tick == self.tick]

    def _answer_due(self, challenge: ChallengeModel) -> bool:
        """Whether a challenge's answer is still due (RESPONSE_WINDOW after its opening)."""
        return self.tick < challenge.tick + 2

    def _closed(self, model: TaskModel) -> bool:
        """Whether the close grace is over: no more commits; acks pay."""
        return model.closes_tick is not None and self.tick >= model.closes_tick + GRACE_TICKS

    def _refund_open(self, model: TaskModel) -> bool:
        """A grace after commits stop, and after the latest void."""
        closes, frozen = model.closes_tick, model.frozen_tick
        if closes is None or self.tick < closes + REFUND_TICKS:
            return False
        return frozen is None or self.tick >= frozen + GRACE_TICKS

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

    def _committed(
        self, model: TaskModel, round_: int, tree: RewardTree, total: int, commitment: bytes
    ) -> None:
        model.rounds[round_] = RoundModel(tree, total, commitment, self.tick, model.last_round)
        model.committed, model.last_round = total, round_

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
        self._committed(model, round_, tree, total, MODEL_COMMITMENT)

    def _honest_commit(self, task: TaskId) -> None:
        """The honest aggregator commits the true cumulative tree of the acked uploads."""
        model = self.tasks[task]
        latest = model.rounds.get(model.last_round)
        if not model.pending or (latest and dict(latest.tree.amounts) == model.pending):
            return
        tree = RewardTree.build(model.pending)
        round_ = model.last_round + 1
        expected: Outcome = None
        if self._closed(model):
            expected = market_errors.TaskIsClosed
        elif model.frozen:
            expected = market_errors.TaskFrozen
        elif tree.total > model.available:  # acks claimed outright took part of the escrow
            expected = market_errors.ExceedsEscrow
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
            self._committed(model, round_, tree, tree.total, MODEL_COMMITMENT)

    def _leaf_claim(
        self, data: st.DataObject, forged: bool
    ) -> tuple[TaskId, TaskModel, int, str, int, Proof, bool]:
        """A (task, round, account, amount, proof) to claim with, and whether it is valid."""
        task = data.draw(st.sampled_from([t for t, m in self.tasks.items() if m.rounds]))
        model = self.tasks[task]
        round_ = data.draw(st.sampled_from(sorted(model.rounds)))
        root = model.rounds[round_]
        account = data.draw(st.sampled_from(sorted(root.tree.amounts)))
        amount, proof = root.tree.amounts[account], root.tree.proof(account)
        if forged:
            amount += data.draw(st.integers(1, 100))
        return task, model, round_, account, amount, proof, root.provable and not forged

    def _leaf_outcome(self, model: TaskModel, round_: int, valid: bool) -> Outcome:
        """DataMarket._leafRound then _requireFinal: whether a leaf of ``round_`` pays now."""
        if not valid:
            return market_errors.InvalidProof
        if model.rounds[round_].voided:
            return market_errors.RoundIsVoided
        if not model.final(round_, self.tick):
            return market_errors.RoundNotFinal
        return None

    def _claim_leaf(
        self,
        submitter: int,
        task: TaskId,
        round_: int,
        account: str,
        amount: int,
        proof: Proof,
        valid: bool,
    ) -> Outcome:
        model = self.tasks[task]
        expected = self._leaf_outcome(model, round_, valid)
        pay = 0
        if expected is None:
            expected, pay = self._pay_outcome(model, account, amount)
        paid = self._expect(
            lambda: self.ledgers[submitter].claim(task, round_, account, amount, proof), expected
        )
        if expected is None:
            assert paid == pay
            self._paid(model, account, amount, pay)
        return expected

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
        self.received[self.index[account]] += pay

    def _claim_ack(self, submitter: int, model: TaskModel, item: AckModel) -> Outcome:
        """claimAcknowledged: only the aggregator's acks, only once the task is closing or
        frozen, and only from the escrow no root reserves."""
        account, amount = item.ack.device, item.ack.cumulative_amount
        expected: Outcome
        pay = 0
        if not item.genuine:
            expected = market_errors.NotAcknowledgedByAggregator
        elif not model.acks_payable(self.tick):
            expected = market_errors.AcksNotPayable
        else:
            expected, pay = self._pay_outcome(model, account, amount)
            if expected is None and model.committed + model.paid_on_acks + pay > model.escrow:
                expected, pay = market_errors.TaskUnderfunded, 0
        paid = self._expect(
            lambda: self.ledgers[submitter].claim_acknowledged(item.ack, item.signature),
            expected,
        )
        if expected is None:
            assert paid == pay
            self._paid(model, account, amount, pay)
            model.paid_on_acks += pay
            model.ack_counted[account] = model.ack_counted.get(account, 0) + pay
        return expected

    def _credit_ack(
        self, who: int, task: TaskId, account: str, leaf: int, proof: Proof, valid: bool
    ) -> Outcome:
        """creditAck: count ``account``'s leaf in the committed root once against its acks."""
        model = self.tasks[task]
        round_ = model.committed_round
        counted = model.ack_counted.get(account, 0)
        beyond = max(0, model.claimed.get(account, 0) - leaf)
        expected: Outcome
        if round_ == 0:
            expected = market_errors.UnknownRound
        else:
            expected = self._leaf_outcome(model, round_, valid)
        if expected is None and beyond >= counted:
            expected = market_errors.NothingToCredit
        credited = self._expect(
            lambda: self.ledgers[who].credit_ack(task, account, leaf, proof), expected
        )
        if expected is None:
            assert credited == counted - beyond
            model.ack_counted[account] = beyond
            model.paid_on_acks -= credited
        return expected

    def _open_outcome(self, model: TaskModel, round_: int, account: str, amount: int) -> Outcome:
        """DataMarket._openChallenge: whether ``round_`` may be challenged for paying
        ``account`` less than ``amount``."""
        root = model.rounds.get(round_)
        if root is None:
            return market_errors.UnknownRound
        if root.voided:
            return market_errors.RoundIsVoided
        if self._past(root.tick):
            return market_errors.ChallengeWindowClosed
        if amount == 0:
            return market_errors.ZeroAmount
        if amount >= UINT128:
            return market_errors.MarketRejected  # SafeCastOverflowedUintDowncast
        challenge = model.challenges.get((round_, account))
        if challenge is not None and not challenge.open and amount <= challenge.amount:
            return market_errors.AlreadyAnswered
        return None

    def _opened(
        self,
        task: TaskId,
        round_: int,
        account: str,
        amount: int,
        evidence: LeafEvidence | AckModel,
    ) -> None:
        model = self.tasks[task]
        challenge = model.challenges.get((round_, account))
        if challenge is None or not challenge.open:
            previous = challenge.amount if challenge else 0
            model.challenges[round_, account] = ChallengeModel(
                max(previous, amount), self.tick, evidence
            )
            model.rounds[round_].open_challenges += 1
        elif amount > challenge.amount:
            challenge.amount, challenge.evidence, challenge.pressed = amount, evidence, False
        if model.honest:
            self._answer_challenges(task)  # the honest server answers as it goes

    def _challenge_with_leaf(
        self, who: int, task: TaskId, round_: int, evidence: LeafEvidence
    ) -> Outcome:
        model = self.tasks[task]
        account = evidence.account
        expected: Outcome
        if evidence.round >= round_:
            expected = market_errors.EvidenceNotEarlier
        elif not evidence.valid:
            expected = market_errors.InvalidProof
        elif model.rounds[evidence.round].voided:
            expected = market_errors.RoundIsVoided
        else:
            expected = self._open_outcome(model, round_, account, evidence.amount)
        self._expect(
            lambda: self.ledgers[who].challenge(
                task,
                round_,
                evidence_round=evidence.round,
                account=account,
                cumulative_amount=evidence.amount,
                proof=evidence.proof,
            ),
            expected,
        )
        if expected is None:
            self._opened(task, round_, account, evidence.amount, evidence)
        return expected

    def _challenge_with_ack(self, who: int, task: TaskId, round_: int, item: AckModel) -> Outcome:
        model = self.tasks[task]
        ack = item.ack
        expected: Outcome
        if ack.round > round_:
            expected = market_errors.EvidenceNotEarlier
        elif not item.genuine:
            expected = market_errors.NotAcknowledgedByAggregator
        else:
            expected = self._open_outcome(model, round_, ack.device, ack.cumulative_amount)
        self._expect(
            lambda: self.ledgers[who].challenge_with_ack(task, round_, ack, item.signature),
            expected,
        )
        if expected is None:
            self._opened(task, round_, ack.device, ack.cumulative_amount, item)
        return expected

    def _answer(
        self,
        who: int,
        task: TaskId,
        round_: int,
        account: str,
        amount: int,
        proof: Proof,
        valid: bool,
    ) -> None:
        model = self.tasks[task]
        challenge = model.challenges.get((round_, account))
        expected: Outcome = None
        if challenge is None or not challenge.open:
            expected = market_errors.NotChallenged
        elif not self._answer_due(challenge):
            expected = market_errors.ResponseWindowClosed
        elif amount < challenge.amount:
            expected = market_errors.AnswerTooLow
        elif not valid:
            expected = market_errors.InvalidProof
        self._expect(
            lambda: self.ledgers[who].answer(task, round_, account, amount, proof), expected
        )
        if expected is None:
            assert challenge is not None
            challenge.open, challenge.amount, challenge.pressed = False, amount, False
            model.rounds[round_].open_challenges -= 1

    def _void(self, who: int, task: TaskId, round_: int, account: str) -> None:
        model = self.tasks[task]
        challenge = model.challenges.get((round_, account))
        root = model.rounds[round_]
        expected: Outcome = None
        if challenge is None or not challenge.open:
            expected = market_errors.NotChallenged
        elif self._answer_due(challenge):
            expected = market_errors.ResponseWindowOpen
        elif root.voided:
            expected = market_errors.RoundIsVoided
        self._expect(lambda: self.ledgers[who].void_round(task, round_, account), expected)
        if expected is None:
            root.voided, model.frozen_tick = True, self.tick
            # the committed total falls back to that of the latest round not voided
            standing = [r for r, other in model.rounds.items() if not other.voided]
            model.committed = model.rounds[max(standing)].total if standing else 0

    def _watch(self, index: int, task: TaskId) -> None:
        """What ``fedmarket device watch`` does, as device ``index``, in ``task``: for every
        root in its window, challenge for every account it pays less than that account's
        largest leaf in an earlier root (anyone may), and for the device itself less than its
        largest ack of that round or before; answer every due challenge a root's own leaf
        answers; void every root whose challenge went unanswered."""
        model = self.tasks[task]
        device = self.address[index]
        best: dict[str, LeafEvidence] = {}  # each account's largest leaf in an earlier root
        for round_ in sorted(model.rounds):
            root = model.rounds[round_]
            if root.voided:
                continue
            challenged = sorted((a, c) for (r, a), c in model.challenges.items() if r == round_)
            overdue = [a for a, c in challenged if c.open and not self._answer_due(c)]
            if overdue:
                self._void(index, task, round_, overdue[0])
                continue
            for account, challenge in challenged:
                amount = root.leaf(account)
                if challenge.open and amount is not None and amount >= challenge.amount:
                    proof = root.tree.proof(account)
                    self._answer(index, task, round_, account, amount, proof, True)
            owed: dict[str, LeafEvidence | AckModel] = dict(best)
            acks = [
                a
                for a in model.genuine_acks(device)
                if a.ack.round <= round_ and a.ack.cumulative_amount < UINT128
            ]
            ack = max(acks, key=lambda a: a.ack.cumulative_amount, default=None)
            if ack is not None and ack.ack.cumulative_amount > _amount(owed.get(device)):
                owed[device] = ack
            for account, evidence in sorted(owed.items()):
                challenge = model.challenges.get((round_, account))
                shown = challenge.amount if challenge is not None else 0
                if self._past(root.tick) or _amount(evidence) <= max(
                    root.leaf(account) or 0, shown
                ):
                    continue
                if isinstance(evidence, AckModel):
                    outcome = self._challenge_with_ack(index, task, round_, evidence)
                else:
                    outcome = self._challenge_with_leaf(index, task, round_, evidence)
                assert outcome is None, "a watching device could not challenge"
            for account, amount in root.tree.amounts.items() if root.provable else ():
                if amount > _amount(best.get(account)):
                    proof = root.tree.proof(account)
                    best[account] = LeafEvidence(round_, account, amount, proof, True)

    def _hostile_commit(
        self,
        who: int,
        task: TaskId,
        round_: int,
        tree: RewardTree,
        cumulative: int,
        commitment: bytes = MODEL_COMMITMENT,
    ) -> None:
        """Commit ``tree`` under ``cumulative`` as ``round_``, as ``who``; once committed, the
        devices see it at once and its aggregator answers what it can."""
        model = self.tasks[task]
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
        elif model.frozen:
            expected = market_errors.TaskFrozen
        elif round_ <= model.last_round:
            expected = market_errors.RoundNotIncreasing
        elif cumulative < model.committed:
            expected = market_errors.CumulativeDecreased
        elif cumulative > model.available:
            expected = market_errors.ExceedsEscrow
        elif commitment == bytes(32):
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
            self._committed(model, round_, tree, cumulative, commitment)
            self._seen(task)

    def _last_minute_commit(self, task: TaskId) -> None:
        """A hostile aggregator's commit in its task's close grace that counts on the whole
        escrow (the Sybil takes what the latest root leaves), acks claimed before or not."""
        model = self.tasks[task]
        latest = [r for r in model.rounds.values() if r.provable and not r.voided]
        amounts = dict(latest[-1].tree.amounts) if latest else {}
        sybil = self.address[SYBIL]
        amounts[sybil] = amounts.get(sybil, 0) + max(0, model.escrow - sum(amounts.values()))
        tree = RewardTree.build(amounts)
        self._hostile_commit(model.aggregator, task, model.last_round + 1, tree, tree.total)

    def _dropping(self, task: TaskId, victim: str, bonus: int, kept: int) -> dict[str, int]:
        """The latest provable root's amounts with ``victim``'s moved to the Sybil but for
        ``kept`` (less than it had; -1: the victim is left out), plus ``bonus`` more as far as
        the escrow allows."""
        model = self.tasks[task]
        latest = [r for r in model.rounds.values() if r.provable and not r.voided][-1]
        amounts = dict(latest.tree.amounts)
        sybil = self.address[SYBIL]
        if victim != sybil:
            had = amounts.pop(victim)
            kept = min(kept, had - 1)
            amounts[sybil] = amounts.get(sybil, 0) + had - max(kept, 0)
            if kept >= 0:
                amounts[victim] = kept
        amounts[sybil] = amounts.get(sybil, 0) + min(
            bonus, max(0, model.available - sum(amounts.values()))
        )
        return amounts

    def _seen(self, task: TaskId) -> None:
        """A hostile root was committed: the devices see it and object at once, and its
        aggregator answers what it can."""
        for index in DEVICES:
            self._watch(index, task)
        self._press(task)

    def _press(self, task: TaskId) -> None:
        """A hostile aggregator answers every due challenge of its task with whatever leaf it
        has for the challenger, and challengers whose challenge was answered ask again, with
        the same evidence, while the root is in its window (each once)."""
        model = self.tasks[task]
        for (round_, account), challenge in sorted(model.challenges.items()):
            root = model.rounds[round_]
            if challenge.pressed:
                continue
            challenge.pressed = True
            if challenge.open and self._answer_due(challenge) and not model.honest:
                shown = account if account in root.tree.amounts else min(root.tree.amounts)
                amount, proof = root.tree.amounts[shown], root.tree.proof(shown)
                valid = root.provable and shown == account
                self._answer(model.aggregator, task, round_, account, amount, proof, valid)
            elif not challenge.open and not root.voided and not self._past(root.tick):
                who, evidence = self.index[account], challenge.evidence
                if isinstance(evidence, AckModel):
                    self._challenge_with_ack(who, task, round_, evidence)
                else:
                    self._challenge_with_leaf(who, task, round_, evidence)

    def _press_after_the_tick(self) -> None:
        """Once a tick has passed: whoever holds a leaf of a root under challenge claims from
        it at once, a stranger voids every challenged root (once too early, while its answer
        is due, then as soon as it may), acks are claimed outright, and sponsors of closed
        tasks take back what they can."""
        for task, model in self.tasks.items():
            for (round_, account), challenge in sorted(model.challenges.items()):
                root = model.rounds[round_]
                if not challenge.open or root.voided:
                    continue
                if not self._answer_due(challenge):
                    self._void(ANYONE, task, round_, account)  # as soon as it may
                    continue
                if challenge.rushed:
                    continue
                challenge.rushed = True
                holder = min(root.tree.amounts)
                amount, proof = root.tree.amounts[holder], root.tree.proof(holder)
                self._claim_leaf(
                    self.index[holder], task, round_, holder, amount, proof, root.provable
                )
                self._void(ANYONE, task, round_, account)
        self._claim_acks_outright()
        for task, model in self.tasks.items():  # the sponsor takes back what it can at once
            if self._refund_open(model) and model.escrow > model.reserved:
                self._refund_unspent(model.sponsor, task)

    def _refund_unspent(self, who: int, task: TaskId) -> None:
        model = self.tasks[task]
        expected: Outcome = None
        if not self._refund_open(model):
            expected = market_errors.TaskNotClosed  # acks come first, for a grace
        elif model.escrow <= model.reserved:
            expected = market_errors.NothingToRefund
        refund = self._expect(lambda: self.ledgers[who].refund_unspent(task), expected)
        if expected is None:
            assert refund == model.escrow - model.reserved
            model.escrow = model.reserved
            self.received[model.sponsor] += refund

    def _claim_acks_outright(self) -> None:
        """Every genuine ack of a task that commits no more is claimed as it is (first come,
        first served), not after its device's leaf: what a careless or hostile holder does."""
        for model in self.tasks.values():
            for item in model.acks if model.acks_payable(self.tick) else ():
                unpaid = item.ack.cumulative_amount > model.claimed.get(item.ack.device, 0)
                if item.genuine and unpaid and not item.pressed:
                    item.pressed = self._claim_ack(ANYONE, model, item) is not None

    def _answer_challenges(self, task: TaskId) -> None:
        """The honest aggregator answers every open challenge of its roots while it is due:
        its roots are true cumulative trees, so each holds a leaf that answers."""
        model = self.tasks[task]
        for (round_, account), challenge in sorted(model.challenges.items()):
            if not challenge.open or not self._answer_due(challenge):
                continue
            root = model.rounds[round_]
            amount = root.leaf(account)
            assert amount is not None, "an honest root left out a challenger it owes"
            assert amount >= challenge.amount, "an honest root paid a challenger too little"
            proof = root.tree.proof(account)
            self._answer(AGGREGATOR, task, round_, account, amount, proof, True)

    def _deliver(self, purchase: PurchaseId, correct: bool, who: int) -> None:
        model = self.purchases[purchase]
        listing = self.listings[model.listing]
        expected: Outcome = None
        if model.state != PurchaseState.PENDING:
            expected = market_errors.WrongPurchaseState
        elif who != listing.seller:
            expected = market_errors.NotSeller
        elif self._past(model.tick):
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
            model.tick = self.tick

    def _settle(self, purchase: PurchaseId, who: int) -> None:
        model = self.purchases[purchase]
        expected: Outcome = None
        if model.state != PurchaseState.DELIVERED:
            expected = market_errors.WrongPurchaseState
        elif not self._past(model.tick):
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
        elif not self._past(model.tick):
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
        elif self._past(model.tick):
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
    """On a market of its own, deployed with this machine's windows (see the module's doc)."""
    deployment = deploy(
        chain.w3,
        chain.accounts[SPONSOR],
        delivery_window=WINDOW,
        dispute_window=WINDOW,
        close_grace=CLOSE_GRACE,
        challenge_window=WINDOW,
        response_window=RESPONSE_WINDOW,
    )
    MarketMachine.chain = Chain(chain.local, chain.w3, deployment, chain.accounts)
    run_state_machine_as_test(
        MarketMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
