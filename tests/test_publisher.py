"""Publishing rounds: store by CID, pay only valid survivors, commit once, resume after SIGKILL."""

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

import pytest
import requests
from chain_helpers import MODEL_CID, Chain, open_publisher
from eth_account.signers.local import LocalAccount
from net import Forward, RpcProxy
from web3 import Web3

from fedmarket.exceptions import InvalidInput
from fedmarket.ledger import Web3Ledger
from fedmarket.market.bundle import ReceiptsBundle, SignedReceipt
from fedmarket.market.publisher import RoundPublisher
from fedmarket.receipts import Receipt, sign_receipt
from fedmarket.store import LocalStore
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

REWARD = 10


def new_task(chain: Chain, budget: int = 1000) -> TaskId:
    return chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=budget,
        spec_cid=MODEL_CID,
    )


def signed(
    chain: Chain, device: LocalAccount, round_: int, task: TaskId, *, claimed_round: int = 0
) -> SignedReceipt:
    """``device``'s receipt for ``round_``; ``claimed_round`` makes it name another round."""
    receipt = Receipt.for_update(
        task=task,
        round=claimed_round or round_,
        device=device.address,
        model_cid=MODEL_CID,
        upload_digest=hashlib.sha256(f"{device.address}{round_}".encode()).digest(),
        weight=100,
        epsilon=1.5,
        delta=1e-5,
    )
    signature = sign_receipt(
        receipt, device, chain_id=chain.deployment.chain_id, market=chain.deployment.market
    )
    return SignedReceipt(receipt, signature)


def test_only_valid_receipts_of_survivors_are_paid(chain: Chain, tmp_path: Path) -> None:
    task = new_task(chain)
    publisher = open_publisher(chain, task, tmp_path)
    a, b, c, d = chain.accounts[2:6]
    forged = signed(chain, a, 1, task)
    forged = SignedReceipt(
        Receipt(**{**forged.receipt.__dict__, "device": d.address}), forged.signature
    )

    published = publisher.publish(
        1,
        model=b"model round 1",
        trained_from=MODEL_CID,
        survivors=[a.address, b.address, d.address],
        receipts=[
            signed(chain, a, 1, task),
            signed(chain, b, 1, task, claimed_round=2),  # replayed from another round
            signed(chain, c, 1, task),  # dropped out of secure aggregation
            forged,  # d's name, a's signature
        ],
        evidence={"accuracy": 0.5},
    )

    assert published.paid == (a.address,)
    assert set(published.rejected) == {b.address, c.address, d.address}
    assert "not in the secure-aggregation sum" in published.rejected[c.address]
    assert "altered or replayed" in published.rejected[d.address]
    state = chain.ledger(0).task(task)
    assert (state.last_round, state.committed) == (1, REWARD)
    store = LocalStore(tmp_path / "store")
    bundle = ReceiptsBundle.from_bytes(store.get_bytes(published.bundle_cid))
    assert [s.receipt.device for s in bundle.receipts] == [a.address]
    evidence = json.loads(store.get_bytes(published.evidence_cid))
    assert evidence["model_cid"] == published.model_cid
    assert store.get_bytes(published.model_cid) == b"model round 1"


def test_rewards_accumulate_and_one_claim_pays_them(chain: Chain, tmp_path: Path) -> None:
    task = new_task(chain)
    publisher = open_publisher(chain, task, tmp_path)
    a, b = chain.accounts[2:4]
    for round_ in (1, 2, 3):
        survivors = [a.address] if round_ == 2 else [a.address, b.address]
        publisher.publish(
            round_,
            model=f"model {round_}".encode(),
            trained_from=MODEL_CID,
            survivors=survivors,
            receipts=[signed(chain, a, round_, task), signed(chain, b, round_, task)],
            evidence={},
        )
    amount, proof = publisher.claim_for(b.address)

    assert publisher.cumulative == {a.address: 3 * REWARD, b.address: 2 * REWARD}
    assert chain.ledger(3).claim(task, b.address, amount, proof) == 2 * REWARD
    with pytest.raises(InvalidInput, match="already committed"):
        publisher.publish(
            2, model=b"x", trained_from=MODEL_CID, survivors=[], receipts=[], evidence={}
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
            trained_from=MODEL_CID,
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
    publisher.publish(1, model=b"round one", trained_from=sys.argv[5], survivors=[], receipts=[],
        evidence={})
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
        [sys.executable, "-c", _SERVER, slow.url, deployment, str(task), str(tmp_path), MODEL_CID]
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
    resumed.publish(
        2, model=b"round two", trained_from=MODEL_CID, survivors=[], receipts=[], evidence={}
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
                1, model=b"m", trained_from=MODEL_CID, survivors=[], receipts=[], evidence={}
            )
    finally:
        proxy.close()

    assert outage_until, "the commit never went through the outage"
    assert any("retrying in" in r.message for r in caplog.records)
    assert chain.ledger(0).task(task).last_round == 1
    assert chain.w3.eth.get_transaction_count(aggregator) == sent_before + 1
