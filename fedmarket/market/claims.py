"""A device's rewards, rebuilt from the chain, the store and its acknowledgements, and claimed.

A device needs nobody's word for what it is owed: the committed rounds name their receipts
bundles, the bundles hold the paid receipts, and the reward tree rebuilt from them must give the
committed root (:func:`~fedmarket.market.lineage.verified_prefix` checks every link). The device
claims its largest cumulative amount in a *final* root (its challenge window over; any final
round's root counts, so a later root cannot take it back) with its own Merkle-sum proof; amounts
in roots still in their window are reported as pending. A root that pays the device less than it
is owed is challenged (:mod:`fedmarket.market.watch`). Once the task commits no more (its
close grace is over, or a root was voided), an acknowledgement worth more than the roots pay is
claimed directly, after the device's own root claim, so that only what it adds is taken from
the unreserved escrow; where that is short because other devices' acks were claimed before
their leaves, those leaves are credited first (``DataMarket.creditAck``), and a smaller ack
is tried where the largest does not fit. Sales of a round's model pay its contributors a share
pro rata to their cumulative rewards at that round, claimed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from eth_utils.address import to_checksum_address

from fedmarket.acks import Ack
from fedmarket.device.acks import AckBook
from fedmarket.exceptions import FedmarketError
from fedmarket.ledger.base import Ledger, TaskState
from fedmarket.ledger.errors import NothingToCredit, TaskUnderfunded
from fedmarket.market.lineage import Lineage, verified_prefix
from fedmarket.market.rewards import Proof, RewardTree
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaleShare:
    """An account's share of the contributors' revenue from sales of one round's model."""

    round: int
    cumulative: int  # the account's cumulative reward at that round (its weight)
    proof: Proof
    due: int  # revenue x cumulative / the round's total, as the contract computes it
    claimed: int

    @property
    def claimable(self) -> int:
        return max(0, self.due - self.claimed)


@dataclass(frozen=True)
class Credit:
    """Another account's leaf in the committed root, counted in full on its acks so far."""

    account: str
    leaf: int
    proof: Proof


@dataclass(frozen=True)
class Rewards:
    """One account's rewards in one task (token base units)."""

    task: TaskId
    account: str
    earned: int  # largest cumulative amount the verified final rounds give it
    round: int  # the round whose root gives ``earned``
    claimed: int
    rounds: int  # committed rounds (final or pending) in which the account was paid
    proof: Proof
    acked: int = 0  # largest cumulative amount a payable acknowledgement gives
    ack: tuple[Ack, bytes] | None = None  # the one that gives it
    fallback_acks: tuple[tuple[Ack, bytes], ...] = ()  # the smaller ones, largest first
    sale_shares: tuple[SaleShare, ...] = ()
    pending: int = 0  # largest cumulative amount in a verified root still in its window
    final_at: int = 0  # chain time from which ``pending`` can be claimed
    credits: tuple[Credit, ...] = ()  # leaves to credit should the ack not fit the escrow

    @property
    def owed(self) -> int:
        return max(self.earned, self.acked)

    @property
    def claimable(self) -> int:
        return max(0, self.owed - self.claimed)

    @property
    def sale_claimable(self) -> int:
        return sum(s.claimable for s in self.sale_shares)


def rewards_of(
    ledger: Ledger,
    store: ContentStore,
    account: str,
    *,
    acks: AckBook | None = None,
    tasks: Iterable[TaskId] | None = None,
) -> list[Rewards]:
    """``account``'s rewards in ``tasks`` (default: every task with a committed round)."""
    account = to_checksum_address(account)
    if tasks is None:
        tasks = sorted({c.task for c in ledger.round_commits()})
    found = []
    now = ledger.now()
    for task in tasks:
        state = ledger.task(task)
        lineage, broken = verified_prefix(
            ledger, store, task, chain_id=ledger.chain_id, market=ledger.market_address
        )
        if broken:  # the rounds before it still pay; acknowledgements cover the rest
            log.warning("task %d: %s", task, broken)
        payable: list[tuple[Ack, bytes]] = []
        if acks is not None and state.acks_payable(now):  # only then are acks paid directly
            book = acks.acks(chain_id=ledger.chain_id, market=ledger.market_address, task=task)
            payable = sorted(book.values(), key=lambda e: e[0].cumulative_amount, reverse=True)
        ack = payable[0] if payable else None
        final, pending, final_at = (
            _final_and_pending(ledger, lineage, now) if lineage else ({}, {}, {})
        )
        earned, round_, proof = _best_leaf(final, account)
        waiting, waiting_round, _ = _best_leaf(pending, account)
        if earned == 0 and waiting == 0 and ack is None:
            continue
        reward = state.reward_per_update
        found.append(
            Rewards(
                task=task,
                account=account,
                earned=earned,
                round=round_,
                claimed=ledger.claimed(task, account),
                rounds=max(earned, waiting) // reward if reward else 0,
                proof=proof,
                acked=ack[0].cumulative_amount if ack else 0,
                ack=ack,
                fallback_acks=tuple(payable[1:]),
                sale_shares=_sale_shares(ledger, lineage, final, account) if lineage else (),
                pending=waiting if waiting > earned else 0,
                final_at=final_at.get(waiting_round, 0) if waiting > earned else 0,
                credits=_credits(ledger, state, final) if ack and state.paid_on_acks else (),
            )
        )
    return found


def claim_all(
    ledger: Ledger,
    rewards: Iterable[Rewards],
    *,
    failed: dict[TaskId, FedmarketError] | None = None,
) -> dict[TaskId, int]:
    """Claim everything claimable (rewards, then sale shares), one transaction each; return
    what each task paid. With ``failed``, a task whose claim is refused is recorded there and
    the other tasks are still claimed; without it, the refusal is raised."""
    paid: dict[TaskId, int] = {}
    for r in rewards:
        total = _claim_task(ledger, r, failed)
        if total:
            paid[r.task] = total
    return paid


def _claim_task(ledger: Ledger, r: Rewards, failed: dict[TaskId, FedmarketError] | None) -> int:
    """The root first, then only what the ack adds (an ack paid where a root would pay
    reserves that overlap twice until it is credited); sale shares on their own, so that an
    ack that can no longer be paid blocks none of them."""
    total = 0

    def attempt(call: Callable[[], int]) -> bool:
        nonlocal total
        try:
            total += call()
        except FedmarketError as exc:
            if failed is None:
                raise
            failed.setdefault(r.task, exc)
            return False
        return True

    rooted = r.earned <= r.claimed or attempt(
        lambda: ledger.claim(r.task, r.round, r.account, r.earned, r.proof)
    )
    if rooted and r.ack is not None and r.acked > max(r.earned, r.claimed, r.pending):
        attempt(lambda: _claim_ack(ledger, r))
    for share in r.sale_shares:
        if share.claimable > 0:
            attempt(partial(_claim_share, ledger, r, share))
    return total


def _claim_share(ledger: Ledger, r: Rewards, share: SaleShare) -> int:
    return ledger.claim_sale_share(r.task, share.round, r.account, share.cumulative, share.proof)


_Rewards = dict[int, dict[str, int]]  # round -> account -> cumulative amount


def _claim_ack(ledger: Ledger, r: Rewards) -> int:
    """Claim the largest ack the unreserved escrow can pay, after crediting other accounts'
    committed leaves that their acks counted twice. A smaller ack may fit where the largest
    does not (acks are paid first come, first served)."""
    for credit in r.credits:
        try:
            ledger.credit_ack(r.task, credit.account, credit.leaf, credit.proof)
        except NothingToCredit:  # someone credited it since
            continue
    already = max(r.earned, r.claimed)
    unpaid = [a for a in (r.ack, *r.fallback_acks) if a and a[0].cumulative_amount > already]
    for ack in unpaid[:-1]:
        try:
            return ledger.claim_acknowledged(*ack)
        except TaskUnderfunded:
            continue
    return ledger.claim_acknowledged(*unpaid[-1])


def _credits(ledger: Ledger, state: TaskState, final: _Rewards) -> tuple[Credit, ...]:
    """Leaves of the committed root (the latest not voided; it must be final and verified)
    that accounts paid on acks have not been credited with yet."""
    amounts = final.get(_committed_round(ledger, state.task), {})
    if not amounts:
        return ()
    tree = RewardTree.build(amounts)
    credits = []
    for account in ledger.acks_paid(state.task):
        leaf = amounts.get(account, 0)
        beyond = max(0, ledger.claimed(state.task, account) - leaf)
        if leaf and ledger.ack_counted(state.task, account) > beyond:
            credits.append(Credit(account, leaf, tree.proof(account)))
    return tuple(credits)


def _committed_round(ledger: Ledger, task: TaskId) -> int:
    """The round whose total the contract counts as committed: the latest not voided (0: none)."""
    for commit in sorted(ledger.round_commits(task), key=lambda c: c.round, reverse=True):
        state = ledger.round_state(task, commit.round)
        if state is not None and not state.voided:
            return commit.round
    return 0


def _final_and_pending(
    ledger: Ledger, lineage: Lineage, now: int
) -> tuple[_Rewards, _Rewards, dict[int, int]]:
    """The verified rounds' rewards split into those whose roots pay now and those still in
    their challenge window (voided roots and roots under challenge are in neither), and the
    chain time each pending root becomes final."""
    final: _Rewards = {}
    pending: _Rewards = {}
    final_at: dict[int, int] = {}
    for round, amounts in lineage.rewards_at.items():
        state = ledger.round_state(lineage.task, round)
        if state is None or state.voided:
            continue
        if state.final(now):
            final[round] = amounts
        elif state.open_challenges == 0:
            pending[round] = amounts
            final_at[round] = state.final_at
    return final, pending, final_at


def _best_leaf(rewards: _Rewards, account: str) -> tuple[int, int, Proof]:
    """(largest cumulative amount, its round, its proof) among ``rewards``."""
    best = max(
        ((amounts[account], round) for round, amounts in rewards.items() if account in amounts),
        default=None,
    )
    if best is None or best[0] == 0:
        return 0, 0, ()
    amount, round = best
    return amount, round, RewardTree.build(rewards[round]).proof(account)


def _sale_shares(
    ledger: Ledger, lineage: Lineage, final: _Rewards, account: str
) -> tuple[SaleShare, ...]:
    shares = []
    offers = [ledger.listing(n) for n in ledger.listing_ids()]
    listed = {offer.round for offer in offers if offer.task == lineage.task}
    for round in sorted(listed):
        amounts = final.get(round, {})
        revenue, _ = ledger.sales_revenue(lineage.task, round)
        if revenue == 0 or account not in amounts:
            continue
        total = sum(amounts.values())
        shares.append(
            SaleShare(
                round=round,
                cumulative=amounts[account],
                proof=RewardTree.build(amounts).proof(account),
                due=revenue * amounts[account] // total,
                claimed=ledger.sale_claimed(lineage.task, round, account),
            )
        )
    return tuple(shares)
