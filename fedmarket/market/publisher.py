"""Publishing a round: store its artifacts by CID and commit it on chain, exactly once.

For each round the publisher keeps only receipts that are valid (signed by their device, for
this task, round and model) from devices that survived secure aggregation, credits each such
device the task's reward per update, stores the model, the receipts bundle and the round's
evidence, and commits ``(model, bundle, rewards root, cumulative total)`` on chain.

Crash safety: the commit it is about to send is written to the state file (atomically) before it
is sent, and the round counts as done only after the chain has it. A publisher opened on a state
file with a pending commit re-sends that same commit first; ``commit_round`` sends nothing when
the chain already holds it. So a server killed at any point resumes without committing a round
twice or crediting an update twice. While the chain's RPC endpoint is unreachable the publisher
retries with exponential backoff (up to ``retry_for`` seconds) instead of giving the round up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedmarket.exceptions import ChainUnavailable, DataError, InvalidInput, ReceiptInvalid
from fedmarket.files import atomic_write
from fedmarket.ledger.base import Ledger
from fedmarket.market.bundle import ReceiptsBundle, SignedReceipt, canonical_json
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import verify_receipt
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

_STATE_VERSION = 1
_T = TypeVar("_T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedRound:
    round: int
    model_cid: str
    bundle_cid: str
    evidence_cid: str
    rewards_root: str  # hex
    cumulative_total: int
    paid: tuple[str, ...]
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class PublisherState:
    task: int
    chain_id: int
    market: str
    reward_per_update: int
    cumulative: dict[str, int] = field(default_factory=dict)
    rounds: list[PublishedRound] = field(default_factory=list)
    pending: dict[str, Any] | None = None  # a commit written down but not yet known on chain


class RoundPublisher:
    """Stores and commits the rounds of one task; its state file makes it crash-safe."""

    def __init__(
        self,
        *,
        store: ContentStore,
        ledger: Ledger,
        task: TaskId,
        chain_id: int,
        market: str,
        state_path: Path,
        retry_for: float = 300.0,
    ) -> None:
        if retry_for < 0:
            raise InvalidInput(f"retry_for must be >= 0 seconds, got {retry_for}")
        self.store = store
        self.ledger = ledger
        self.state_path = state_path
        self.retry_for = retry_for
        on_chain = self._retrying("read the task", lambda: ledger.task(task))
        if on_chain.aggregator != ledger.address:
            raise InvalidInput(
                f"task {task}'s aggregator is {on_chain.aggregator}, not this key "
                f"{ledger.address}; publish with the aggregator's key"
            )
        self._state = self.read_state(state_path) or PublisherState(
            task=task,
            chain_id=chain_id,
            market=market,
            reward_per_update=on_chain.reward_per_update,
        )
        if self._state.task != task or self._state.market != market:
            raise DataError(
                f"{state_path} belongs to task {self._state.task} on {self._state.market}, "
                f"not task {task} on {market}; use another state file"
            )
        if self._state.pending is not None:
            self._commit_pending()

    # -- what is known -------------------------------------------------------------------------

    @property
    def rounds(self) -> list[PublishedRound]:
        return list(self._state.rounds)

    @property
    def next_round(self) -> int:
        return self._state.rounds[-1].round + 1 if self._state.rounds else 1

    @property
    def cumulative(self) -> dict[str, int]:
        return dict(self._state.cumulative)

    def claim_for(self, account: str) -> tuple[int, list[bytes]]:
        """The cumulative amount and Merkle proof ``account`` claims with (latest round)."""
        tree = RewardTree.build(self._state.cumulative)
        return tree.amounts[account], tree.proof(account)

    # -- publishing ----------------------------------------------------------------------------

    def publish(
        self,
        round: int,
        *,
        model: bytes,
        trained_from: str,
        survivors: Iterable[str],
        receipts: Iterable[SignedReceipt],
        evidence: Mapping[str, Any],
    ) -> PublishedRound:
        """Store and commit one round; return what was committed."""
        if round < self.next_round:
            raise InvalidInput(
                f"round {round} of task {self._state.task} is already committed; "
                f"the next round is {self.next_round}"
            )
        paid, rejected = self._valid(round, trained_from, set(survivors), receipts)
        cumulative = dict(self._state.cumulative)
        for signed in paid:
            device = signed.receipt.device
            cumulative[device] = cumulative.get(device, 0) + self._state.reward_per_update
        tree = RewardTree.build(cumulative) if cumulative else None
        total = tree.total if tree else 0
        escrow = self._retrying(
            "read the task's escrow", lambda: self.ledger.task(TaskId(self._state.task))
        ).escrow
        if total > escrow:
            raise InvalidInput(
                f"task {self._state.task}: paying round {round} would bring rewards to {total}, "
                f"above the escrow {escrow}; the sponsor must fund the task first"
            )
        bundle = ReceiptsBundle(
            self._state.task, round, self._state.chain_id, self._state.market, tuple(paid)
        )
        model_cid = self.store.put_bytes(model)
        bundle_cid = self.store.put_bytes(bundle.to_bytes())
        root = tree.root if tree else bytes(32)
        evidence_cid = self.store.put_bytes(
            canonical_json(
                {
                    **evidence,
                    "task": self._state.task,
                    "round": round,
                    "trained_from": trained_from,
                    "model_cid": model_cid,
                    "bundle_cid": bundle_cid,
                    "paid": sorted(s.receipt.device for s in paid),
                    "rejected": rejected,
                    "rewards_root": root.hex(),
                    # Decimal text: token amounts exceed canonical JSON's 2**53 integer range.
                    "cumulative_total": str(total),
                }
            )
        )
        published = PublishedRound(
            round=round,
            model_cid=model_cid,
            bundle_cid=bundle_cid,
            evidence_cid=evidence_cid,
            rewards_root=root.hex(),
            cumulative_total=total,
            paid=tuple(sorted(s.receipt.device for s in paid)),
            rejected=rejected,
        )
        self._state.pending = {"round": asdict(published), "cumulative": cumulative}
        self._save()  # written down before it is sent
        self._commit_pending()
        return published

    def _valid(
        self,
        round: int,
        trained_from: str,
        survivors: set[str],
        receipts: Iterable[SignedReceipt],
    ) -> tuple[list[SignedReceipt], dict[str, str]]:
        paid: dict[str, SignedReceipt] = {}
        rejected: dict[str, str] = {}
        for signed in receipts:
            r = signed.receipt
            why = None
            if r.device not in survivors:
                why = "not in the secure-aggregation sum (dropped or declined)"
            elif (r.task, r.round, r.model_cid) != (self._state.task, round, trained_from):
                why = f"receipt is for task {r.task} round {r.round} model {r.model_cid}"
            elif r.device in paid:
                why = "second receipt for the same round"
            else:
                try:
                    verify_receipt(
                        r,
                        signed.signature,
                        chain_id=self._state.chain_id,
                        market=self._state.market,
                    )
                except ReceiptInvalid as exc:
                    why = str(exc)
            if why is None:
                paid[r.device] = signed
            else:
                rejected[r.device] = why
        return list(paid.values()), rejected

    def _commit_pending(self) -> None:
        pending = self._state.pending
        assert pending is not None  # callers check
        published = PublishedRound(**{**pending["round"], "paid": tuple(pending["round"]["paid"])})
        self._retrying(
            f"commit round {published.round}",
            lambda: self.ledger.commit_round(  # idempotent: a retry never commits twice
                TaskId(self._state.task),
                published.round,
                model_cid=published.model_cid,
                bundle_cid=published.bundle_cid,
                rewards_root=bytes.fromhex(published.rewards_root),
                cumulative_total=published.cumulative_total,
            ),
        )
        self._state.rounds.append(published)
        self._state.cumulative = dict(pending["cumulative"])
        self._state.pending = None
        self._save()

    def _retrying(self, what: str, call: Callable[[], _T]) -> _T:
        """``call()``, retried with exponential backoff while the chain is unreachable."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.5
        while True:
            try:
                return call()
            except ChainUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("could not %s (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)
                delay = min(2 * delay, 30.0)

    # -- state file ----------------------------------------------------------------------------

    def _save(self) -> None:
        document = {"version": _STATE_VERSION, **asdict(self._state)}
        text = json.dumps(document, indent=1, sort_keys=True).encode()
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, lambda out: out.write(text))

    @staticmethod
    def read_state(path: Path) -> PublisherState | None:
        """A publisher's state file (None if there is none yet), without touching the chain."""
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise DataError(f"{path} is not a publisher state file ({exc})") from None
        if document.pop("version", None) != _STATE_VERSION:
            raise DataError(f"{path} has an unknown state version")
        rounds = [PublishedRound(**{**r, "paid": tuple(r["paid"])}) for r in document.pop("rounds")]
        return PublisherState(**document, rounds=rounds)
