"""Publishing a round: acknowledge uploads, store the round's artifacts and commit it, exactly once.

During a round the publisher acknowledges every upload with a valid receipt (signed by its
device, for this task and round): it signs an :class:`~fedmarket.acks.Ack` with the device's
cumulative reward once the round is paid, writing it down before it is sent. When the round
ends it pays exactly the acknowledged devices (and any other valid survivor receipt it is
given) the task's reward per update, stores the model *encrypted* (its plaintext is never at a
public CID; see :mod:`fedmarket.market.sealed_models`), the receipts bundle and the round's
evidence, and commits ``(model commitment, model ciphertext, bundle, rewards root, cumulative
total)`` on chain. Since the tree pays every ack, an honest publisher's acks are never needed on
chain; they protect devices from a publisher that would leave them out.

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

from fedmarket.acks import Ack
from fedmarket.exceptions import (
    ChainUnavailable,
    DataError,
    InvalidInput,
    ReceiptInvalid,
)
from fedmarket.files import atomic_write
from fedmarket.ledger.base import Ledger
from fedmarket.market.bundle import ReceiptsBundle, SignedReceipt, canonical_json
from fedmarket.market.lineage import verified_prefix
from fedmarket.market.rewards import Proof, RewardTree
from fedmarket.market.sealed_models import SealedModel, TaskSecret
from fedmarket.market.terms import MarketTerms
from fedmarket.receipts import verify_receipt
from fedmarket.store.base import ContentStore
from fedmarket.types import TaskId

_STATE_VERSION = 2
_T = TypeVar("_T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedRound:
    round: int
    model_commitment: str  # hex
    model_cid: str  # the model's ciphertext
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
    # Acks sent for rounds not committed yet: round -> device -> {receipt, ack}. Written before
    # the acks are sent, so a restarted server still pays every upload it acknowledged.
    acked: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # The model commitment each uncommitted round's devices were sent (hex), by round.
    offered: dict[str, str] = field(default_factory=dict)


class RoundPublisher:
    """Acknowledges, stores and commits the rounds of one task; its state file makes it
    crash-safe. The task secret (``secret_path``, default beside the state file, 0600) seals
    every round's model."""

    def __init__(
        self,
        *,
        store: ContentStore,
        ledger: Ledger,
        task: TaskId,
        chain_id: int,
        market: str,
        state_path: Path,
        secret_path: Path | None = None,
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
        secret_path = secret_path or default_secret_path(state_path)
        if self._state.rounds and not secret_path.exists():
            raise DataError(
                f"{secret_path} is missing, but {state_path} has committed rounds: their models "
                "are encrypted under it; restore it from a backup (a new one cannot open them)"
            )
        self.secret = TaskSecret.load_or_create(secret_path)
        if self._state.pending is not None:
            self._commit_pending()

    # -- what is known -------------------------------------------------------------------------

    @property
    def terms(self) -> MarketTerms:
        """The market terms the task's rounds carry to the devices."""
        s = self._state
        return MarketTerms(s.task, s.chain_id, s.market, self.ledger.address)

    @property
    def rounds(self) -> list[PublishedRound]:
        return list(self._state.rounds)

    @property
    def next_round(self) -> int:
        return self._state.rounds[-1].round + 1 if self._state.rounds else 1

    @property
    def cumulative(self) -> dict[str, int]:
        return dict(self._state.cumulative)

    def claim_for(self, account: str) -> tuple[int, Proof]:
        """The cumulative amount and Merkle-sum proof ``account`` claims with (latest round)."""
        tree = RewardTree.build(self._state.cumulative)
        return tree.amounts[account], tree.proof(account)

    def answer_challenges(self) -> list[tuple[int, str]]:
        """Answer every open challenge of this task's roots that the committed trees can answer
        (a leaf paying the challenger at least what it names); return the (round, account)
        answered. A challenge the trees cannot answer is logged and left: the chain will void
        that root."""
        task = TaskId(self._state.task)
        now = self.ledger.now()
        answered: list[tuple[int, str]] = []
        trees: dict[int, RewardTree] | None = None  # rebuilt once, when a challenge is open
        for round, account in sorted(set(self.ledger.challenges_opened(task))):
            challenge = self.ledger.challenge_state(task, round, account)
            if challenge is None or not challenge.open or now > challenge.deadline:
                continue
            trees = self._committed_trees() if trees is None else trees
            tree = trees.get(round)
            amount = tree.amounts.get(account, 0) if tree else 0
            if tree is None or amount < challenge.amount:
                log.error(
                    "task %d round %d: cannot answer %s's challenge for %d (the root pays %d)",
                    task,
                    round,
                    account,
                    challenge.amount,
                    amount,
                )
                continue
            proof = tree.proof(account)
            self._retrying(
                f"answer {account}'s challenge of round {round}",
                lambda: self.ledger.answer(task, round, account, amount, proof),  # noqa: B023
            )
            answered.append((round, account))
        return answered

    def _committed_trees(self) -> dict[int, RewardTree]:
        """The reward tree of every committed round whose lineage verifies, rebuilt from the
        stored receipts bundles in one walk of the task."""
        s = self._state
        lineage, broken = verified_prefix(
            self.ledger, self.store, TaskId(s.task), chain_id=s.chain_id, market=s.market
        )
        if broken:
            log.error("task %d: %s", s.task, broken)
        rewards = lineage.rewards_at if lineage else {}
        return {round: RewardTree.build(amounts) for round, amounts in rewards.items() if amounts}

    def trained_from(self, round: int, model: bytes) -> bytes:
        """The commitment devices sign as the model they train from in ``round``: that of
        ``model`` as the global model after round ``round - 1`` (0: the initial model). Only
        receipts naming it are acknowledged for ``round``."""
        commitment = self.secret.seal(round - 1, model).commitment
        self._state.offered[str(round)] = commitment.hex()
        return commitment

    def model_salt(self, round: int) -> bytes:
        """The salt of :meth:`trained_from`'s commitment, sent to the round's devices so that
        they can check it against the model they receive (they hold that model anyway)."""
        return self.secret.salt(round - 1)

    def sealed_model(self, round: int) -> SealedModel:
        """The decrypted model of committed ``round``, with its commitment's salt."""
        return _open_round(self._state, self.secret, self.store, round)

    # -- acknowledging -------------------------------------------------------------------------

    def acknowledge(
        self, round: int, receipts: Iterable[SignedReceipt]
    ) -> dict[str, tuple[Ack, bytes]]:
        """Sign an acknowledgement for each valid receipt of ``round`` (one per device); return
        them by device. They are written down before they are returned, and the round, once
        published, pays every device acknowledged for it."""
        if round < self.next_round:
            raise InvalidInput(f"round {round} of task {self._state.task} is already committed")
        acked = self._state.acked.setdefault(str(round), {})
        fresh = [s for s in receipts if s.receipt.device not in acked]
        # Every receipt of a round must name the model its devices were sent, or the round's
        # bundle would break the task's lineage for everyone.
        offered = self._state.offered.get(str(round))
        if offered is None:
            offered = next(
                (entry["receipt"]["trained_from"] for entry in acked.values()),
                fresh[0].receipt.trained_from.hex() if fresh else None,
            )
        expected = bytes.fromhex(offered) if offered is not None else None
        valid, rejected = self._valid(round, expected, None, fresh)
        for device, why in rejected.items():
            log.warning("round %d: not acknowledging %s: %s", round, device, why)
        escrow = self._retrying(
            "read the task's escrow", lambda: self.ledger.task(TaskId(self._state.task))
        ).escrow
        reward = self._state.reward_per_update
        promised = sum(self._state.cumulative.values()) + reward * len(acked)
        for signed in valid:
            if promised + reward > escrow:
                log.warning(
                    "round %d: escrow %d exhausted; %s not acknowledged",
                    round,
                    escrow,
                    signed.receipt.device,
                )
                continue
            promised += reward
            device = signed.receipt.device
            ack = Ack(
                task=self._state.task,
                round=round,
                device=device,
                upload_digest=signed.receipt.upload_digest,
                cumulative_amount=self._state.cumulative.get(device, 0) + reward,
            )
            acked[device] = {
                "receipt": signed.to_json(),
                "ack": ack.to_json(),
                "signature": self.ledger.sign_ack(ack).hex(),
            }
        self._save()  # written down before any ack leaves
        return {
            device: (Ack.from_json(entry["ack"]), bytes.fromhex(entry["signature"]))
            for device, entry in acked.items()
        }

    # -- publishing ----------------------------------------------------------------------------

    def publish(
        self,
        round: int,
        *,
        model: bytes,
        trained_from: bytes,
        survivors: Iterable[str],
        receipts: Iterable[SignedReceipt],
        evidence: Mapping[str, Any],
        transcript: Mapping[str, Any] | None = None,
    ) -> PublishedRound:
        """Store and commit one round; return what was committed.

        Pays every device acknowledged for ``round`` plus the valid ``receipts`` of
        ``survivors``; ``model`` is the global model after the round (safetensors);
        ``transcript`` (SecAgg+, JSON) goes into the committed receipts bundle."""
        if round < self.next_round:
            raise InvalidInput(
                f"round {round} of task {self._state.task} is already committed; "
                f"the next round is {self.next_round}"
            )
        offered = self._state.offered.get(str(round))
        if offered is not None and offered != trained_from.hex():
            raise InvalidInput(
                f"round {round}'s devices were sent model 0x{offered}, not 0x{trained_from.hex()}"
            )
        acked = self._state.acked.get(str(round), {})
        paid = [SignedReceipt.from_json(entry["receipt"]) for entry in acked.values()]
        others = [s for s in receipts if s.receipt.device not in acked]
        more, rejected = self._valid(round, trained_from, set(survivors), others)
        paid += more
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
            self._state.task,
            round,
            self._state.chain_id,
            self._state.market,
            tuple(paid),
            dict(transcript) if transcript is not None else None,
        )
        ciphertext, commitment = self.secret.encrypt(round, model)
        model_cid = self.store.put_bytes(ciphertext)
        bundle_cid = self.store.put_bytes(bundle.to_bytes())
        root = tree.root if tree else bytes(32)
        evidence_cid = self.store.put_bytes(
            canonical_json(
                {
                    **evidence,
                    "task": self._state.task,
                    "round": round,
                    "trained_from": trained_from.hex(),
                    "model_commitment": commitment.hex(),
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
            model_commitment=commitment.hex(),
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
        self.answer_challenges()  # a running server answers devices' challenges as it goes
        return published

    def _valid(
        self,
        round: int,
        trained_from: bytes | None,
        survivors: set[str] | None,
        receipts: Iterable[SignedReceipt],
    ) -> tuple[list[SignedReceipt], dict[str, str]]:
        """Valid receipts of ``round`` (from ``survivors``, trained from ``trained_from``; None:
        any) at one per device, and why each other one was rejected."""
        paid: dict[str, SignedReceipt] = {}
        rejected: dict[str, str] = {}
        for signed in receipts:
            r = signed.receipt
            why = None
            if survivors is not None and r.device not in survivors:
                why = "not in the secure-aggregation sum (dropped or declined)"
            elif (r.task, r.round) != (self._state.task, round) or (
                trained_from is not None and r.trained_from != trained_from
            ):
                why = f"receipt is for task {r.task} round {r.round} model 0x{r.trained_from.hex()}"
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
                model_commitment=bytes.fromhex(published.model_commitment),
                model_cid=published.model_cid,
                bundle_cid=published.bundle_cid,
                rewards_root=bytes.fromhex(published.rewards_root),
                cumulative_total=published.cumulative_total,
            ),
        )
        self._state.rounds.append(published)
        self._state.cumulative = dict(pending["cumulative"])
        self._state.acked.pop(str(published.round), None)
        self._state.offered.pop(str(published.round), None)
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


def default_secret_path(state_path: Path) -> Path:
    """Where a publisher keeps its task secret: beside its state file."""
    return state_path.with_name(state_path.stem + ".secret")


def stored_model(
    state_path: Path, store: ContentStore, round: int | None = None
) -> tuple[int, SealedModel]:
    """(round, decrypted model) of committed ``round`` (default: the last) from a publisher's
    state and task secret, without the chain: what its aggregator lists for sale."""
    state = RoundPublisher.read_state(state_path)
    if state is None or not state.rounds:
        raise InvalidInput(f"{state_path} holds no committed round; run the task's rounds first")
    wanted = state.rounds[-1].round if round is None else round
    secret = TaskSecret.load(default_secret_path(state_path))
    return wanted, _open_round(state, secret, store, wanted)


def _open_round(
    state: PublisherState, secret: TaskSecret, store: ContentStore, round: int
) -> SealedModel:
    for published in state.rounds:
        if published.round == round:
            sealed = secret.decrypt(round, store.get_bytes(published.model_cid))
            sealed.check(bytes.fromhex(published.model_commitment), what=f"round {round}")
            return sealed
    raise InvalidInput(f"task {state.task} has no committed round {round} here")
