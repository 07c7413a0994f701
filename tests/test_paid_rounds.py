"""Paid rounds end to end: Flower simulation under DP + SecAgg+, device receipts over masked
uploads, every round stored by CID and committed on a real anvil chain, then one claim each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chain_helpers import MODEL_CID, Chain, open_publisher

from fedmarket import FederationPlan, SimulatedFleet, run_federation
from fedmarket.market.bundle import ReceiptsBundle
from fedmarket.market.terms import MarketTerms
from fedmarket.models.weights import Weights, weights_to_bytes
from fedmarket.privacy import DpConfig, TrainConfig
from fedmarket.receipts import verify_receipt
from fedmarket.server.results import RoundResult
from fedmarket.store import LocalStore
from strategies import FedAvg

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REWARD = 5


def test_paid_rounds_store_commit_and_pay_each_contributed_update(
    chain: Chain, tmp_path: Path
) -> None:
    sponsor = chain.ledger(0)
    task = sponsor.create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=REWARD,
        budget=1000,
        spec_cid=MODEL_CID,
    )
    publisher = open_publisher(chain, task, tmp_path)
    store = LocalStore(tmp_path / "store")
    fleet = SimulatedFleet(num_devices=3, home=tmp_path, epsilon_cap=10.0, payout_seed="test")
    terms = MarketTerms(task, chain.deployment.chain_id, chain.deployment.market)
    plan = FederationPlan(
        rounds=2,
        train=TrainConfig(learning_rate=2.5, momentum=0.5, local_epochs=1, batch_size=64),
        dp=DpConfig(noise_multiplier=1.5, max_grad_norm=0.5),
        market=terms,
    )
    published: list[RoundResult] = []

    def publish(result: RoundResult, weights: Weights) -> None:
        assert result.trained_from is not None
        publisher.publish(
            result.round,
            model=weights_to_bytes(weights),
            trained_from=result.trained_from,
            survivors={s.receipt.device for s in result.receipts},
            receipts=result.receipts,
            evidence={"accuracy": result.accuracy, "trained": list(result.trained)},
        )
        published.append(result)

    run_federation(fleet, plan, FedAvg(), on_model=publish)

    devices = [fleet.profile(i).account for i in range(3)]
    addresses = sorted(a.address for a in devices if a is not None)
    rounds = publisher.rounds
    assert [r.round for r in rounds] == [1, 2]
    assert published[1].trained_from == rounds[0].model_cid  # round 2 trained on round 1's model
    for result, stored in zip(published, rounds, strict=True):
        assert sorted(s.receipt.device for s in result.receipts) == addresses
        for signed in result.receipts:
            verify_receipt(
                signed.receipt,
                signed.signature,
                chain_id=chain.deployment.chain_id,
                market=chain.deployment.market,
            )
            assert signed.receipt.model_cid == result.trained_from
        bundle = ReceiptsBundle.from_bytes(store.get_bytes(stored.bundle_cid))
        assert len(bundle.receipts) == 3
        evidence = json.loads(store.get_bytes(stored.evidence_cid))
        assert evidence["paid"] == addresses
        assert store.verify(stored.model_cid) > 0
    state = sponsor.task(task)
    assert (state.last_round, state.committed) == (2, 2 * 3 * REWARD)
    for account in devices:
        assert account is not None
        amount, proof = publisher.claim_for(account.address)
        assert chain.ledger(0).claim(task, account.address, amount, proof) == 2 * REWARD
        assert sponsor.balance(account.address) == 2 * REWARD
