"""Paid rounds end to end: Flower simulation under DP + SecAgg+, device receipts over masked
uploads, the aggregator's acknowledgements kept by the devices, every round's model sealed in the
store and committed on a real anvil chain, then one claim each.

One simulation (a module fixture) serves every test here: Flower simulations take tens of
seconds, and each test checks a different guarantee of the same run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from chain_helpers import CLOSE_GRACE, MODEL_CID, Chain, open_publisher
from cohorts import FEW_DEVICES, NO_COLLUSION
from nacl.signing import SigningKey

from fedmarket import FederationPlan, SimulatedFleet, run_federation
from fedmarket.acks import verify_ack
from fedmarket.device.acks import AckBook
from fedmarket.device.inclusion import transcript_problems
from fedmarket.market.bundle import ReceiptsBundle
from fedmarket.market.claims import rewards_of
from fedmarket.market.lineage import verify_lineage
from fedmarket.market.publisher import RoundPublisher
from fedmarket.models.weights import Weights, weights_to_bytes
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.receipts import verify_receipt
from fedmarket.secagg.keys import node_key_from_identity
from fedmarket.server.results import RoundResult
from fedmarket.store import LocalStore
from fedmarket.types import TaskId
from strategies import FedAvg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REWARD = 5


@dataclass
class PaidRun:
    chain: Chain
    task: TaskId
    publisher: RoundPublisher
    store: LocalStore
    fleet: SimulatedFleet
    state_path: Path
    published: list[RoundResult]
    models: list[Weights]  # the global model after each round, as the server computed it

    @property
    def addresses(self) -> list[str]:
        accounts = [self.fleet.profile(i).account for i in range(self.fleet.num_devices)]
        return sorted(a.address for a in accounts if a is not None)


@pytest.fixture(scope="module")
def paid(anvil_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PaidRun]:
    """Two paid rounds of three devices, published as they end; the chain rolls back after."""
    chain = anvil_chain
    snapshot = chain.snapshot()
    folder = tmp_path_factory.mktemp("paid")
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=1000,
        spec_cid=MODEL_CID,
    )
    publisher = open_publisher(chain, task, folder)
    fleet = SimulatedFleet(
        num_devices=3,
        home=folder,
        epsilon_cap=10.0,
        payout_seed="test",
        secagg_policy=NO_COLLUSION,
    )
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(
            learning_rate=2.5, momentum=0.5, sample_rate=0.33, local_steps=3, batch_size=64
        ),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
        market=publisher.terms,
        secagg=FEW_DEVICES,
    )
    published: list[RoundResult] = []
    models: list[Weights] = []

    def publish(result: RoundResult, weights: Weights) -> None:
        assert result.trained_from is not None
        publisher.publish(
            result.round,
            model=weights_to_bytes(weights),
            trained_from=result.trained_from,
            survivors={s.receipt.device for s in result.receipts},
            receipts=result.receipts,
            evidence={"accuracy": result.accuracy, "trained": list(result.trained)},
            transcript=result.transcript.to_json() if result.transcript else None,
        )
        published.append(result)
        models.append({name: np.array(tensor, copy=True) for name, tensor in weights.items()})

    run_federation(fleet, plan, FedAvg(), on_model=publish, payer=publisher)
    yield PaidRun(
        chain,
        task,
        publisher,
        LocalStore(folder / "store"),
        fleet,
        folder / "publisher.json",
        published,
        models,
    )
    chain.revert(snapshot)


def test_paid_rounds_store_commit_and_pay_each_contributed_update(paid: PaidRun) -> None:
    chain, task, publisher, store = paid.chain, paid.task, paid.publisher, paid.store
    sponsor = chain.ledger(0)
    addresses = paid.addresses
    rounds = publisher.rounds
    assert [r.round for r in rounds] == [1, 2]
    # round 2 trained on round 1's model: its receipts name round 1's commitment
    assert paid.published[1].trained_from == bytes.fromhex(rounds[0].model_commitment)
    for result, stored in zip(paid.published, rounds, strict=True):
        assert sorted(s.receipt.device for s in result.receipts) == addresses
        for signed in result.receipts:
            verify_receipt(
                signed.receipt,
                signed.signature,
                chain_id=chain.deployment.chain_id,
                market=chain.deployment.market,
            )
            assert signed.receipt.trained_from == result.trained_from
        bundle = ReceiptsBundle.from_bytes(store.get_bytes(stored.bundle_cid))
        assert len(bundle.receipts) == 3
        evidence = json.loads(store.get_bytes(stored.evidence_cid))
        assert evidence["paid"] == addresses
        assert store.verify(stored.model_cid) > 0
    state = sponsor.task(task)
    assert (state.last_round, state.committed) == (2, 2 * 3 * REWARD)
    chain.finalize()  # the roots' challenge window passes: they pay
    for address in addresses:
        amount, proof = publisher.claim_for(address)
        assert chain.ledger(0).claim(task, 2, address, amount, proof) == 2 * REWARD
        assert sponsor.balance(address) == 2 * REWARD


def test_each_paid_device_finds_its_upload_in_every_committed_transcript(paid: PaidRun) -> None:
    """Issue 16: the committed bundle carries the round's SecAgg+ transcript; each device checks
    that its receipt's upload is in the sum, under its node key and signature."""
    ledger = paid.chain.ledger(0)
    for index in range(paid.fleet.num_devices):
        account = paid.fleet.profile(index).account
        assert account is not None
        node_key = bytes(node_key_from_identity(bytes(account.key)).verify_key)
        mine = transcript_problems(ledger, paid.store, account.address, node_key)
        assert (mine.checked, mine.missing, mine.problems) == (2, 0, [])
        stranger = bytes(SigningKey.generate().verify_key)  # not its key: not its upload
        theirs = transcript_problems(ledger, paid.store, account.address, stranger)
        assert theirs.checked == 2
        assert len(theirs.problems) == 2
        assert "not in the transcript" in theirs.problems[0]


def test_every_paid_device_keeps_an_ack_for_every_round_it_was_paid_in(paid: PaidRun) -> None:
    """What each device's ack mod kept during the Flower rounds: one ack per paid round, signed by
    the task's aggregator, for the upload the round's bundle pays, with exactly the cumulative
    reward the committed root gives it; the publisher keeps no unpaid ack once committed."""
    chain, deployment = paid.chain, paid.chain.deployment
    lineage = verify_lineage(
        chain.ledger(0),
        paid.store,
        paid.task,
        chain_id=deployment.chain_id,
        market=deployment.market,
    )
    uploads = {
        stored.round: {
            s.receipt.device: s.receipt.upload_digest
            for s in ReceiptsBundle.from_bytes(paid.store.get_bytes(stored.bundle_cid)).receipts
        }
        for stored in paid.publisher.rounds
    }
    for address in paid.addresses:
        book = AckBook(paid.fleet.home, address)
        kept = book.acks(chain_id=deployment.chain_id, market=deployment.market, task=paid.task)
        paid_in = [r.round for r in paid.publisher.rounds if address in r.paid]
        assert sorted(kept) == paid_in == [1, 2], address
        for round_, (ack, signature) in kept.items():
            verify_ack(
                ack,
                signature,
                aggregator=chain.accounts[1].address,
                chain_id=deployment.chain_id,
                market=deployment.market,
            )
            assert (ack.task, ack.round, ack.device) == (paid.task, round_, address)
            assert ack.upload_digest == uploads[round_][address]
            assert ack.cumulative_amount == lineage.rewards_at[round_][address] == round_ * REWARD
        # The ack never says more than the root; it pays directly only once commits stop
        (owed,) = rewards_of(chain.ledger(0), paid.store, address, acks=book)
        assert (max(owed.pending, owed.earned), owed.acked) == (2 * REWARD, 0)
    chain.finalize()
    chain.ledger(0).close_task(paid.task)
    chain.advance(CLOSE_GRACE + 1)
    for address in paid.addresses:
        book = AckBook(paid.fleet.home, address)
        (owed,) = rewards_of(chain.ledger(0), paid.store, address, acks=book)
        assert (owed.pending, owed.earned, owed.acked) == (0, 2 * REWARD, 2 * REWARD)
    state = RoundPublisher.read_state(paid.state_path)
    assert state is not None
    assert state.acked == {}
    assert state.pending is None


# -- no model in the clear ----------------------------------------------------------------------

WINDOW = 48  # bytes of plaintext a leak would have to show
SAMPLES = 64  # windows per model or tensor


def plaintext_windows(data: bytes) -> set[bytes]:
    """Up to SAMPLES windows spread over ``data`` (its start included), leaving out windows of
    low variety (runs of zeros and the like) that ciphertext or JSON could hold by chance."""
    if len(data) <= WINDOW:
        return {data}
    starts = np.linspace(0, len(data) - WINDOW, num=SAMPLES, dtype=np.int64)
    windows = {data[s : s + WINDOW] for s in starts.tolist()}
    return {w for w in windows if len(set(w)) >= 12}


def leaks(store_root: Path, windows: set[bytes]) -> list[str]:
    """Every file under the store (blocks, pins, temp files) that holds one of ``windows``."""
    found = []
    for path in sorted(store_root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(w in data for w in windows):
                found.append(str(path.relative_to(store_root)))
    return found


def test_no_round_model_is_readable_from_the_store_without_the_key(
    paid: PaidRun, tmp_path: Path
) -> None:
    deployment = paid.chain.deployment
    windows: set[bytes] = set()
    for model in paid.models:
        windows |= plaintext_windows(weights_to_bytes(model))
    for tensor in paid.models[-1].values():
        windows |= plaintext_windows(np.ascontiguousarray(tensor, dtype="<f4").tobytes())
    assert len(windows) > SAMPLES  # the models are large enough to sample
    # The scan finds a model stored in the clear (it can fail) ...
    control = LocalStore(tmp_path / "control")
    control.put_bytes(weights_to_bytes(paid.models[-1]))
    assert leaks(control.root, windows)

    # ... and finds nothing of any round's model in the task's store.
    assert leaks(paid.store.root, windows) == []
    # Yet the aggregator opens every committed commitment with its task secret.
    ledger = paid.chain.ledger(0)
    for stored, model in zip(paid.publisher.rounds, paid.models, strict=True):
        sealed = paid.publisher.sealed_model(stored.round)
        on_chain = ledger.round_state(paid.task, stored.round)
        assert on_chain is not None
        assert sealed.commitment == on_chain.model_commitment
        assert sealed.model == weights_to_bytes(model)
        lineage = verify_lineage(
            ledger,
            paid.store,
            paid.task,
            stored.round,
            chain_id=deployment.chain_id,
            market=deployment.market,
            model=sealed,
        )
        assert lineage.model_opened
