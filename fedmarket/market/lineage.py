"""Verifying where a model came from: chain commits, stored artifacts, receipts and rewards.

:func:`verify_lineage` walks one task's rounds from the first up to a given round, and follows
that task only (a listing names its task and round, so another task committing the same model
cannot hijack the walk): each commit must match the contract's stored values; each bundle must
resolve in the store, verify block by block and belong to its round; every receipt must be
signed by its device, for that task and round, and name the previous round's model commitment
as the one it trained from; the rewards recomputed from the receipts (the task's reward per
update, per receipt, accumulated) must give exactly the committed Merkle root and total; and
each round's model ciphertext must be in the store. Given the decrypted model (a buyer, after
paying), it must open the last round's commitment. The first link that fails raises
:class:`~fedmarket.exceptions.LineageBroken` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedmarket.exceptions import LineageBroken, ReceiptInvalid, StoreError
from fedmarket.ledger.base import Ledger, RoundCommit
from fedmarket.market.bundle import ReceiptsBundle
from fedmarket.market.rewards import RewardTree
from fedmarket.market.sealed_models import SealedModel
from fedmarket.receipts import verify_receipt
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

MAX_BUNDLE_BYTES = 64 * 1024 * 1024  # ~100k receipts; a bigger "bundle" is refused unread


@dataclass(frozen=True)
class VerifiedRound:
    round: int
    model_commitment: bytes
    model_cid: str  # the model's ciphertext
    bundle_cid: str
    receipts: int
    cumulative_total: int


@dataclass(frozen=True)
class Lineage:
    task: TaskId
    round: int  # the last verified round
    model_commitment: bytes  # that round's model
    rounds: tuple[VerifiedRound, ...]
    devices: tuple[str, ...]  # every device paid along the way
    rewards: dict[str, int]  # cumulative reward per device at the last verified round
    rewards_at: dict[int, dict[str, int]]  # the same at every verified round
    epsilon: dict[str, float]  # each paid device's highest epsilon over its receipts
    delta: float | None  # the receipts' delta (None when nobody was paid)
    model_opened: bool  # whether a decrypted model was checked against the commitment


def verify_lineage(
    ledger: Ledger,
    store: ContentStore,
    task: TaskId,
    round: int | None = None,
    *,
    chain_id: int,
    market: str,
    model: SealedModel | None = None,
) -> Lineage:
    """Verify ``task``'s rounds up to ``round`` (default: the latest committed) and, given the
    decrypted ``model``, that it is the one that round committed; raise naming the first broken
    link."""
    ledger.task(task)  # an unknown task is bad input (InvalidInput), not a broken lineage
    history = ledger.round_commits(task)
    if round is not None:
        history = [c for c in history if c.round <= round]
    if not history or (round is not None and history[-1].round != round):
        what = f"round {round}" if round is not None else "round yet"
        raise LineageBroken(f"task {task} has no committed {what}")
    lineage = _verify(ledger, store, task, history, chain_id=chain_id, market=market)
    assert lineage is not None  # the history is not empty, and a broken round raised
    if model is None:
        return lineage
    if model.commitment != lineage.model_commitment:
        raise LineageBroken(
            f"task {task} round {lineage.round}: the decrypted model does not open the "
            f"committed 0x{lineage.model_commitment.hex()}; it is not the committed model"
        )
    return replace(lineage, model_opened=True)


def verify_task(
    ledger: Ledger, store: ContentStore, task: TaskId, *, chain_id: int, market: str
) -> Lineage:
    """Verify every committed round of ``task``: what a device checks before it claims."""
    return verify_lineage(ledger, store, task, chain_id=chain_id, market=market)


def verified_prefix(
    ledger: Ledger, store: ContentStore, task: TaskId, *, chain_id: int, market: str
) -> tuple[Lineage | None, str | None]:
    """``task``'s longest run of rounds, from the first, that verifies, and why the next round
    does not (None when all do): what a device watching the task can rely on."""
    ledger.task(task)
    history = ledger.round_commits(task)
    if not history:
        return None, None
    broken: list[str] = []
    lineage = _verify(ledger, store, task, history, chain_id=chain_id, market=market, broken=broken)
    return lineage, broken[0] if broken else None


def _verify(
    ledger: Ledger,
    store: ContentStore,
    task: TaskId,
    history: list[RoundCommit],
    *,
    chain_id: int,
    market: str,
    broken: list[str] | None = None,
) -> Lineage | None:
    """Verify ``history`` in order. With ``broken``, stop at the first round that fails, append
    why to ``broken`` and return the rounds before it (None if there are none) instead of
    raising."""
    reward = ledger.task(task).reward_per_update
    cumulative: dict[str, int] = {}
    rewards_at: dict[int, dict[str, int]] = {}
    epsilon: dict[str, float] = {}
    deltas: set[float] = set()
    verified: list[VerifiedRound] = []
    previous_model: bytes | None = None
    for commit in history:
        try:
            round_rewards = _verify_round(
                ledger,
                store,
                task,
                commit,
                previous_model,
                cumulative,
                reward,
                chain_id=chain_id,
                market=market,
            )
        except LineageBroken as exc:
            if broken is None:
                raise
            broken.append(str(exc))
            break
        bundle_size, round_epsilon, round_deltas = round_rewards
        # the highest, not the latest: after the owner declares new data, a device's epsilon
        # restarts, but the model still holds its earlier rounds' updates
        for device, spent in round_epsilon.items():
            epsilon[device] = max(spent, epsilon.get(device, 0.0))
        deltas.update(round_deltas)
        rewards_at[commit.round] = dict(cumulative)
        verified.append(
            VerifiedRound(
                commit.round,
                commit.model_commitment,
                commit.model_cid,
                commit.bundle_cid,
                bundle_size,
                commit.cumulative_total,
            )
        )
        previous_model = commit.model_commitment
    if not verified:
        return None
    last = verified[-1]
    return Lineage(
        task,
        last.round,
        last.model_commitment,
        tuple(verified),
        tuple(sorted(cumulative)),
        cumulative,
        rewards_at,
        epsilon,
        max(deltas) if deltas else None,  # the weakest guarantee, should devices differ
        model_opened=False,
    )


def _verify_round(
    ledger: Ledger,
    store: ContentStore,
    task: TaskId,
    commit: RoundCommit,
    previous_model: bytes | None,
    cumulative: dict[str, int],
    reward: int,
    *,
    chain_id: int,
    market: str,
) -> tuple[int, dict[str, float], set[float]]:
    """Check one round and add its rewards to ``cumulative`` (only if it verifies); return its
    receipt count, epsilons and deltas."""
    where = f"task {task} round {commit.round}"
    epsilon: dict[str, float] = {}
    deltas: set[float] = set()
    added = dict(cumulative)
    if not ledger.round_matches(commit):
        raise LineageBroken(f"{where}: the event does not match the contract's stored commit")
    bundle = _bundle(store, commit, where)
    if (bundle.task, bundle.round, bundle.chain_id) != (task, commit.round, chain_id) or (
        bundle.market.lower() != market.lower()
    ):
        raise LineageBroken(f"{where}: bundle {commit.bundle_cid} belongs to another round")
    if len({s.receipt.trained_from for s in bundle.receipts}) > 1:
        raise LineageBroken(f"{where}: receipts disagree on the model they trained from")
    for signed in bundle.receipts:
        receipt = signed.receipt
        try:
            verify_receipt(receipt, signed.signature, chain_id=chain_id, market=market)
        except ReceiptInvalid as exc:
            raise LineageBroken(f"{where}: receipt of {receipt.device}: {exc}") from None
        if (receipt.task, receipt.round) != (task, commit.round):
            raise LineageBroken(f"{where}: receipt of {receipt.device} names another round")
        if previous_model is not None and receipt.trained_from != previous_model:
            raise LineageBroken(
                f"{where}: {receipt.device} trained from 0x{receipt.trained_from.hex()}, "
                f"not from the previous round's model 0x{previous_model.hex()}"
            )
        added[receipt.device] = added.get(receipt.device, 0) + reward
        epsilon[receipt.device] = receipt.epsilon_micros / 1e6
        deltas.add(receipt.delta_e18 / 1e18)
    _check_rewards(added, commit, where)
    _check_stored(store, commit.model_cid, f"{where}: model ciphertext")
    cumulative.update(added)
    return len(bundle.receipts), epsilon, deltas


def _bundle(store: ContentStore, commit: RoundCommit, where: str) -> ReceiptsBundle:
    try:
        size = store.size(commit.bundle_cid)
        if size > MAX_BUNDLE_BYTES:
            raise LineageBroken(
                f"{where}: receipts bundle {commit.bundle_cid} is {size} bytes, above the "
                f"{MAX_BUNDLE_BYTES} a bundle may have"
            )
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
    except (StoreError, ValueError) as exc:  # ValueError: InvalidInput, junk where a CID belongs
        raise LineageBroken(f"{what} {cid}: {exc}") from None
