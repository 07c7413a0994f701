"""Publishing rounds: store sealed models by CID, pay only valid survivors and every acknowledged
upload, commit once, resume after SIGKILL with the same model commitments."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from chain_helpers import CLOSE_GRACE, MODEL_CID, Chain, open_publisher, signed_receipt
from eth_account.signers.local import LocalAccount
from net import Forward, RpcProxy
from web3 import Web3

from fedmarket.acks import verify_ack
from fedmarket.device.acks import AckBook
from fedmarket.exceptions import DataError, InvalidInput
from fedmarket.ledger import Web3Ledger
from fedmarket.ledger.errors import (
    AcksNotPayable,
    NothingToClaim,
    NothingToRefund,
    RoundNotFinal,
    TaskIsClosed,
)
from fedmarket.market.bundle import ReceiptsBundle, SignedReceipt
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.lineage import verify_task
from fedmarket.market.publisher import RoundPublisher, default_secret_path
from fedmarket.models.weights import Weights, weights_to_bytes
from fedmarket.receipts import Receipt
from fedmarket.server.paid import resume_point
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

REWARD = 10
# What the devices of these tests say they trained from (the publisher checks receipts against
# what it is told; the sealed commitments themselves are tested below).
TRAINED_FROM = hashlib.sha256(b"initial model").digest()


def new_task(chain: Chain, budget: int = 1000) -> TaskId:
    return chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=budget,
        spec_cid=MODEL_CID,
    )


def signed(
    chain: Chain,
    device: LocalAccount,
    round_: int,
    task: TaskId,
    *,
    claimed_round: int = 0,
    trained_from: bytes = TRAINED_FROM,
) -> SignedReceipt:
    """``device``'s receipt for ``round_``; ``claimed_round`` makes it name another round."""
    return signed_receipt(chain, device, task, round_, trained_from, claimed_round=claimed_round)


def test_only_valid_receipts_of_survivors_are_paid(chain: Chain, tmp_path: Path) -> None:
    task = new_task(chain)
    publisher = open_publisher(chain, task, tmp_path)
    a, b, c, d, e = chain.accounts[2:7]
    forged = signed(chain, a, 1, task)
    forged = SignedReceipt(
        Receipt(**{**forged.receipt.__dict__, "device": d.address}), forged.signature
    )

    published = publisher.publish(
        1,
        model=b"model round 1",
        trained_from=TRAINED_FROM,
        survivors=[a.address, b.address, d.address, e.address],
        receipts=[
            signed(chain, a, 1, task),
            signed(chain, b, 1, task, claimed_round=2),  # replayed from another round
            signed(chain, c, 1, task),  # dropped out of secure aggregation
            forged,  # d's name, a's signature
            signed(chain, e, 1, task, trained_from=bytes(32)),  # trained from another model
        ],
        evidence={"accuracy": 0.5},
    )

    assert published.paid == (a.address,)
    assert set(published.rejected) == {b.address, c.address, d.address, e.address}
    assert "not in the secure-aggregation sum" in published.rejected[c.address]
    assert "altered or replayed" in published.rejected[d.address]
    assert f"model 0x{bytes(32).hex()}" in published.rejected[e.address]
    state = chain.ledger(0).task(task)
    assert (state.last_round, state.committed) == (1, REWARD)
    store = LocalStore(tmp_path / "store")
    bundle = ReceiptsBundle.from_bytes(store.get_bytes(published.bundle_cid))
    assert [s.receipt.device for s in bundle.receipts] == [a.address]
    evidence = json.loads(store.get_bytes(published.evidence_cid))
    assert evidence["model_cid"] == published.model_cid
    assert evidence["model_commitment"] == published.model_commitment
    assert evidence["trained_from"] == TRAINED_FROM.hex()
    # The model is stored sealed: its CID holds ciphertext, the chain a hiding commitment.
    assert b"model round 1" not in store.get_bytes(published.model_cid)
    sealed = publisher.sealed_model(1)
    assert sealed.model == b"model round 1"
    on_chain = chain.ledger(0).round_state(task, 1)
    assert on_chain is not None
    assert (
        on_chain.model_commitment == sealed.commitment == bytes.fromhex(published.model_commitment)
    )


def test_rewards_accumulate_and_one_claim_pays_them(chain: Chain, tmp_path: Path) -> None:
    task = new_task(chain)
    publisher = open_publisher(chain, task, tmp_path)
    a, b = chain.accounts[2:4]
    for round_ in (1, 2, 3):
        survivors = [a.address] if round_ == 2 else [a.address, b.address]
        publisher.publish(
            round_,
            model=f"model {round_}".encode(),
            trained_from=TRAINED_FROM,
            survivors=survivors,
            receipts=[signed(chain, a, round_, task), signed(chain, b, round_, task)],
            evidence={},
        )
    amount, proof = publisher.claim_for(b.address)

    assert publisher.cumulative == {a.address: 3 * REWARD, b.address: 2 * REWARD}
    with pytest.raises(RoundNotFinal):  # nothing pays inside the challenge window
        chain.ledger(3).claim(task, 3, b.address, amount, proof)
    chain.finalize()
    assert chain.ledger(3).claim(task, 3, b.address, amount, proof) == 2 * REWARD
    with pytest.raises(InvalidInput, match="already committed"):
        publisher.publish(
            2, model=b"x", trained_from=TRAINED_FROM, survivors=[], receipts=[], evidence={}
        )


def test_escrow_shortfall_is_refused_before_anything_is_committed(
    chain: Chain, tmp_path: Path
) -> None:
    task = new_task(chain, budget=REWARD)
    publisher = open_publisher(chain, task, tmp_path)
    a, b = chain.accounts[2:4]
    with pytest.raises(InvalidInput, match="above the escrow"):
        publisher.publish(
            1,
            model=b"m",
            trained_from=TRAINED_FROM,
            survivors=[a.address, b.address],
            receipts=[signed(chain, a, 1, task), signed(chain, b, 1, task)],
            evidence={},
        )
    assert chain.ledger(0).task(task).last_round == 0
    assert open_publisher(chain, task, tmp_path).next_round == 1


# -- crash safety --------------------------------------------------------------------------------


def slow_send(upstream: str, when: str, release: threading.Event) -> RpcProxy:
    """A proxy that stalls ``eth_sendRawTransaction`` until ``release``: before forwarding it
    (``when="before"``: the commit never leaves, and is dropped) or after (``"after"``: it is
    mined, the answer never comes in time)."""

    def intercept(body: bytes, forward: Forward) -> requests.Response | None:
        sending = b"eth_sendRawTransaction" in body
        if sending and when == "before":
            release.wait(60)
            return None  # never reaches the chain, not even after the test
        answer = forward()
        if sending and when == "after":
            release.wait(60)
        return answer

    return RpcProxy(upstream, intercept)


_SERVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from web3 import Web3
    from fedmarket.ledger import Deployment, Web3Ledger
    from fedmarket.ledger.chain import dev_accounts
    from fedmarket.market.publisher import RoundPublisher
    from fedmarket.store import LocalStore

    rpc, folder = sys.argv[1], Path(sys.argv[4])
    deployment, task = Deployment(**json.loads(sys.argv[2])), int(sys.argv[3])
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
    ledger = Web3Ledger(w3, deployment, dev_accounts(2)[1], receipt_timeout=60)
    publisher = RoundPublisher(
        store=LocalStore(folder / "store"), ledger=ledger, task=task,
        chain_id=deployment.chain_id, market=deployment.market,
        state_path=folder / "publisher.json",
    )
    publisher.publish(1, model=b"round one", trained_from=bytes.fromhex(sys.argv[5]), survivors=[],
        receipts=[], evidence={})
    print("published", flush=True)
    """
)


@pytest.fixture(params=["before", "after"])
def slow(chain: Chain, request: pytest.FixtureRequest) -> Iterator[RpcProxy]:
    release = threading.Event()
    proxy = slow_send(chain.local.rpc_url, request.param, release)
    yield proxy
    release.set()
    proxy.close()


def test_server_killed_mid_commit_resumes_with_exactly_one_commit(
    chain: Chain, tmp_path: Path, slow: RpcProxy
) -> None:
    task = new_task(chain)
    aggregator = chain.accounts[1].address
    sent_before = chain.w3.eth.get_transaction_count(aggregator)
    deployment = json.dumps(chain.deployment.__dict__)
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVER,
            slow.url,
            deployment,
            str(task),
            str(tmp_path),
            TRAINED_FROM.hex(),
        ]
    )
    state = tmp_path / "publisher.json"
    deadline = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text())["pending"]):
        assert server.poll() is None, "the server finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # inside the stalled send
    server.send_signal(signal.SIGKILL)
    server.wait()

    resumed = open_publisher(chain, task, tmp_path)  # re-sends the pending commit if needed

    assert resumed.next_round == 2
    assert chain.ledger(0).task(task).last_round == 1
    assert chain.w3.eth.get_transaction_count(aggregator) == sent_before + 1  # one commit
    assert resumed.sealed_model(1).model == b"round one"  # the killed server's sealed model
    resumed.publish(
        2,
        model=b"round two",
        trained_from=resumed.trained_from(2, b"round one"),
        survivors=[],
        receipts=[],
        evidence={},
    )
    assert chain.ledger(0).task(task).last_round == 2


def test_chain_unreachable_during_a_commit_is_retried_into_exactly_one_commit(
    chain: Chain, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The RPC endpoint goes dark for 6 s when the commit is sent: more than the ledger's own
    re-sends ride out, so the publisher backs off and tries again until the chain is back."""
    task = new_task(chain)
    aggregator = chain.accounts[1].address
    outage_until: list[float] = []

    def intercept(body: bytes, forward: Forward) -> requests.Response | None:
        if not outage_until and b"eth_sendRawTransaction" in body:
            outage_until.append(time.monotonic() + 6)
        if outage_until and time.monotonic() < outage_until[0]:
            return None  # connection dropped: nothing reaches the chain
        return forward()

    proxy = RpcProxy(chain.local.rpc_url, intercept)
    try:
        w3 = Web3(Web3.HTTPProvider(proxy.url, request_kwargs={"timeout": 5}))
        publisher = RoundPublisher(
            store=LocalStore(tmp_path / "store"),
            ledger=Web3Ledger(w3, chain.deployment, chain.accounts[1], receipt_timeout=30),
            task=task,
            chain_id=chain.deployment.chain_id,
            market=chain.deployment.market,
            state_path=tmp_path / "publisher.json",
            retry_for=60,
        )
        sent_before = chain.w3.eth.get_transaction_count(aggregator)
        with caplog.at_level(logging.WARNING, logger="fedmarket.market.publisher"):
            publisher.publish(
                1, model=b"m", trained_from=TRAINED_FROM, survivors=[], receipts=[], evidence={}
            )
    finally:
        proxy.close()

    assert outage_until, "the commit never went through the outage"
    assert any("retrying in" in r.message for r in caplog.records)
    assert chain.ledger(0).task(task).last_round == 1
    assert chain.w3.eth.get_transaction_count(aggregator) == sent_before + 1


# -- acknowledgements across a crash -------------------------------------------------------------


@pytest.mark.parametrize("receipts_again", [False, True], ids=["no-receipts", "receipts-again"])
def test_uploads_acknowledged_before_a_crash_are_paid_exactly_once(
    chain: Chain, tmp_path: Path, receipts_again: bool
) -> None:
    """The server acknowledges round 1's uploads (in two batches, one device twice), dies before
    publishing, and a new publisher on the same state file publishes round 1: without any receipt
    (the crash lost them), or with them all handed in again. Each acknowledged device is paid
    once, by whichever claim path it uses first."""
    task = new_task(chain)
    a, b, c = chain.accounts[2:5]
    market = chain.deployment
    publisher = open_publisher(chain, task, tmp_path)
    first = publisher.acknowledge(1, [signed(chain, a, 1, task), signed(chain, b, 1, task)])
    second = publisher.acknowledge(1, [signed(chain, b, 1, task), signed(chain, c, 1, task)])
    assert second[b.address] == first[b.address]  # b's second upload: the same ack, not another
    acks = second
    del publisher  # the server dies here: nothing after acknowledge() ran

    resumed = open_publisher(chain, task, tmp_path)
    again = [signed(chain, d, 1, task) for d in (a, b, c, b)] if receipts_again else []
    published = resumed.publish(
        1,
        model=b"round one",
        trained_from=TRAINED_FROM,
        survivors=[d.address for d in (a, b, c)] if receipts_again else [],
        receipts=again,
        evidence={},
    )

    devices = sorted(d.address for d in (a, b, c))
    assert list(published.paid) == devices
    assert resumed.cumulative == dict.fromkeys(devices, REWARD)
    assert chain.ledger(0).task(task).committed == 3 * REWARD
    bundle = ReceiptsBundle.from_bytes(resumed.store.get_bytes(published.bundle_cid))
    assert sorted(s.receipt.device for s in bundle.receipts) == devices  # once each
    state = RoundPublisher.read_state(tmp_path / "publisher.json")
    assert state is not None
    assert state.acked == {}  # nothing left to pay twice
    for device in (a, b, c):
        ack, signature = acks[device.address]
        verify_ack(
            ack,
            signature,
            aggregator=chain.accounts[1].address,
            chain_id=market.chain_id,
            market=market.market,
        )
        assert (ack.round, ack.cumulative_amount) == (1, REWARD)
    # Acks are paid directly only once the task commits no more (its close grace is over, or a
    # root was voided); the tree once final.
    ack_a, sig_a = acks[a.address]
    with pytest.raises(AcksNotPayable):
        chain.ledger(2).claim_acknowledged(ack_a, sig_a)
    chain.finalize()
    chain.ledger(0).close_task(task)
    with pytest.raises(AcksNotPayable):  # the grace is for the aggregator's last commits
        chain.ledger(2).claim_acknowledged(ack_a, sig_a)
    chain.advance(CLOSE_GRACE + 1)
    # a claims with its ack first, b and c with the committed tree: then the other path is spent.
    assert chain.ledger(2).claim_acknowledged(ack_a, sig_a) == REWARD
    amount, proof = resumed.claim_for(a.address)
    with pytest.raises(NothingToClaim):
        chain.ledger(2).claim(task, 1, a.address, amount, proof)
    for device in (b, c):
        amount, proof = resumed.claim_for(device.address)
        assert chain.ledger(3).claim(task, 1, device.address, amount, proof) == REWARD
        with pytest.raises(NothingToClaim):
            chain.ledger(3).claim_acknowledged(*acks[device.address])
    assert chain.ledger(0).task(task).paid == 3 * REWARD


def test_an_ack_claimed_outright_leaves_the_others_paid(chain: Chain, tmp_path: Path) -> None:
    """Budget 40 at 10 a round: round 1 pays a and b (committed 20, final). The aggregator
    acknowledges both for round 2 (20 each), the sponsor closes the task, and round 2 is never
    committed. a's ack is claimed outright, before a's leaf (by a, or anyone holding it),
    counting a's round-1 10 twice. The escrow still holds b's 20, and b gets it."""
    task = new_task(chain, budget=4 * REWARD)
    publisher = open_publisher(chain, task, tmp_path)
    a, b = chain.accounts[2:4]
    publisher.publish(
        1,
        model=b"m1",
        trained_from=TRAINED_FROM,
        survivors=[a.address, b.address],
        receipts=[signed(chain, a, 1, task), signed(chain, b, 1, task)],
        evidence={},
    )
    chain.finalize()
    acks = publisher.acknowledge(2, [signed(chain, a, 2, task), signed(chain, b, 2, task)])
    chain.ledger(0).close_task(task)
    with pytest.raises(AcksNotPayable):  # nobody can cash an ack to stop the last commit
        chain.ledger(9).claim_acknowledged(*acks[a.address])
    chain.advance(CLOSE_GRACE + 1)  # the aggregator never committed round 2
    assert chain.ledger(9).claim_acknowledged(*acks[a.address]) == 2 * REWARD
    with pytest.raises(TaskIsClosed):
        publisher.publish(
            2, model=b"m2", trained_from=TRAINED_FROM, survivors=[], receipts=[], evidence={}
        )
    device = chain.ledger(3)
    book = AckBook(tmp_path / "device-b", b.address)
    book.add(*acks[b.address], chain_id=chain.deployment.chain_id, market=chain.deployment.market)

    claim_all(device, rewards_of(device, publisher.store, b.address, acks=book))

    # b's claim credited a's leaf in round 1 (counted once), then took its own ack's remainder
    assert device.balance(b.address) == 2 * REWARD
    state = chain.ledger(0).task(task)
    assert (state.paid, state.committed, state.paid_on_acks) == (4 * REWARD, 2 * REWARD, 2 * REWARD)
    assert [chain.ledger(0).ack_counted(task, x.address) for x in (a, b)] == [REWARD, REWARD]
    chain.advance(CLOSE_GRACE + 1)
    with pytest.raises(NothingToRefund):  # nothing was left locked or owed
        chain.ledger(0).refund_unspent(task)


def test_a_committed_round_takes_no_more_acknowledgements(chain: Chain, tmp_path: Path) -> None:
    task = new_task(chain)
    a = chain.accounts[2]
    publisher = open_publisher(chain, task, tmp_path)
    publisher.publish(
        1, model=b"m", trained_from=TRAINED_FROM, survivors=[], receipts=[], evidence={}
    )
    with pytest.raises(InvalidInput, match="already committed"):
        publisher.acknowledge(1, [signed(chain, a, 1, task)])
    assert publisher.acknowledge(2, [signed(chain, a, 2, task, claimed_round=1)]) == {}


def test_an_upload_trained_from_another_model_is_not_acknowledged(
    chain: Chain, tmp_path: Path
) -> None:
    """Flower rounds rebuild receipts from the server's own terms, so this needs a caller of the
    publisher's API (another transport, a plug-in workflow) to hand in a device's receipt as is."""
    task = new_task(chain)
    a, b = chain.accounts[2:4]
    publisher = open_publisher(chain, task, tmp_path)
    round_model = publisher.trained_from(1, b"initial model")  # what run_rounds asks first
    acks = publisher.acknowledge(
        1,
        [
            signed(chain, a, 1, task, trained_from=round_model),
            signed(chain, b, 1, task, trained_from=bytes(32)),  # some other model
        ],
    )
    publisher.publish(
        1,
        model=b"round one",
        trained_from=round_model,
        survivors=[a.address, b.address],
        receipts=[],
        evidence={},
    )

    assert sorted(acks) == [a.address]
    lineage = verify_task(
        chain.ledger(0),
        publisher.store,
        task,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
    )
    assert lineage.devices == (a.address,)


# -- restart: the same commitments, the last model back ------------------------------------------


def weights(value: float) -> Weights:
    return {
        "layer.weight": np.full((4, 3), value, dtype=np.float32),
        "layer.bias": np.arange(4, dtype=np.float32) + value,
    }


def test_a_resumed_publisher_commits_as_before_and_resumes_from_the_last_model(
    chain: Chain, tmp_path: Path
) -> None:
    task = new_task(chain)
    initial, after_one = weights_to_bytes(weights(0.0)), weights_to_bytes(weights(1.5))
    publisher = open_publisher(chain, task, tmp_path)
    assert resume_point(publisher) is None
    from_initial = publisher.trained_from(1, initial)
    publisher.publish(
        1, model=after_one, trained_from=from_initial, survivors=[], receipts=[], evidence={}
    )

    resumed = open_publisher(chain, task, tmp_path)  # a restarted server, same state file

    on_chain = chain.ledger(0).round_state(task, 1)
    assert on_chain is not None
    assert resumed.trained_from(1, initial) == from_initial
    # Round 2's devices sign for exactly what round 1 committed, before and after the restart.
    assert resumed.trained_from(2, after_one) == on_chain.model_commitment
    assert publisher.trained_from(2, after_one) == on_chain.model_commitment
    assert resumed.trained_from(2, initial) != on_chain.model_commitment
    resumed_at = resume_point(resumed)
    assert resumed_at is not None
    next_round, model = resumed_at
    assert next_round == 2
    assert sorted(model) == sorted(weights(1.5))
    for name, tensor in weights(1.5).items():
        np.testing.assert_array_equal(model[name], tensor)
    # The commitment hides the model: another server's secret commits to it differently.
    stranger = open_publisher(chain, task, tmp_path / "another-server")
    assert stranger.trained_from(2, after_one) != on_chain.model_commitment


def test_resume_refuses_a_model_that_does_not_open_the_commitment(
    chain: Chain, tmp_path: Path
) -> None:
    """A state file whose commitment was edited, or a lost task secret, stops the resume: it
    never restarts from a model other than the committed one."""
    task = new_task(chain)
    state_path = tmp_path / "publisher.json"
    publisher = open_publisher(chain, task, tmp_path)
    publisher.publish(
        1,
        model=weights_to_bytes(weights(2.0)),
        trained_from=TRAINED_FROM,
        survivors=[],
        receipts=[],
        evidence={},
    )
    document = json.loads(state_path.read_text())
    honest = document["rounds"][0]["model_commitment"]
    document["rounds"][0]["model_commitment"] = hashlib.sha256(b"another model").hexdigest()
    state_path.write_text(json.dumps(document))
    with pytest.raises(DataError, match="does not match the committed"):
        resume_point(open_publisher(chain, task, tmp_path))

    document["rounds"][0]["model_commitment"] = honest
    state_path.write_text(json.dumps(document))
    default_secret_path(state_path).unlink()  # the task secret is lost: never replaced silently
    with pytest.raises(DataError, match=r"publisher\.secret is missing"):
        open_publisher(chain, task, tmp_path)
