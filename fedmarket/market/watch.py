"""A device watching its tasks' rewards roots: challenge any that takes an amount back.

A root pays nothing until its challenge window is over (``DataMarket.challengeWindow``). In
that window the device rebuilds the root from the receipts bundles it names and compares it
with the earlier roots: every account's amount must not fall (the contract lets anyone
challenge for any account, so Sybils that stay silent about their own decrease cannot hide it),
and the device's own amount must reach the aggregator's acknowledgements of its uploads for that
round or before. A root that takes an amount back, or that cannot be rebuilt because a bundle
is withheld (then for the device itself), is challenged with the best evidence; the aggregator
must show the account's leaf on chain, or the root is voided. The device also answers open
challenges its rebuilt trees can answer (anyone may), so a baseless challenge cannot void an
honest root while the aggregator is away, and it voids roots whose challenge went unanswered.
Run it at least once per challenge window while a task commits rounds
(``fedmarket device watch``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from fedmarket.acks import Ack
from fedmarket.device.acks import AckBook
from fedmarket.exceptions import ContractRejected, TransactionFailed
from fedmarket.ledger.base import Ledger, RoundCommit
from fedmarket.market.lineage import verified_prefix
from fedmarket.market.rewards import Proof, RewardTree
from fedmarket.store.base import ContentStore
from fedmarket.types import Address, TaskId

log = logging.getLogger(__name__)
_MAX_AMOUNT = 2**128 - 1  # escrows and challenges are uint128 on chain


@dataclass(frozen=True)
class Objection:
    """A root that pays ``account`` less than it is owed, and what was done about it."""

    task: TaskId
    round: int
    account: str
    owed: int  # the best evidence's cumulative amount
    pays: int | None  # what the rebuilt root pays; None when it could not be rebuilt
    evidence: str  # "ack of round N" or "root of round N"
    action: str  # "challenged", "voided", "waiting for the answer", "too late", ...


@dataclass(frozen=True)
class _Evidence:
    amount: int
    label: str
    round: int  # the evidence's round
    proof: Proof = ()  # a leaf's proof in that round's root
    ack: tuple[Ack, bytes] | None = None  # or the aggregator's signed acknowledgement


def watch(
    ledger: Ledger,
    store: ContentStore,
    account: str,
    *,
    acks: AckBook | None = None,
    tasks: Iterable[TaskId] | None = None,
    act: bool = True,
) -> list[Objection]:
    """Check every committed root of ``tasks`` (default: every task with a commit) that may still
    be challenged, answered or voided; with ``act``, do it (``ledger`` signs and pays the gas;
    ``account`` is the device whose acknowledgements count). Returns the roots found taking an
    amount back."""
    account = to_checksum_address(account)
    if tasks is None:
        tasks = sorted({c.task for c in ledger.round_commits()})
    found: list[Objection] = []
    for task in tasks:
        found.extend(_watch_task(ledger, store, account, task, acks, act))
    return found


def _watch_task(
    ledger: Ledger,
    store: ContentStore,
    account: str,
    task: TaskId,
    acks: AckBook | None,
    act: bool,
) -> list[Objection]:
    lineage, broken = verified_prefix(
        ledger, store, task, chain_id=ledger.chain_id, market=ledger.market_address
    )
    if broken:
        log.warning("task %d: %s", task, broken)
    rebuilt = lineage.rewards_at if lineage else {}
    book = (
        acks.acks(chain_id=ledger.chain_id, market=ledger.market_address, task=task) if acks else {}
    )
    now = ledger.now()
    found = []
    best: dict[str, _Evidence] = {}  # each account's largest leaf in an earlier root
    opened: set[tuple[int, Address]] | None = None  # the task's challenges, read once if needed
    for commit in ledger.round_commits(task):
        state = ledger.round_state(task, commit.round)
        if state is None or state.voided:
            continue
        amounts = rebuilt.get(commit.round)
        open_window = now < state.final_at
        if open_window and amounts is not None and act:
            opened = set(ledger.challenges_opened(task)) if opened is None else opened
            _answer_what_we_can(ledger, task, commit.round, amounts, opened)
        # A root that cannot be rebuilt (a withheld bundle) is challenged for every account with
        # an earlier leaf: the aggregator must then show each leaf on chain, or lose the root.
        for who in sorted(best.keys() | {account}):
            pays = amounts.get(who, 0) if amounts is not None else None
            evidence = best.get(who)
            if who == account:
                evidence = _with_acks(evidence, book, commit)
            if evidence is None or (pays is not None and pays >= evidence.amount):
                continue
            try:
                action = _object(
                    ledger, task, commit.round, who, evidence, state.final_at, now, act
                )
            except (
                ContractRejected,
                TransactionFailed,
            ) as exc:  # one refusal must not stop the rest
                action = f"failed: {exc}"
            found.append(
                Objection(task, commit.round, who, evidence.amount, pays, evidence.label, action)
            )
            if action.startswith("voided"):
                break  # the root is done with: the other accounts' challenges are moot
        if amounts:
            tree = RewardTree.build(amounts)
            for who, amount in amounts.items():
                if amount > 0 and (who not in best or amount > best[who].amount):
                    label = f"root of round {commit.round}"
                    best[who] = _Evidence(amount, label, commit.round, tree.proof(who))
    return found


def _with_acks(
    leaf: _Evidence | None, book: dict[int, tuple[Ack, bytes]], commit: RoundCommit
) -> _Evidence | None:
    """The largest amount the device is owed at ``commit``: an earlier root's leaf or an ack
    of that round or before."""
    best = leaf
    for round, signed in book.items():
        amount = signed[0].cumulative_amount
        if amount > _MAX_AMOUNT:
            continue  # no escrow holds it (the contract refuses it): the aggregator's own folly
        if round <= commit.round and (best is None or amount > best.amount):
            best = _Evidence(amount, f"ack of round {round}", round, ack=signed)
    return best


def _answer_what_we_can(
    ledger: Ledger,
    task: TaskId,
    round: int,
    amounts: dict[str, int],
    opened: set[tuple[int, Address]],
) -> None:
    """Answer every open challenge of ``round`` (among ``opened``: the task's challenges as
    (round, account)) that its rebuilt tree answers."""
    now = ledger.now()
    tree: RewardTree | None = None
    for who in sorted(who for challenged, who in opened if challenged == round):
        challenge = ledger.challenge_state(task, round, who)
        pays = amounts.get(who, 0)
        if challenge is None or not challenge.open or now > challenge.deadline:
            continue
        if pays < challenge.amount:
            continue  # a real objection: the aggregator must answer, or the root is voided
        tree = tree or RewardTree.build(amounts)
        ledger.answer(task, round, who, pays, tree.proof(who))


def _object(
    ledger: Ledger,
    task: TaskId,
    round: int,
    account: str,
    evidence: _Evidence,
    final_at: int,
    now: int,
    act: bool,
) -> str:
    """Challenge ``round`` for ``account`` with ``evidence``, or void it if a challenge went
    unanswered."""
    challenge = ledger.challenge_state(task, round, account)
    raise_it = challenge is not None and challenge.amount < evidence.amount and now < final_at
    if challenge is not None and challenge.open and not raise_it:
        if now <= challenge.deadline:
            return f"waiting for the answer (due at chain time {challenge.deadline})"
        if act:
            ledger.void_round(task, round, account)
            return "voided (the challenge went unanswered)"
        return "voidable (the challenge went unanswered)"
    if challenge is not None and not challenge.open and challenge.amount >= evidence.amount:
        return "answered: the aggregator showed a leaf paying this much"
    if now >= final_at:
        return "too late: the challenge window is over"
    if not act:
        return "challengeable"
    if evidence.ack is not None:
        ledger.challenge_with_ack(task, round, *evidence.ack)
    else:
        ledger.challenge(
            task,
            round,
            evidence_round=evidence.round,
            account=account,
            cumulative_amount=evidence.amount,
            proof=evidence.proof,
        )
    return "challenge raised" if raise_it else "challenged"
