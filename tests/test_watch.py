"""A device watching its task's roots: it challenges a root that pays it less than an earlier
root or an acknowledgement, the aggregator answers what its trees can show, and a root left
unanswered is voided, all on anvil with the real publisher, ledger and store."""

from __future__ import annotations

import contextlib
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
    commit,
    open_publisher,
    signed_receipt,
)
from eth_account.signers.local import LocalAccount

from fedmarket.acks import Ack
from fedmarket.device.acks import AckBook
from fedmarket.ledger.errors import AnswerTooLow, RoundIsVoided, TaskFrozen
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.publisher import RoundPublisher
from fedmarket.market.rewards import RewardTree
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


def new_task(chain: Chain, folder: Path, budget: int = 1_000) -> Task:
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=budget,
        spec_cid=MODEL_CID,
    )
    books = {i: AckBook(folder / f"device-{i}", chain.accounts[i].address) for i in range(2, 8)}
    return Task(chain, task, folder, open_publisher(chain, task, folder), books)


def withheld_after(t: Task, round_: int) -> LocalStore:
    """A device's store holding the task's artifacts up to ``round_`` only: what it has when
    the later bundles never reach it."""
    assert t.publisher.rounds[-1].round == round_
    shutil.copytree(t.store.root, t.folder / "device-store")
    return LocalStore(t.folder / "device-store")


def actions(objections: list[Objection]) -> dict[str, str]:
    """What watch did about each account, by account (one root at a time)."""
    assert len({(o.task, o.round) for o in objections}) <= 1, objections
    return {o.account: o.action for o in objections}


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
    """Round 1 pays devices 2, 3 and 4 and becomes final; round 2's root leaves device 4 out,
    so no bundle explains it. Device 4's watch challenges it for every account with a round-1
    leaf; the aggregator's publisher has no leaf to show; after the response window device 4
    voids the root, the task freezes, and every device is still paid its round-1 amount."""
    t = new_task(chain, tmp_path)
    t.round(1)
    chain.finalize()
    drop_from_state(t, 4)
    t.round(2, devices=(2, 3))
    everyone = [t.device(i).address for i in DEVICES]

    objections = watch(chain.ledger(4), t.store, t.device(4).address)  # no acks: leaves only

    device = t.device(4).address
    assert Objection(t.task, 2, device, REWARD, None, "root of round 1", "challenged") in objections
    assert actions(objections) == dict.fromkeys(everyone, "challenged")
    challenge = chain.ledger(0).challenge_state(t.task, 2, device)
    assert challenge is not None
    assert (challenge.amount, challenge.open) == (REWARD, True)
    assert t.publisher.answer_challenges() == []  # its trees cannot show round 2's leaves
    for index in DEVICES:  # a device whose ack says more raises its challenge to it ...
        first = actions(t.watch(index)).values()
        assert all(a.startswith("waiting for the answer") or a == "challenge raised" for a in first)
    for index in DEVICES:  # ... then every watcher waits for the answers
        assert all(a.startswith("waiting for the answer") for a in actions(t.watch(index)).values())
    state = chain.ledger(0).round_state(t.task, 2)
    assert state is not None
    assert (state.open_challenges, state.final(chain.ledger(0).now())) == (3, False)

    chain.advance(RESPONSE_WINDOW + 1)
    voided = t.watch(4)

    assert VOIDED in actions(voided).values()
    task = chain.ledger(0).task(t.task)
    assert task.frozen
    assert task.committed == 3 * REWARD  # back to round 1's total
    state = chain.ledger(0).round_state(t.task, 2)
    assert state is not None
    assert state.voided
    for index in DEVICES:
        assert t.watch(index) == []  # nothing left to do: a voided root is done with
    with pytest.raises(TaskFrozen):
        t.round(3)
    for index in DEVICES:
        device_ledger = chain.ledger(index)
        (owed,) = rewards_of(device_ledger, t.store, device_ledger.address)
        assert (owed.earned, owed.round, owed.pending) == (REWARD, 1, 0)
        assert claim_all(device_ledger, [owed]) == {t.task: REWARD}
    assert chain.ledger(0).task(t.task).paid == 3 * REWARD


def test_a_root_that_cannot_be_rebuilt_is_challenged_for_every_earlier_account(
    chain: Chain, tmp_path: Path
) -> None:
    """Budget 20. Rounds 1-3 are published honestly: Sybil 5 is paid in each (15), device 4 in
    round 1 (5). The aggregator then commits a round 4 no bundle explains, paying Sybils 6
    and 7 15 between them and device 4 its 5, and answers for device 4 only. Sybil 5 never
    complains, but device 4's watch challenged round 4 for it too: the root is voided, so the
    Sybils cannot claim from both roots ahead of device 4."""
    t = new_task(chain, tmp_path, budget=4 * REWARD)
    sybil, device = t.device(5).address, t.device(4).address
    t.round(1, devices=(4, 5))
    t.round(2, devices=(5,))
    t.round(3, devices=(5,))
    fourth = RewardTree.build(
        {t.device(6).address: REWARD, t.device(7).address: 2 * REWARD, device: REWARD}
    )
    commit(chain.ledger(1), t.task, 4, fourth)

    assert actions(t.watch(4)) == {sybil: "challenged", device: "challenged"}

    chain.ledger(1).answer(t.task, 4, device, REWARD, fourth.proof(device))
    chain.advance(RESPONSE_WINDOW + 1)
    assert VOIDED in actions(t.watch(4)).values()
    chain.finalize()
    third = RewardTree.build({sybil: 3 * REWARD, device: REWARD})
    assert chain.ledger(5).claim(t.task, 3, sybil, 3 * REWARD, third.proof(sybil)) == 15
    with pytest.raises(RoundIsVoided):
        chain.ledger(6).claim(
            t.task, 4, t.device(6).address, REWARD, fourth.proof(t.device(6).address)
        )
    ledger = chain.ledger(4)
    (owed,) = rewards_of(ledger, t.store, device)
    assert claim_all(ledger, [owed]) == {t.task: REWARD}


def test_an_absurd_ack_is_ignored_and_a_valid_one_still_challenges(
    chain: Chain, tmp_path: Path
) -> None:
    """A hostile aggregator acknowledges 5 to device 4 for round 1 and 2**128 (more than any
    escrow holds; the contract refuses it) for round 2, then commits a round 2 that pays it
    nothing: the round-1 ack challenges it."""
    aggregator = chain.ledger(1)
    task = chain.ledger(0).create_task(
        aggregator=aggregator.address, reward_per_update=1, budget=100, spec_cid=MODEL_CID
    )
    device = chain.ledger(4)
    book = AckBook(tmp_path / "device-4", device.address)
    where = {"chain_id": chain.deployment.chain_id, "market": chain.deployment.market}
    for round_, amount in ((1, 5), (2, 2**128)):
        ack = Ack(task, round_, device.address, bytes(32), amount)
        book.add(ack, aggregator.sign_ack(ack), **where)
    commit(aggregator, task, 2, RewardTree.build({chain.accounts[5].address: 60}))

    (objection,) = watch(device, LocalStore(tmp_path / "store"), device.address, acks=book)

    assert (objection.owed, objection.evidence, objection.action) == (
        5,
        "ack of round 1",
        "challenged",
    )
    challenge = device.challenge_state(task, 2, device.address)
    assert challenge is not None
    assert (challenge.amount, challenge.open) == (5, True)


# -- a withheld bundle ---------------------------------------------------------------------------


def test_a_withheld_bundle_is_challenged_and_the_honest_aggregator_answers(
    chain: Chain, tmp_path: Path
) -> None:
    """Device 2 sees round 1's artifacts but not round 2's (the bundle never reached its
    store), so it cannot rebuild round 2's root: it challenges it for every account with a
    round-1 leaf, itself with its round-2 ack. The aggregator's publisher answers each with
    the account's leaf, and the root becomes final when its window ends."""
    t = new_task(chain, tmp_path)
    t.round(1)
    device_store = withheld_after(t, 1)
    t.round(2)
    everyone = [t.device(i).address for i in DEVICES]
    device = t.device(2).address

    objections = t.watch(2, store=device_store)

    assert actions(objections) == dict.fromkeys(everyone, "challenged")
    assert Objection(t.task, 2, device, 2 * REWARD, None, "ack of round 2", "challenged") in (
        objections
    )
    assert sorted(t.publisher.answer_challenges()) == sorted((2, a) for a in everyone)
    assert t.watch(3) == []  # a device that has the bundle finds the root right
    challenge = chain.ledger(0).challenge_state(t.task, 2, device)
    assert challenge is not None
    assert (challenge.amount, challenge.open) == (2 * REWARD, False)
    answered = "answered: the aggregator showed a leaf paying this much"
    assert actions(t.watch(2, store=device_store)) == dict.fromkeys(everyone, answered)
    assert sorted(chain.ledger(0).challenges_opened(t.task)) == sorted((2, a) for a in everyone)

    chain.finalize()

    ledger = chain.ledger(2)
    state = ledger.round_state(t.task, 2)
    assert state is not None
    assert state.final(ledger.now())
    assert not ledger.task(t.task).frozen
    # Without the bundle the device relies on round 1 only; with it, it is paid round 2's leaf.
    (partial,) = rewards_of(ledger, device_store, ledger.address)
    assert (partial.earned, partial.round) == (REWARD, 1)
    (owed,) = rewards_of(ledger, t.store, ledger.address)
    assert (owed.earned, owed.round) == (2 * REWARD, 2)
    assert claim_all(ledger, [owed]) == {t.task: 2 * REWARD}


def test_a_baseless_challenge_is_answered_by_a_watching_device_while_the_aggregator_is_away(
    chain: Chain, tmp_path: Path
) -> None:
    """Device 2 lacks round 2's bundle and challenges the root; the aggregator's server is
    down, but device 3 has the bundle: its watch answers every challenge with the account's
    leaf, so the honest root is not voided and pays once its window ends."""
    t = new_task(chain, tmp_path)
    t.round(1)
    device_store = withheld_after(t, 1)
    t.round(2)
    everyone = [t.device(i).address for i in DEVICES]
    assert actions(t.watch(2, store=device_store)) == dict.fromkeys(everyone, "challenged")

    assert t.watch(3) == []  # nothing to object to, and the open challenges answered

    for account in everyone:
        challenge = chain.ledger(0).challenge_state(t.task, 2, account)
        assert challenge is not None
        assert (challenge.amount, challenge.open) == (2 * REWARD, False)
    assert t.publisher.answer_challenges() == []  # nothing left for the aggregator
    chain.advance(RESPONSE_WINDOW + 1)
    answered = "answered: the aggregator showed a leaf paying this much"
    assert actions(t.watch(2, store=device_store)) == dict.fromkeys(everyone, answered)
    ledger = chain.ledger(2)
    state = ledger.round_state(t.task, 2)
    assert state is not None
    assert state.final(ledger.now())
    (owed,) = rewards_of(ledger, t.store, ledger.address)
    assert claim_all(ledger, [owed]) == {t.task: 2 * REWARD}


# -- act=False, and a watch that comes too late ----------------------------------------------------


def test_watch_without_acting_only_reports(chain: Chain, tmp_path: Path) -> None:
    """With ``act=False`` watch sends nothing: it says a root is challengeable and, once its
    challenges went unanswered, voidable; acting, it challenges and voids."""
    t = new_task(chain, tmp_path)
    t.round(1)
    drop_from_state(t, 4)
    t.round(2, devices=(2, 3))
    everyone = [t.device(i).address for i in DEVICES]
    device = chain.ledger(4)
    sent = chain.w3.eth.get_transaction_count(device.address)

    reports = t.watch(4, act=False)

    # The ack of round 1 says no more than the round-1 leaf: the leaf is the evidence.
    assert (
        Objection(t.task, 2, device.address, REWARD, None, "root of round 1", "challengeable")
        in reports
    )
    assert actions(reports) == dict.fromkeys(everyone, "challengeable")
    assert chain.ledger(0).challenges_opened(t.task) == []
    assert actions(t.watch(4)) == dict.fromkeys(everyone, "challenged")
    chain.advance(RESPONSE_WINDOW + 1)
    voidable = "voidable (the challenge went unanswered)"
    assert actions(t.watch(4, act=False)) == dict.fromkeys(everyone, voidable)
    state = device.round_state(t.task, 2)
    assert state is not None
    assert not state.voided
    # the three challenges only
    assert chain.w3.eth.get_transaction_count(device.address) == sent + len(everyone)
    assert VOIDED in actions(t.watch(4)).values()


def test_a_root_left_unwatched_past_its_window_is_too_late_to_challenge(
    chain: Chain, tmp_path: Path
) -> None:
    """The guarantee needs a device to look within the window: after it, watch reports the
    root and sends nothing, and the root becomes final. Round 1 still pays the device (any
    final root pays), as long as the escrow lasts."""
    t = new_task(chain, tmp_path)
    t.round(1)
    drop_from_state(t, 4)
    t.round(2, devices=(2, 3))
    chain.advance(CHALLENGE_WINDOW)
    device = chain.ledger(4)
    sent = chain.w3.eth.get_transaction_count(device.address)

    late = t.watch(4)

    too_late = "too late: the challenge window is over"
    assert actions(late) == dict.fromkeys((t.device(i).address for i in DEVICES), too_late)
    assert chain.w3.eth.get_transaction_count(device.address) == sent
    state = device.round_state(t.task, 2)
    assert state is not None
    assert state.final(device.now())
    (owed,) = rewards_of(device, t.store, device.address)
    assert (owed.earned, owed.round) == (REWARD, 1)
    assert claim_all(device, [owed]) == {t.task: REWARD}


# -- challenges raised to the ack -------------------------------------------------------------


def test_an_open_challenge_for_less_is_raised_to_the_devices_ack(
    chain: Chain, tmp_path: Path
) -> None:
    """Round 1 pays devices 2, 3 and 4 5 each; the aggregator acknowledges 10 to device 4 for
    round 2, then commits a round 2 no bundle explains, paying device 4 only 5. Late in the
    window device 2's watch challenges it for everyone at their round-1 5; device 4's watch
    follows. After the window the aggregator answers each challenge with its leaf."""
    t = new_task(chain, tmp_path)
    t.round(1)
    device = t.device(4).address
    trained_from = t.publisher.trained_from(2, t.model)
    receipt = signed_receipt(chain, t.device(4), t.task, 2, trained_from)
    ack, signature = t.publisher.acknowledge(2, [receipt])[device]
    t.books[4].add(
        ack, signature, chain_id=chain.deployment.chain_id, market=chain.deployment.market
    )
    second = RewardTree.build(
        {t.device(2).address: 2 * REWARD, t.device(3).address: 2 * REWARD, device: REWARD}
    )
    commit(chain.ledger(1), t.task, 2, second)
    chain.advance(CHALLENGE_WINDOW - 100)
    assert set(actions(t.watch(2)).values()) == {"challenged"}

    t.watch(4)

    challenge = chain.ledger(0).challenge_state(t.task, 2, device)
    assert challenge is not None
    assert challenge.amount == 2 * REWARD  # raised to what the ack says
    chain.advance(150)  # the window is over; the answers are still due
    for account, amount in second.amounts.items():
        with contextlib.suppress(AnswerTooLow):  # device 4's, once raised to 10
            chain.ledger(1).answer(t.task, 2, account, amount, second.proof(account))
    state = chain.ledger(0).round_state(t.task, 2)
    assert state is not None
    assert not state.final(chain.ledger(0).now())
