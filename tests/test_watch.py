"""A device watching its task's roots: it challenges a root that pays it less than an earlier
root or an acknowledgement, the aggregator answers what its trees can show, and a root left
unanswered is voided, all on anvil with the real publisher, ledger and store."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain_helpers import (
    CHALLENGE_WINDOW,
    MODEL_CID,
    RESPONSE_WINDOW,
    Chain,
    open_publisher,
    signed_receipt,
)
from eth_account.signers.local import LocalAccount

from fedmarket.device.acks import AckBook
from fedmarket.ledger.errors import TaskFrozen
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.publisher import RoundPublisher
from fedmarket.market.watch import Objection, watch
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

REWARD = 5
INITIAL = b"initial model"
DEVICES = (2, 3, 4)  # account indices; 0 is the sponsor, 1 the aggregator
VOIDED = "voided (the challenge went unanswered)"


@dataclass
class Task:
    """One task on the chain, its aggregator's publisher and each device's ack book."""

    chain: Chain
    task: TaskId
    folder: Path
    publisher: RoundPublisher
    books: dict[int, AckBook]
    model: bytes = INITIAL

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.folder / "store")

    def device(self, index: int) -> LocalAccount:
        return self.chain.accounts[index]

    def round(self, round_: int, devices: tuple[int, ...] = DEVICES) -> None:
        """The aggregator acknowledges ``devices``' uploads of ``round_`` (each device keeping
        its ack), then publishes the round paying them."""
        trained_from = self.publisher.trained_from(round_, self.model)
        receipts = [
            signed_receipt(self.chain, self.device(i), self.task, round_, trained_from)
            for i in devices
        ]
        acks = self.publisher.acknowledge(round_, receipts)
        deployment = self.chain.deployment
        for i in devices:
            ack, signature = acks[self.device(i).address]
            self.books[i].add(
                ack, signature, chain_id=deployment.chain_id, market=deployment.market
            )
        self.model = f"model after round {round_}".encode()
        self.publisher.publish(
            round_,
            model=self.model,
            trained_from=trained_from,
            survivors=[self.device(i).address for i in devices],
            receipts=receipts,
            evidence={},
        )

    def reopen(self) -> None:
        """The aggregator's server restarts on the same state file."""
        self.publisher = open_publisher(self.chain, self.task, self.folder)

    def watch(
        self, index: int, *, store: LocalStore | None = None, act: bool = True
    ) -> list[Objection]:
        return watch(
            self.chain.ledger(index),
            store or self.store,
            self.device(index).address,
            acks=self.books[index],
            tasks=[self.task],
            act=act,
        )


def new_task(chain: Chain, folder: Path) -> Task:
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=1_000,
        spec_cid=MODEL_CID,
    )
    books = {i: AckBook(folder / f"device-{i}", chain.accounts[i].address) for i in DEVICES}
    return Task(chain, task, folder, open_publisher(chain, task, folder), books)


def drop_from_state(t: Task, index: int) -> None:
    """The aggregator edits its publisher's state so that ``index`` was never paid, and
    restarts: the next round's root leaves the device out."""
    path = t.folder / "publisher.json"
    document = json.loads(path.read_text())
    del document["cumulative"][t.device(index).address]
    path.write_text(json.dumps(document))
    t.reopen()


# -- an honest aggregator ------------------------------------------------------------------------


def test_an_honest_aggregators_roots_raise_no_objection(chain: Chain, tmp_path: Path) -> None:
    t = new_task(chain, tmp_path)
    t.round(1)
    t.round(2, devices=(2, 3))  # device 4 sat this one out: it keeps its round-1 amount
    for index in DEVICES:
        assert t.watch(index) == []
    chain.finalize()
    t.round(3)

    for index in DEVICES:
        assert t.watch(index) == []

    assert chain.ledger(0).challenges_opened(t.task) == []
    assert t.publisher.answer_challenges() == []
    chain.finalize()
    for index, rounds in zip(DEVICES, (3, 3, 2), strict=True):
        device = chain.ledger(index)
        (owed,) = rewards_of(device, t.store, device.address, acks=t.books[index])
        assert (owed.earned, owed.round, owed.pending) == (rounds * REWARD, 3, 0)
        assert claim_all(device, [owed]) == {t.task: rounds * REWARD}


# -- a root that drops a device ------------------------------------------------------------------


def test_a_root_dropping_a_device_is_challenged_voided_and_the_earlier_root_still_pays(
    chain: Chain, tmp_path: Path
) -> None:
    """Round 1 pays devices 2, 3 and 4 and becomes final; round 2's root leaves device 4 out.
    Device 4 challenges it with its round-1 leaf (and devices 2 and 3, who cannot rebuild the
    root from the bundles, with their acks); the aggregator's publisher has no leaf to show;
    after the response window device 4 voids the root, the task freezes, and device 4 is still
    paid its round-1 amount, as is everyone else (round 2 pays nobody)."""
    t = new_task(chain, tmp_path)
    t.round(1)
    chain.finalize()
    drop_from_state(t, 4)
    t.round(2, devices=(2, 3))

    (objection,) = watch(chain.ledger(4), t.store, t.device(4).address)  # no acks: leaves only

    assert objection == Objection(t.task, 2, REWARD, None, "root of round 1", "challenged")
    challenge = chain.ledger(0).challenge_state(t.task, 2, t.device(4).address)
    assert challenge is not None
    assert (challenge.amount, challenge.open) == (REWARD, True)
    assert t.publisher.answer_challenges() == []  # its trees cannot show a leaf for 4
    (waiting,) = t.watch(4)
    assert waiting.action.startswith("waiting for the answer")
    # Devices 2 and 3 cannot rebuild round 2's root from its bundles either: they object too.
    for index in (2, 3):
        (other,) = t.watch(index)
        assert (other.round, other.owed, other.pays, other.action) == (
            2,
            2 * REWARD,
            None,
            "challenged",
        )
    assert t.publisher.answer_challenges() == []
    state = chain.ledger(0).round_state(t.task, 2)
    assert state is not None
    assert (state.open_challenges, state.final(chain.ledger(0).now())) == (3, False)

    chain.advance(RESPONSE_WINDOW + 1)
    (voided,) = t.watch(4)

    assert voided.action == VOIDED
    task = chain.ledger(0).task(t.task)
    assert task.frozen
    assert task.committed == 3 * REWARD  # back to round 1's total
    state = chain.ledger(0).round_state(t.task, 2)
    assert state is not None and state.voided
    for index in DEVICES:
        assert t.watch(index) == []  # nothing left to do: a voided root is done with
    with pytest.raises(TaskFrozen):
        t.round(3)
    for index in DEVICES:
        device = chain.ledger(index)
        (owed,) = rewards_of(device, t.store, device.address)
        assert (owed.earned, owed.round, owed.pending) == (REWARD, 1, 0)
        assert claim_all(device, [owed]) == {t.task: REWARD}
    assert chain.ledger(0).task(t.task).paid == 3 * REWARD


# -- a withheld bundle ---------------------------------------------------------------------------


def test_a_withheld_bundle_is_challenged_and_the_honest_aggregator_answers(
    chain: Chain, tmp_path: Path
) -> None:
    """Device 2 sees round 1's artifacts but not round 2's (the bundle never reached its
    store), so it cannot rebuild round 2's root and challenges it with its round-2 ack. The
    aggregator's publisher answers with device 2's leaf, and the root becomes final when its
    window ends."""
    t = new_task(chain, tmp_path)
    t.round(1)
    shutil.copytree(t.store.root, tmp_path / "device-store")  # everything up to round 1
    device_store = LocalStore(tmp_path / "device-store")
    t.round(2)

    (objection,) = t.watch(2, store=device_store)

    assert objection == Objection(t.task, 2, 2 * REWARD, None, "ack of round 2", "challenged")
    assert t.watch(3) == []  # a device that has the bundle finds the root right
    assert t.publisher.answer_challenges() == [(2, t.device(2).address)]
    challenge = chain.ledger(0).challenge_state(t.task, 2, t.device(2).address)
    assert challenge is not None
    assert (challenge.amount, challenge.open) == (2 * REWARD, False)
    (answered,) = t.watch(2, store=device_store)
    assert answered.action == "answered: the aggregator showed a leaf paying this much"
    assert chain.ledger(0).challenges_opened(t.task) == [(2, t.device(2).address)]  # once

    chain.finalize()

    ledger = chain.ledger(2)
    state = ledger.round_state(t.task, 2)
    assert state is not None and state.final(ledger.now())
    assert not ledger.task(t.task).frozen
    # Without the bundle the device relies on round 1 only; with it, it is paid round 2's leaf.
    (partial,) = rewards_of(ledger, device_store, ledger.address)
    assert (partial.earned, partial.round) == (REWARD, 1)
    (owed,) = rewards_of(ledger, t.store, ledger.address)
    assert (owed.earned, owed.round) == (2 * REWARD, 2)
    assert claim_all(ledger, [owed]) == {t.task: 2 * REWARD}


# -- act=False -----------------------------------------------------------------------------------


def test_watch_without_acting_only_reports(chain: Chain, tmp_path: Path) -> None:
    """With ``act=False`` watch sends nothing: it says a root is challengeable, then (once a
    challenge went unanswered) voidable, and after the challenge window too late."""
    t = new_task(chain, tmp_path)
    t.round(1)
    drop_from_state(t, 4)
    t.round(2, devices=(2, 3))
    device = chain.ledger(4)
    sent = chain.w3.eth.get_transaction_count(device.address)

    (report,) = t.watch(4, act=False)

    # The ack of round 1 and the round-1 leaf say the same; the first found is the leaf.
    assert (report.round, report.owed, report.pays, report.action) == (
        2,
        REWARD,
        None,
        "challengeable",
    )
    assert device.challenge_state(t.task, 2, device.address) is None
    assert t.watch(4)[0].action == "challenged"
    chain.advance(RESPONSE_WINDOW + 1)
    assert t.watch(4, act=False)[0].action == "voidable (the challenge went unanswered)"
    state = device.round_state(t.task, 2)
    assert state is not None and not state.voided
    assert chain.w3.eth.get_transaction_count(device.address) == sent + 1  # the challenge only
    assert t.watch(4)[0].action == VOIDED


def test_a_root_left_unwatched_past_its_window_is_too_late_to_challenge(
    chain: Chain, tmp_path: Path
) -> None:
    """The guarantee needs the device to look within the window: after it, watch reports the
    root and sends nothing, and the root pays what it says."""
    t = new_task(chain, tmp_path)
    t.round(1)
    drop_from_state(t, 4)
    t.round(2, devices=(2, 3))
    chain.advance(CHALLENGE_WINDOW)
    device = chain.ledger(4)
    sent = chain.w3.eth.get_transaction_count(device.address)

    (late,) = t.watch(4)

    assert late.action == "too late: the challenge window is over"
    assert chain.w3.eth.get_transaction_count(device.address) == sent
    state = device.round_state(t.task, 2)
    assert state is not None and state.final(device.now())
