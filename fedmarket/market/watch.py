"""A device watching its tasks' rewards roots, and challenging any that pays it too little.

A root pays nothing until its challenge window is over (``DataMarket.challengeWindow``). In
that window a device checks the root against what it is owed: its largest cumulative amount in
an earlier root, and the aggregator's acknowledgements of its uploads for that round or before.
If the root, rebuilt from the receipts bundles it names, pays the device less (or cannot be
rebuilt, because the aggregator withheld a bundle), the device challenges it with its best
evidence; the aggregator must then show the device's leaf on chain, or the root is voided. A
challenge left unanswered past its deadline is voided here too. Run it at least once per
challenge window while a task commits rounds (``fedmarket device watch``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from fedmarket.acks import Ack
from fedmarket.device.acks import AckBook
from fedmarket.ledger.base import Ledger, RoundCommit
from fedmarket.market.lineage import verified_prefix
from fedmarket.market.rewards import Proof, RewardTree
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Objection:
    """A root that pays ``account`` less than it is owed, and what was done about it."""

    task: TaskId
    round: int
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
    """Check every committed root of ``tasks`` (default: every task with a commit) that
    ``account`` may still challenge or void; with ``act``, challenge and void (``ledger`` must
    sign as ``account``). Returns the roots that pay the account too little."""
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
    best_leaf: _Evidence | None = None
    for commit in ledger.round_commits(task):
        state = ledger.round_state(task, commit.round)
        if state is None or state.voided:
            continue
        amounts = rebuilt.get(commit.round)
        pays = amounts.get(account, 0) if amounts is not None else None
        evidence = _best_evidence(best_leaf, book, commit)
        if evidence is not None and (pays is None or pays < evidence.amount):
            action = _object(ledger, task, commit.round, evidence, state.final_at, now, act)
            found.append(
                Objection(task, commit.round, evidence.amount, pays, evidence.label, action)
            )
        if amounts and pays and (best_leaf is None or pays > best_leaf.amount):
            proof = RewardTree.build(amounts).proof(account)
            best_leaf = _Evidence(pays, f"root of round {commit.round}", commit.round, proof)
    return found


def _best_evidence(
    leaf: _Evidence | None, book: dict[int, tuple[Ack, bytes]], commit: RoundCommit
) -> _Evidence | None:
    """The largest amount the account is owed at ``commit``: an earlier root's leaf or an ack
    of that round or before."""
    best = leaf
    for round, signed in book.items():
        amount = signed[0].cumulative_amount
        if round <= commit.round and (best is None or amount > best.amount):
            best = _Evidence(amount, f"ack of round {round}", round, ack=signed)
    return best


def _object(
    ledger: Ledger,
    task: TaskId,
    round: int,
    evidence: _Evidence,
    final_at: int,
    now: int,
    act: bool,
) -> str:
    """Challenge ``round`` with ``evidence``, or void it if a challenge went unanswered."""
    account = ledger.address
    challenge = ledger.challenge_state(task, round, account)
    if challenge is not None and challenge.open:
        if now <= challenge.deadline:
            return f"waiting for the answer (due at chain time {challenge.deadline})"
        if act:
            ledger.void_round(task, round, account)
            return "voided (the challenge went unanswered)"
        return "voidable (the challenge went unanswered)"
    if challenge is not None and challenge.amount >= evidence.amount:
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
            cumulative_amount=evidence.amount,
            proof=evidence.proof,
        )
    return "challenged"
