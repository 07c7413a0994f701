"""A device's rewards, rebuilt from the chain, the store and its acknowledgements, and claimed.

A device needs nobody's word for what it is owed: the committed rounds name their receipts
bundles, the bundles hold the paid receipts, and the reward tree rebuilt from them must give the
committed root (:func:`~fedmarket.market.lineage.verify_task` checks every link). The device
claims its largest committed cumulative amount with its own Merkle proof (any committed round's
root counts, so a later root cannot take it back). If the aggregator acknowledged more than the
verified rounds pay (it left the device out, or its commits do not verify), the device claims
with the acknowledgement instead. Sales of a round's model pay its contributors a share pro rata
to their cumulative rewards at that round, claimed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from fedmarket.acks import Ack
from fedmarket.device.acks import AckBook
from fedmarket.exceptions import LineageBroken
from fedmarket.ledger.base import Ledger
from fedmarket.market.lineage import Lineage, verify_task
from fedmarket.market.rewards import RewardTree
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaleShare:
    """An account's share of the contributors' revenue from sales of one round's model."""

    round: int
    cumulative: int  # the account's cumulative reward at that round (its weight)
    proof: tuple[bytes, ...]
    due: int  # revenue x cumulative / the round's total, as the contract computes it
    claimed: int

    @property
    def claimable(self) -> int:
        return max(0, self.due - self.claimed)


@dataclass(frozen=True)
class Rewards:
    """One account's rewards in one task (token base units)."""

    task: TaskId
    account: str
    earned: int  # largest cumulative amount the verified committed rounds give it
    round: int  # the round whose root gives ``earned``
    claimed: int
    rounds: int  # rounds in which the account was paid
    proof: tuple[bytes, ...]
    acked: int = 0  # largest cumulative amount an acknowledgement for a committed round gives
    ack: tuple[Ack, bytes] | None = None
    sale_shares: tuple[SaleShare, ...] = ()

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
    for task in tasks:
        state = ledger.task(task)
        try:
            lineage: Lineage | None = verify_task(
                ledger, store, task, chain_id=ledger.chain_id, market=ledger.market_address
            )
        except LineageBroken as exc:  # acknowledgements still count when the commits do not
            log.warning("task %d: %s", task, exc)
            lineage = None
        ack = None
        if acks is not None:
            ack = acks.best(
                chain_id=ledger.chain_id,
                market=ledger.market_address,
                task=task,
                up_to_round=state.last_round,
            )
        earned, round_, proof = _best_leaf(lineage, account) if lineage else (0, 0, ())
        if earned == 0 and ack is None:
            continue
        reward = state.reward_per_update
        found.append(
            Rewards(
                task=task,
                account=account,
                earned=earned,
                round=round_,
                claimed=ledger.claimed(task, account),
                rounds=earned // reward if reward else 0,
                proof=proof,
                acked=ack[0].cumulative_amount if ack else 0,
                ack=ack,
                sale_shares=_sale_shares(ledger, lineage, account) if lineage else (),
            )
        )
    return found


def claim_all(ledger: Ledger, rewards: Iterable[Rewards]) -> dict[TaskId, int]:
    """Claim everything claimable (rewards, then sale shares), one transaction each; return
    what each task paid."""
    paid: dict[TaskId, int] = {}
    for r in rewards:
        total = 0
        if r.claimable > 0:
            if r.ack is not None and r.acked > r.earned:
                total += ledger.claim_acknowledged(*r.ack)
            else:
                total += ledger.claim(r.task, r.round, r.account, r.earned, list(r.proof))
        for share in r.sale_shares:
            if share.claimable > 0:
                total += ledger.claim_sale_share(
                    r.task, share.round, r.account, share.cumulative, list(share.proof)
                )
        if total:
            paid[r.task] = total
    return paid


def _best_leaf(lineage: Lineage, account: str) -> tuple[int, int, tuple[bytes, ...]]:
    """(largest cumulative amount, its round, its proof) among the verified rounds."""
    best = max(
        (
            (amounts[account], round)
            for round, amounts in lineage.rewards_at.items()
            if account in amounts
        ),
        default=None,
    )
    if best is None:
        return 0, 0, ()
    amount, round = best
    return amount, round, tuple(RewardTree.build(lineage.rewards_at[round]).proof(account))


def _sale_shares(ledger: Ledger, lineage: Lineage, account: str) -> tuple[SaleShare, ...]:
    shares = []
    offers = [ledger.listing(n) for n in ledger.listing_ids()]
    listed = {offer.round for offer in offers if offer.task == lineage.task}
    for round in sorted(listed):
        amounts = lineage.rewards_at.get(round, {})
        revenue, _ = ledger.sales_revenue(lineage.task, round)
        if revenue == 0 or account not in amounts:
            continue
        total = sum(amounts.values())
        shares.append(
            SaleShare(
                round=round,
                cumulative=amounts[account],
                proof=tuple(RewardTree.build(amounts).proof(account)),
                due=revenue * amounts[account] // total,
                claimed=ledger.sale_claimed(lineage.task, round, account),
            )
        )
    return tuple(shares)
