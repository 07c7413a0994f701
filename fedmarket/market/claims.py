"""A device's rewards, rebuilt from the chain and the store, and claimed in one transaction.

A device needs nobody's word for what it is owed: the committed rounds name their receipts
bundles, the bundles hold the paid receipts, and the reward tree rebuilt from them must give the
committed root (:func:`~fedmarket.market.lineage.verify_task` checks every link). The device then
claims its cumulative amount with its own Merkle proof; the contract pays what was not claimed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from fedmarket.ledger.base import Ledger
from fedmarket.market.lineage import verify_task
from fedmarket.market.rewards import RewardTree
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId


@dataclass(frozen=True)
class Rewards:
    """One account's rewards in one task (token base units)."""

    task: TaskId
    account: str
    earned: int  # cumulative, as committed at the task's latest round
    claimed: int
    rounds: int  # rounds in which the account was paid
    proof: tuple[bytes, ...]

    @property
    def claimable(self) -> int:
        return self.earned - self.claimed


def rewards_of(
    ledger: Ledger,
    store: ContentStore,
    account: str,
    *,
    chain_id: int,
    market: str,
    tasks: Iterable[TaskId] | None = None,
) -> list[Rewards]:
    """``account``'s rewards in ``tasks`` (default: every task with a committed round)."""
    account = to_checksum_address(account)
    if tasks is None:
        tasks = sorted({c.task for c in ledger.round_commits()})
    found = []
    for task in tasks:
        lineage = verify_task(ledger, store, task, chain_id=chain_id, market=market)
        earned = lineage.rewards.get(account)
        if earned is None:
            continue
        tree = RewardTree.build(lineage.rewards)
        reward = ledger.task(task).reward_per_update
        found.append(
            Rewards(
                task=task,
                account=account,
                earned=earned,
                claimed=ledger.claimed(task, account),
                rounds=earned // reward if reward else 0,
                proof=tuple(tree.proof(account)),
            )
        )
    return found


def claim_all(ledger: Ledger, rewards: Iterable[Rewards]) -> dict[TaskId, int]:
    """Claim every task with something claimable, one transaction per task; return the paid."""
    paid = {}
    for r in rewards:
        if r.claimable > 0:
            paid[r.task] = ledger.claim(r.task, r.account, r.earned, list(r.proof))
    return paid
