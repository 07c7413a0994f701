"""Verifying where a model came from: chain commits, stored artifacts, receipts and rewards.

Given a model CID, :func:`verify_lineage` finds the round that committed it and walks that
task's rounds from the first: each commit must match the contract's stored hash; each bundle
must resolve in the store, verify block by block and belong to its round; every receipt must be
signed by its device, for that task and round, and name the previous round's model as the one it
trained from; and the rewards recomputed from the receipts (the task's reward per update, per
receipt, accumulated) must give exactly the committed Merkle root and total. The first link
that fails raises :class:`~fedmarket.exceptions.LineageBroken` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmarket.exceptions import LineageBroken, ReceiptInvalid, StoreError
from fedmarket.ledger.base import Ledger, RoundCommit
from fedmarket.market.bundle import ReceiptsBundle
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import verify_receipt
from fedmarket.store.base import ContentStore
from fedmarket.store.cid import canonical, parse_cid
from fedmarket.types import TaskId


@dataclass(frozen=True)
class VerifiedRound:
    round: int
    model_cid: str
    bundle_cid: str
    receipts: int
    cumulative_total: int


@dataclass(frozen=True)
class Lineage:
    task: TaskId
    model_cid: str
    rounds: tuple[VerifiedRound, ...]
    devices: tuple[str, ...]  # every device paid along the way
    rewards: dict[str, int]  # cumulative reward per device at the last verified round
    epsilon: dict[str, float]  # each paid device's epsilon as its latest receipt states it
    delta: float | None  # the receipts' delta (None when nobody was paid)


def verify_lineage(
    ledger: Ledger, store: ContentStore, model_cid: str, *, chain_id: int, market: str
) -> Lineage:
    """Verify the whole history behind ``model_cid``; raise naming the first broken link."""
    wanted = canonical(parse_cid(model_cid))
    every = ledger.round_commits()  # one event scan serves both lookups
    commits = [c for c in every if c.model_cid == wanted]
    if not commits:
        raise LineageBroken(f"no round on this market committed model {wanted}")
    task = commits[0].task
    # A round that trained nobody keeps the model, so several rounds may commit it: take the last.
    last = max(c.round for c in commits if c.task == task)
    history = [c for c in every if c.task == task and c.round <= last]
    return _verify(ledger, store, task, wanted, history, chain_id=chain_id, market=market)


def verify_task(
    ledger: Ledger, store: ContentStore, task: TaskId, *, chain_id: int, market: str
) -> Lineage:
    """Verify every committed round of ``task``: what a device checks before it claims."""
    history = ledger.round_commits(task)
    if not history:
        raise LineageBroken(f"task {task} has no committed round yet")
    return _verify(
        ledger, store, task, history[-1].model_cid, history, chain_id=chain_id, market=market
    )


def _verify(
    ledger: Ledger,
    store: ContentStore,
    task: TaskId,
    wanted: str,
    history: list[RoundCommit],
    *,
    chain_id: int,
    market: str,
) -> Lineage:
    reward = ledger.task(task).reward_per_update
    cumulative: dict[str, int] = {}
    epsilon: dict[str, float] = {}
    deltas: set[float] = set()
    verified: list[VerifiedRound] = []
    previous_model: str | None = None
    for commit in history:
        where = f"task {task} round {commit.round}"
        if not ledger.round_matches(commit):
            raise LineageBroken(f"{where}: the event does not match the contract's stored commit")
        bundle = _bundle(store, commit, where)
        if (bundle.task, bundle.round, bundle.chain_id) != (task, commit.round, chain_id) or (
            bundle.market.lower() != market.lower()
        ):
            raise LineageBroken(f"{where}: bundle {commit.bundle_cid} belongs to another round")
        if len({s.receipt.model_cid for s in bundle.receipts}) > 1:
            raise LineageBroken(f"{where}: receipts disagree on the model they trained from")
        for signed in bundle.receipts:
            receipt = signed.receipt
            try:
                verify_receipt(receipt, signed.signature, chain_id=chain_id, market=market)
            except ReceiptInvalid as exc:
                raise LineageBroken(f"{where}: receipt of {receipt.device}: {exc}") from None
            if (receipt.task, receipt.round) != (task, commit.round):
                raise LineageBroken(f"{where}: receipt of {receipt.device} names another round")
            if previous_model is not None and receipt.model_cid != previous_model:
                raise LineageBroken(
                    f"{where}: {receipt.device} trained from {receipt.model_cid}, not from "
                    f"round {commit.round - 1}'s model {previous_model}"
                )
            cumulative[receipt.device] = cumulative.get(receipt.device, 0) + reward
            epsilon[receipt.device] = receipt.epsilon_micros / 1e6
            deltas.add(receipt.delta_e18 / 1e18)
        _check_rewards(cumulative, commit, where)
        _check_stored(store, commit.model_cid, f"{where}: model")
        verified.append(
            VerifiedRound(
                commit.round,
                commit.model_cid,
                commit.bundle_cid,
                len(bundle.receipts),
                commit.cumulative_total,
            )
        )
        previous_model = commit.model_cid
    return Lineage(
        task,
        wanted,
        tuple(verified),
        tuple(sorted(cumulative)),
        cumulative,
        epsilon,
        max(deltas) if deltas else None,  # the weakest guarantee, should devices differ
    )


def _bundle(store: ContentStore, commit: RoundCommit, where: str) -> ReceiptsBundle:
    try:
        return ReceiptsBundle.from_bytes(store.get_bytes(commit.bundle_cid))
    except StoreError as exc:
        raise LineageBroken(f"{where}: receipts bundle {commit.bundle_cid}: {exc}") from None
    except ValueError as exc:  # DataError: not a bundle
        raise LineageBroken(
            f"{where}: {commit.bundle_cid} is not a receipts bundle: {exc}"
        ) from None


def _check_rewards(cumulative: dict[str, int], commit: RoundCommit, where: str) -> None:
    root = RewardTree.build(cumulative).root if cumulative else bytes(32)
    total = sum(cumulative.values())
    if root != commit.rewards_root or total != commit.cumulative_total:
        raise LineageBroken(
            f"{where}: the rewards recomputed from the receipts (total {total}, root "
            f"0x{root.hex()}) differ from the committed ones (total {commit.cumulative_total}, "
            f"root 0x{commit.rewards_root.hex()})"
        )


def _check_stored(store: ContentStore, cid: str, what: str) -> None:
    try:
        store.verify(cid)
    except StoreError as exc:
        raise LineageBroken(f"{what} {cid}: {exc}") from None
