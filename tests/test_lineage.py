"""``fedmarket verify``: a task's lineage verifies, any altered link is named, another task cannot
hijack it, and a device left out after its acknowledgement challenges the root and is paid."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain_helpers import MODEL_CID, RESPONSE_WINDOW, Chain, open_publisher, signed_receipt
from cli_invoke import invoke
from eth_account.signers.local import LocalAccount

from fedmarket.device.acks import AckBook
from fedmarket.exceptions import LineageBroken
from fedmarket.ledger.errors import AcksNotPayable, NotAggregator, NothingToClaim
from fedmarket.market.bundle import ReceiptsBundle, SignedReceipt
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.lineage import Lineage, verify_lineage
from fedmarket.market.publisher import RoundPublisher
from fedmarket.market.rewards import RewardTree
from fedmarket.market.sales import model_metadata
from fedmarket.market.sealed_models import SealedModel
from fedmarket.market.watch import watch
from fedmarket.privacy.accounting import ADJACENCY, PRIVACY_UNIT
from fedmarket.receipts import Receipt
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

REWARD = 7
INITIAL = b"initial model"


def receipt(
    chain: Chain, device: LocalAccount, task: TaskId, round_: int, trained_from: bytes
) -> SignedReceipt:
    return signed_receipt(
        chain, device, task, round_, trained_from, weight=64, epsilon=0.5 * round_
    )


@dataclass
class History:
    task: TaskId
    store: LocalStore
    publisher: RoundPublisher

    def commitment(self, round_: int) -> bytes:
        return bytes.fromhex(self.publisher.rounds[round_ - 1].model_commitment)


def new_task(chain: Chain, aggregator: int = 1) -> TaskId:
    return chain.ledger(0).create_task(
        aggregator=chain.accounts[aggregator].address,
        reward_per_update=REWARD,
        budget=10_000,
        spec_cid=MODEL_CID,
    )


def history(chain: Chain, tmp_path: Path, rounds: int = 3) -> History:
    """A task with ``rounds`` rounds published by its aggregator, three devices paid in each;
    each round's receipts name the commitment of the model the round started from."""
    task = new_task(chain)
    publisher = open_publisher(chain, task, tmp_path)
    devices = chain.accounts[2:5]
    model = INITIAL
    for round_ in range(1, rounds + 1):
        trained_from = publisher.trained_from(round_, model)
        model = f"model after round {round_}".encode()
        publisher.publish(
            round_,
            model=model,
            trained_from=trained_from,
            survivors=[d.address for d in devices],
            receipts=[receipt(chain, d, task, round_, trained_from) for d in devices],
            evidence={},
        )
    return History(task, LocalStore(tmp_path / "store"), publisher)


def verify(
    chain: Chain,
    store: LocalStore,
    task: TaskId,
    round_: int | None = None,
    *,
    model: SealedModel | None = None,
) -> Lineage:
    return verify_lineage(
        chain.ledger(0),
        store,
        task,
        round_,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
        model=model,
    )


def test_lineage_of_the_last_round_verifies_back_to_round_one(chain: Chain, tmp_path: Path) -> None:
    h = history(chain, tmp_path)

    lineage = verify(chain, h.store, h.task)

    assert [r.round for r in lineage.rounds] == [1, 2, 3]
    assert lineage.round == 3
    assert lineage.model_commitment == h.commitment(3)
    assert lineage.rounds[-1].cumulative_total == 3 * 3 * REWARD
    assert len(lineage.devices) == 3
    assert lineage.rewards_at == {r: dict.fromkeys(lineage.devices, r * REWARD) for r in (1, 2, 3)}
    assert lineage.model_opened is False
    assert [r.round for r in verify(chain, h.store, h.task, 1).rounds] == [1]
    # A buyer who decrypted the model checks it against the commitment too.
    assert verify(chain, h.store, h.task, model=h.publisher.sealed_model(3)).model_opened
    assert verify(chain, h.store, h.task, 2, model=h.publisher.sealed_model(2)).model_opened


def test_an_uncommitted_round_has_no_lineage(chain: Chain, tmp_path: Path) -> None:
    h = history(chain, tmp_path, rounds=1)
    with pytest.raises(LineageBroken, match=f"task {h.task} has no committed round 2"):
        verify(chain, h.store, h.task, 2)
    with pytest.raises(LineageBroken, match="has no committed round yet"):
        verify(chain, h.store, new_task(chain))


def _commit_raw(
    chain: Chain,
    task: TaskId,
    round_: int,
    store: LocalStore,
    bundle: ReceiptsBundle,
    model_commitment: bytes,
    *,
    total_bonus: int = 0,
    aggregator: int = 1,
    bundle_cid: str | None = None,
) -> None:
    """Commit a round by hand (bypassing the publisher's checks), as a dishonest aggregator: the
    rewards root is recomputed from ``bundle`` on top of the task's committed bundles."""
    previous = chain.ledger(0).task(task).committed
    cumulative: dict[str, int] = {}
    for commit in chain.ledger(0).round_commits(task):
        for s in ReceiptsBundle.from_bytes(store.get_bytes(commit.bundle_cid)).receipts:
            cumulative[s.receipt.device] = cumulative.get(s.receipt.device, 0) + REWARD
    for s in bundle.receipts:
        cumulative[s.receipt.device] = cumulative.get(s.receipt.device, 0) + REWARD
    tree = RewardTree.build(cumulative)
    chain.ledger(aggregator).commit_round(
        task,
        round_,
        model_commitment=model_commitment,
        model_cid=store.put_bytes(b"ciphertext of " + model_commitment),
        bundle_cid=bundle_cid or store.put_bytes(bundle.to_bytes()),
        rewards_root=tree.root,
        cumulative_total=max(previous, tree.total + total_bonus),
    )


@pytest.mark.parametrize("tamper", ["receipt", "total", "trained_from", "mixed"])
def test_an_altered_link_is_named(chain: Chain, tmp_path: Path, tamper: str) -> None:
    h = history(chain, tmp_path, rounds=2)
    devices = chain.accounts[2:5]
    honest_from = h.commitment(2)
    receipts = [receipt(chain, d, h.task, 3, honest_from) for d in devices]
    if tamper == "receipt":  # weight changed after signing
        first = receipts[0]
        receipts[0] = SignedReceipt(
            Receipt(**{**first.receipt.__dict__, "weight": 4096}), first.signature
        )
    if tamper == "trained_from":  # trained on round 1's model, not round 2's
        receipts = [receipt(chain, d, h.task, 3, h.commitment(1)) for d in devices]
    if tamper == "mixed":  # one device trained on round 1's model
        receipts[0] = receipt(chain, devices[0], h.task, 3, h.commitment(1))
    bundle = ReceiptsBundle(
        h.task, 3, chain.deployment.chain_id, chain.deployment.market, tuple(receipts)
    )
    _commit_raw(
        chain,
        h.task,
        3,
        h.store,
        bundle,
        hashlib.sha256(b"round 3").digest(),
        total_bonus=100 if tamper == "total" else 0,
    )
    expected = {
        "receipt": f"task {h.task} round 3: receipt of .* altered or replayed",
        "total": f"task {h.task} round 3: the rewards recomputed from the receipts",
        "trained_from": f"round 3: .* trained from 0x{h.commitment(1).hex()}, not from the "
        f"previous round's model 0x{honest_from.hex()}",
        "mixed": "round 3: receipts disagree on the model they trained from",
    }[tamper]

    with pytest.raises(LineageBroken, match=expected):
        verify(chain, h.store, h.task)
    assert [r.round for r in verify(chain, h.store, h.task, 2).rounds] == [1, 2]  # still verify


def test_a_corrupt_stored_bundle_breaks_the_lineage(chain: Chain, tmp_path: Path) -> None:
    h = history(chain, tmp_path, rounds=2)
    bundle_cid = chain.ledger(0).round_commits(h.task)[0].bundle_cid
    from multiformats import CID

    digest = CID.decode(bundle_cid).raw_digest.hex()
    block = h.store.root / "blocks" / digest[:2] / digest
    data = bytearray(block.read_bytes())
    data[10] ^= 1
    block.write_bytes(bytes(data))

    with pytest.raises(LineageBroken, match=f"round 1: receipts bundle {bundle_cid}.*corrupt"):
        verify(chain, h.store, h.task)


def test_verify_cli_prints_ok_or_the_broken_link(
    chain: Chain,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("FEDMARKET_HOME", str(home))
    task = history(chain, home / "store-parent").task
    # The CLI reads the local store under $FEDMARKET_HOME/store and the recorded deployment.
    (home / "store-parent" / "store").rename(home / "store")
    chain.deployment.save(home / "chain" / "deployments" / f"{chain.deployment.chain_id}.json")
    rpc_url = chain.local.rpc_url

    assert invoke(monkeypatch, "verify", "--task", str(task), "--rpc-url", rpc_url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert (
        invoke(monkeypatch, "verify", "--task", str(task), "--round", "2", "--rpc-url", rpc_url)
        == 0
    )
    assert f"OK: task {task} round 2 verifies back to round 1" in capsys.readouterr().out
    empty = new_task(chain)
    assert invoke(monkeypatch, "verify", "--task", str(empty), "--rpc-url", rpc_url) == 56
    assert f"task {empty} has no committed round yet" in capsys.readouterr().err
    assert invoke(monkeypatch, "verify", "--task", "not-a-task", "--rpc-url", rpc_url) == 2


# -- another task cannot hijack a lineage -------------------------------------------------------


@pytest.mark.parametrize("copy", ["same-bundle", "rewrapped-receipts"])
def test_a_strangers_task_cannot_hijack_a_lineage(chain: Chain, tmp_path: Path, copy: str) -> None:
    """A stranger opens its own task and commits task T's round 3 model commitment and ciphertext
    CID as its round 1, with T's very bundle CID, or with T's signed receipts re-wrapped in a
    bundle for its own task (its root matching them). T still verifies on its own; the stranger's
    task fails, naming the link; T's devices are owed nothing by the stranger's task."""
    h = history(chain, tmp_path)
    stranger = 7
    hijack = new_task(chain, aggregator=stranger)
    honest = chain.ledger(0).round_commits(h.task)
    last = honest[-1]
    copied = ReceiptsBundle.from_bytes(h.store.get_bytes(last.bundle_cid))
    if copy == "rewrapped-receipts":
        copied = ReceiptsBundle(hijack, 1, copied.chain_id, copied.market, copied.receipts)
    _commit_raw(
        chain,
        hijack,
        1,
        h.store,
        copied,
        last.model_commitment,
        aggregator=stranger,
        bundle_cid=last.bundle_cid if copy == "same-bundle" else None,
    )
    assert chain.ledger(0).round_commits(hijack)[0].model_commitment == last.model_commitment
    with pytest.raises(NotAggregator):  # and it cannot commit into T itself
        _commit_raw(chain, h.task, 4, h.store, copied, last.model_commitment, aggregator=stranger)

    lineage = verify(chain, h.store, h.task, model=h.publisher.sealed_model(3))
    assert [(r.round, r.bundle_cid) for r in lineage.rounds] == [
        (c.round, c.bundle_cid) for c in honest
    ]
    assert lineage.model_opened
    assert lineage.rewards[chain.accounts[2].address] == 3 * REWARD
    expected = {
        "same-bundle": f"task {hijack} round 1: bundle {last.bundle_cid} belongs to another round",
        "rewrapped-receipts": f"task {hijack} round 1: receipt of 0x[0-9a-fA-F]{{40}} names "
        "another round",
    }[copy]
    with pytest.raises(LineageBroken, match=expected):
        verify(chain, h.store, hijack)
    with pytest.raises(LineageBroken, match=expected):
        verify(chain, h.store, hijack, model=h.publisher.sealed_model(3))
    chain.finalize()
    device = chain.ledger(2)
    owed = rewards_of(device, h.store, device.address)
    assert [(r.task, r.earned) for r in owed] == [(h.task, 3 * REWARD)]


def test_a_model_that_does_not_open_the_commitment_is_refused(chain: Chain, tmp_path: Path) -> None:
    h = history(chain, tmp_path)
    right = h.publisher.sealed_model(3)
    previous = h.publisher.sealed_model(2)
    wrong = {
        "round 2's model for round 3": previous,
        "round 3's salt on round 2's model": SealedModel(right.salt, previous.model),
        "round 3's model under another salt": SealedModel(previous.salt, right.model),
        "one byte changed": SealedModel(right.salt, right.model[:-1] + b"!"),
    }
    for why, model in wrong.items():
        with pytest.raises(LineageBroken, match="does not open the committed"):
            verify(chain, h.store, h.task, model=model)
        assert model.commitment != h.commitment(3), why
    assert verify(chain, h.store, h.task, model=right).model_opened


# -- an aggregator that leaves out a device it acknowledged -------------------------------------


@pytest.mark.parametrize("how", ["state-edited", "re-rooted", "round-skipped"])
def test_a_device_left_out_after_its_ack_is_paid_by_the_ack(
    chain: Chain, tmp_path: Path, how: str
) -> None:
    """The aggregator acknowledges a, b and d in round 1, then leaves d out: by deleting d's
    entry from its publisher's state before publishing (the committed bundle and root agree and
    omit d), by committing the honest bundle under a root without d, or by never committing
    round 1 and committing round 2 instead. d, watching, challenges that root with its ack; the
    aggregator cannot answer, so the root is voided, the task frozen, and d's ack pays it, once."""
    task = new_task(chain)
    state_path = tmp_path / "publisher.json"
    publisher = open_publisher(chain, task, tmp_path)
    store = LocalStore(tmp_path / "store")
    a, b, d = chain.accounts[2:5]
    trained_from = publisher.trained_from(1, INITIAL)
    receipts = [receipt(chain, x, task, 1, trained_from) for x in (a, b, d)]
    acks = publisher.acknowledge(1, receipts)
    book = AckBook(tmp_path / "device-d", d.address)  # what d's ack mod kept
    book.add(*acks[d.address], chain_id=chain.deployment.chain_id, market=chain.deployment.market)

    if how == "state-edited":
        document = json.loads(state_path.read_text())
        del document["acked"]["1"][d.address]
        state_path.write_text(json.dumps(document))
        open_publisher(chain, task, tmp_path).publish(
            1,
            model=b"round one",
            trained_from=trained_from,
            survivors=[a.address, b.address],
            receipts=receipts[:2],
            evidence={},
        )
    elif how == "re-rooted":
        bundle = ReceiptsBundle(
            task, 1, chain.deployment.chain_id, chain.deployment.market, tuple(receipts)
        )
        tree = RewardTree.build({a.address: REWARD, b.address: REWARD})
        chain.ledger(1).commit_round(
            task,
            1,
            model_commitment=hashlib.sha256(b"round one").digest(),
            model_cid=store.put_bytes(b"ciphertext"),
            bundle_cid=store.put_bytes(bundle.to_bytes()),
            rewards_root=tree.root,
            cumulative_total=tree.total,
        )
    else:
        publisher.publish(
            2,
            model=b"round two",
            trained_from=publisher.trained_from(2, b"round one"),
            survivors=[],
            receipts=[],
            evidence={},
        )
    dropped_at = 2 if how == "round-skipped" else 1

    if how == "re-rooted":  # the root no longer matches the receipts: the link is named
        with pytest.raises(
            LineageBroken, match="round 1: the rewards recomputed from the receipts"
        ):
            verify(chain, store, task)
    else:  # a consistent commit that simply omits d
        assert d.address not in verify(chain, store, task).devices
    device = chain.ledger(4)
    assert str(device.address) == d.address
    assert rewards_of(device, store, d.address) == []  # without its ack d is owed nothing
    # While the task is open and not frozen, an ack is evidence for a challenge, not a payment.
    assert rewards_of(device, store, d.address, acks=book) == []
    with pytest.raises(AcksNotPayable):
        device.claim_acknowledged(*acks[d.address])

    (objection,) = watch(device, store, d.address, acks=book)
    assert (objection.round, objection.owed, objection.evidence, objection.action) == (
        dropped_at,
        REWARD,
        "ack of round 1",
        "challenged",
    )
    assert objection.pays == (None if how == "re-rooted" else 0)
    assert open_publisher(chain, task, tmp_path).answer_challenges() == []  # nothing to show
    chain.advance(RESPONSE_WINDOW + 1)
    (voided,) = watch(device, store, d.address, acks=book)
    assert voided.action == "voided (the challenge went unanswered)"
    state = device.task(task)
    assert state.frozen
    assert state.committed == 0  # the voided root reserves nothing any more

    rewards = rewards_of(device, store, d.address, acks=book)

    (owed,) = rewards
    assert (owed.task, owed.earned, owed.acked, owed.claimable) == (task, 0, REWARD, REWARD)
    assert claim_all(device, rewards) == {task: REWARD}
    assert device.claimed(task, d.address) == REWARD
    assert device.balance(d.address) == REWARD
    again = rewards_of(device, store, d.address, acks=book)
    assert again[0].claimable == 0
    assert claim_all(device, again) == {}
    with pytest.raises(NothingToClaim):
        device.claim_acknowledged(*acks[d.address])
    assert device.balance(d.address) == REWARD
    assert watch(device, store, d.address, acks=book) == []  # the voided root is done with


def test_a_listing_states_each_devices_highest_epsilon_over_the_lineage(
    chain: Chain, tmp_path: Path
) -> None:
    """A device whose owner declared new data signs a lower epsilon in later rounds, but the
    model still holds its earlier updates: the listing must state the higher one (red team,
    issue 15: it took the latest receipt's)."""
    task = new_task(chain)
    publisher = open_publisher(chain, task, tmp_path)
    device = chain.accounts[2]
    model = b"initial model"
    for round_, spent in ((1, 5.0), (2, 0.4)):  # new data declared between the rounds
        trained_from = publisher.trained_from(round_, model)
        model = f"model after round {round_}".encode()
        receipt = signed_receipt(chain, device, task, round_, trained_from, epsilon=spent)
        publisher.publish(
            round_,
            model=model,
            trained_from=trained_from,
            survivors=[device.address],
            receipts=[receipt],
            evidence={},
        )

    facts = model_metadata(verify(chain, LocalStore(tmp_path / "store"), task))

    assert facts["epsilon_max"] == 5.0
    assert (facts["privacy_unit"], facts["adjacency"]) == (PRIVACY_UNIT, ADJACENCY)
