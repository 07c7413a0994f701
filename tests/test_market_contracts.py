"""The data market on a real anvil node with the committed compiled artifacts."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from chain_helpers import EMPTY_CID, MODEL_CID, Chain, helper_artifact
from chain_helpers import commit as commit_round
from eth_account.signers.local import LocalAccount
from web3 import Web3

from fedmarket.crypto import AssetKey, Identity, open_sealed_key, seal_key
from fedmarket.exceptions import ContractRejected, ReceiptInvalid
from fedmarket.ledger import PurchaseState, Web3Ledger
from fedmarket.ledger import errors as market_errors
from fedmarket.ledger.deploy import deploy_contract
from fedmarket.market.rewards import RewardTree
from fedmarket.receipts import Receipt, sign_receipt, verify_receipt
from fedmarket.types import TaskId

pytestmark = pytest.mark.integration

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
PACKAGE_ARTIFACTS = Path(__file__).resolve().parents[1] / "fedmarket" / "contracts"
TOKEN = 10**18


def new_task(chain: Chain, *, budget: int = 1000 * TOKEN, reward: int = TOKEN) -> TaskId:
    sponsor = chain.ledger(0)
    return sponsor.create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=reward,
        budget=budget,
        spec_cid=EMPTY_CID,
    )


def commit(chain: Chain, task: TaskId, round_: int, tree: RewardTree) -> bool:
    return commit_round(chain.ledger(1), task, round_, tree)


def devices(chain: Chain) -> list[LocalAccount]:
    return chain.accounts[2:7]


# -- artifacts ---------------------------------------------------------------------------------


def test_committed_artifacts_match_a_fresh_compile(tmp_path: Path) -> None:
    subprocess.run(
        ["node", "build.mjs", "--out", str(tmp_path)],
        cwd=CONTRACTS,
        check=True,
        capture_output=True,
        timeout=300,
    )
    for group, committed in (
        ("product", PACKAGE_ARTIFACTS),
        ("helpers", CONTRACTS / "test-artifacts"),
    ):
        fresh = sorted((tmp_path / group).glob("*.json"))
        assert [p.name for p in fresh] == sorted(p.name for p in committed.glob("*.json"))
        for path in fresh:
            assert json.loads(path.read_text()) == json.loads(
                (committed / path.name).read_text()
            ), f"{path.name} differs from the committed artifact: run `make contracts`"


# -- reward trees against @openzeppelin/merkle-tree ---------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64, 101])
def test_reward_tree_matches_openzeppelin_merkle_tree(count: int) -> None:
    accounts = [Web3.to_checksum_address(f"0x{index + 1:040x}") for index in range(count)]
    amounts = {account: (index * 7919 + 1) * TOKEN for index, account in enumerate(accounts)}
    oracle = subprocess.run(
        ["node", "merkle_oracle.mjs"],
        cwd=CONTRACTS,
        input=json.dumps([[a, str(v)] for a, v in amounts.items()]),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = json.loads(oracle.stdout)

    tree = RewardTree.build(amounts)

    assert "0x" + tree.root.hex() == expected["root"]
    for account in accounts:
        assert ["0x" + p.hex() for p in tree.proof(account)] == expected["proofs"][account]


# -- rewards -----------------------------------------------------------------------------------


def test_one_claim_pays_any_number_of_rounds(chain: Chain) -> None:
    task = new_task(chain)
    first, second = devices(chain)[:2]
    cumulative = {first.address: 0, second.address: 0}
    for round_ in (1, 2, 3):
        cumulative[first.address] += TOKEN
        if round_ != 2:  # the second device dropped out of round 2
            cumulative[second.address] += TOKEN
        assert commit(chain, task, round_, RewardTree.build(cumulative))
    tree = RewardTree.build(cumulative)
    ledger = chain.ledger(2)

    paid = ledger.claim(task, first.address, 3 * TOKEN, tree.proof(first.address))

    assert paid == 3 * TOKEN
    assert ledger.balance(first.address) == 3 * TOKEN
    assert ledger.claimed(task, first.address) == 3 * TOKEN
    state = ledger.task(task)
    assert (state.last_round, state.committed, state.escrow) == (3, 5 * TOKEN, 1000 * TOKEN)


def test_claims_after_more_rounds_pay_only_the_difference(chain: Chain) -> None:
    task = new_task(chain)
    device = devices(chain)[0]
    ledger = chain.ledger(2)
    tree1 = RewardTree.build({device.address: TOKEN})
    commit(chain, task, 1, tree1)
    assert ledger.claim(task, device.address, TOKEN, tree1.proof(device.address)) == TOKEN
    tree3 = RewardTree.build({device.address: 3 * TOKEN})
    commit(chain, task, 3, tree3)

    assert ledger.claim(task, device.address, 3 * TOKEN, tree3.proof(device.address)) == 2 * TOKEN
    assert ledger.balance(device.address) == 3 * TOKEN


def test_recommitting_the_same_round_is_a_no_op(chain: Chain) -> None:
    task = new_task(chain)
    tree = RewardTree.build({devices(chain)[0].address: TOKEN})
    assert commit(chain, task, 1, tree) is True
    block = chain.w3.eth.block_number

    assert commit(chain, task, 1, tree) is False  # nothing sent
    assert chain.w3.eth.block_number == block


def test_close_refunds_unspent_escrow_and_keeps_claims_open(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    device = devices(chain)[0]
    tree = RewardTree.build({device.address: 30 * TOKEN})
    commit(chain, task, 1, tree)
    sponsor = chain.ledger(0)
    before = sponsor.balance(sponsor.address)

    assert sponsor.close_task(task) == 70 * TOKEN

    assert sponsor.balance(sponsor.address) == before + 70 * TOKEN
    assert chain.ledger(2).claim(task, device.address, 30 * TOKEN, tree.proof(device.address))
    with pytest.raises(market_errors.TaskIsClosed, match="closed"):
        commit(chain, task, 2, tree)


# -- attacks fail cleanly ----------------------------------------------------------------------


def test_double_claim_fails(chain: Chain) -> None:
    task = new_task(chain)
    device = devices(chain)[0]
    tree = RewardTree.build({device.address: TOKEN, devices(chain)[1].address: TOKEN})
    commit(chain, task, 1, tree)
    ledger = chain.ledger(2)
    ledger.claim(task, device.address, TOKEN, tree.proof(device.address))

    with pytest.raises(market_errors.NothingToClaim, match="already claimed"):
        ledger.claim(task, device.address, TOKEN, tree.proof(device.address))
    assert ledger.balance(device.address) == TOKEN


@pytest.mark.parametrize("forgery", ["amount", "account", "proof"])
def test_forged_claims_fail(chain: Chain, forgery: str) -> None:
    task = new_task(chain)
    honest, thief = devices(chain)[:2]
    tree = RewardTree.build({honest.address: TOKEN, thief.address: TOKEN})
    commit(chain, task, 1, tree)
    ledger = chain.ledger(3)
    account, amount, proof = thief.address, TOKEN, tree.proof(thief.address)
    if forgery == "amount":
        amount = 500 * TOKEN
    elif forgery == "account":
        proof = tree.proof(honest.address)
    else:
        proof = [bytes(32)]

    with pytest.raises(market_errors.InvalidProof, match="latest reward tree"):
        ledger.claim(task, account, amount, proof)
    assert ledger.balance(thief.address) == 0


def test_commit_attacks_fail(chain: Chain) -> None:
    task = new_task(chain, budget=10 * TOKEN)
    device = devices(chain)[0]
    commit(chain, task, 5, RewardTree.build({device.address: 2 * TOKEN}))

    with pytest.raises(market_errors.RoundNotIncreasing, match="round 5 committed"):
        commit(chain, task, 4, RewardTree.build({device.address: 3 * TOKEN}))
    with pytest.raises(market_errors.ExceedsEscrow, match="exceed its escrow"):
        commit(chain, task, 6, RewardTree.build({device.address: 11 * TOKEN}))
    with pytest.raises(market_errors.CumulativeDecreased, match="only grow"):
        commit(chain, task, 6, RewardTree.build({device.address: TOKEN}))
    outsider = chain.ledger(5)
    with pytest.raises(market_errors.NotAggregator, match="not the aggregator"):
        outsider.commit_round(
            task,
            6,
            model_cid=MODEL_CID,
            bundle_cid=EMPTY_CID,
            rewards_root=bytes(32),
            cumulative_total=3 * TOKEN,
        )
    assert chain.ledger(0).task(task).last_round == 5


def test_every_market_error_explains_itself() -> None:
    for cls in market_errors.MarketRejected.__subclasses__():
        assert cls.advice != market_errors.MarketRejected.advice, cls
        assert issubclass(cls, ContractRejected)


# -- receipts ----------------------------------------------------------------------------------


def _receipt(device: str, *, task: int = 1, round_: int = 3) -> Receipt:
    return Receipt.for_update(
        task=task,
        round=round_,
        device=device,
        model_cid=MODEL_CID,
        upload_digest=hashlib.sha256(b"masked upload").digest(),
        weight=120,
        epsilon=2.3456789,
        delta=1e-5,
    )


def test_receipts_verify_in_python_and_on_chain(chain: Chain) -> None:
    device = devices(chain)[0]
    market = chain.deployment.market
    receipt = _receipt(device.address)
    signature = sign_receipt(receipt, device, chain_id=chain.deployment.chain_id, market=market)

    verify_receipt(receipt, signature, chain_id=chain.deployment.chain_id, market=market)
    assert chain.ledger(0).receipt_signer(receipt, signature) == device.address
    assert receipt.epsilon_micros == 2345679  # rounded up
    assert receipt.delta_e18 == 10**13


@pytest.mark.parametrize("replay", ["task", "round", "weight", "chain"])
def test_replayed_or_altered_receipts_are_rejected(chain: Chain, replay: str) -> None:
    device = devices(chain)[0]
    market, chain_id = chain.deployment.market, chain.deployment.chain_id
    signature = sign_receipt(_receipt(device.address), device, chain_id=chain_id, market=market)
    replayed = {
        "task": _receipt(device.address, task=2),
        "round": _receipt(device.address, round_=4),
        "weight": Receipt(**{**_receipt(device.address).__dict__, "weight": 4096}),
        "chain": _receipt(device.address),
    }[replay]
    other_chain = chain_id + 1 if replay == "chain" else chain_id

    with pytest.raises(ReceiptInvalid, match="altered or replayed"):
        verify_receipt(replayed, signature, chain_id=other_chain, market=market)
    if replay != "chain":
        assert chain.ledger(0).receipt_signer(replayed, signature) != device.address


# -- sales -------------------------------------------------------------------------------------


def _listing(chain: Chain, task: TaskId | None, key: AssetKey, *, price: int = 50 * TOKEN) -> int:
    return chain.ledger(1).list_asset(
        task=task,
        asset_cid=MODEL_CID,
        price=price,
        key_commitment=key.commitment,
        metadata_cid=EMPTY_CID,
        contributors_bps=2000 if task else 0,
    )


def _buyer(chain: Chain) -> Web3Ledger:
    treasury = chain.ledger(0)
    treasury.transfer(chain.accounts[8].address, 100 * TOKEN)
    return chain.ledger(8)


def test_sale_in_one_transaction_with_sealed_key_and_contributor_share(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    key, identity = AssetKey.generate(), Identity.generate()
    listing = _listing(chain, task, key)
    buyer = _buyer(chain)
    sent_before = chain.w3.eth.get_transaction_count(buyer.address)

    purchase = buyer.buy(listing, buyer_key=identity.public_key, max_price=50 * TOKEN)

    assert chain.w3.eth.get_transaction_count(buyer.address) == sent_before + 1  # one tx
    record = buyer.purchase(purchase)
    assert (record.state, record.buyer_key) == (PurchaseState.PENDING, identity.public_key)
    seller = chain.ledger(1)
    seller.deliver_key(purchase, seal_key(key, record.buyer_key))
    assert seller.owed(seller.address) == 40 * TOKEN
    assert seller.task(task).escrow == 110 * TOKEN  # 20 % joined the reward pool
    assert seller.withdraw() == 40 * TOKEN
    assert seller.balance(seller.address) == 40 * TOKEN
    event = chain.w3.eth.contract(
        address=chain.deployment.market, abi=_market_abi()
    ).events.KeyDelivered.get_logs(from_block=0)
    opened = open_sealed_key(bytes(event[-1]["args"]["sealedKey"]), identity)
    opened.check_commitment(seller.listing(listing).key_commitment)


def _market_abi() -> list[dict[str, object]]:
    from fedmarket.contracts import load_artifact

    return load_artifact("DataMarket").abi


def test_refund_only_after_deadline_only_buyer_only_undelivered(chain: Chain) -> None:
    key = AssetKey.generate()
    listing = _listing(chain, None, key, price=10 * TOKEN)
    buyer = _buyer(chain)
    purchase = buyer.buy(listing, buyer_key=bytes(32), max_price=10 * TOKEN)

    with pytest.raises(market_errors.DeliveryWindowOpen, match="after its delivery deadline"):
        buyer.refund(purchase)
    chain.advance(3601)
    with pytest.raises(market_errors.NotBuyer, match="only its buyer"):
        chain.ledger(5).refund(purchase)
    with pytest.raises(market_errors.DeliveryWindowClosed, match="has passed"):
        chain.ledger(1).deliver_key(purchase, b"late")
    assert buyer.refund(purchase) == 10 * TOKEN
    assert buyer.balance(buyer.address) == 100 * TOKEN
    with pytest.raises(market_errors.NotPending, match="already settled"):
        buyer.refund(purchase)


def test_no_refund_after_delivery_and_seller_paid_only_on_delivery(chain: Chain) -> None:
    key = AssetKey.generate()
    listing = _listing(chain, None, key, price=10 * TOKEN)
    buyer = _buyer(chain)
    purchase = buyer.buy(listing, buyer_key=bytes(32), max_price=10 * TOKEN)
    seller = chain.ledger(1)
    assert seller.owed(seller.address) == 0
    with pytest.raises(market_errors.NotSeller):
        chain.ledger(5).deliver_key(purchase, b"x" * 80)
    seller.deliver_key(purchase, b"x" * 80)
    chain.advance(3601)

    with pytest.raises(market_errors.NotPending):
        buyer.refund(purchase)
    assert seller.owed(seller.address) == 10 * TOKEN


def test_price_change_in_flight_is_refused(chain: Chain) -> None:
    listing = _listing(chain, None, AssetKey.generate(), price=60 * TOKEN)
    buyer = _buyer(chain)
    with pytest.raises(market_errors.PriceChanged, match="above the"):
        buyer.buy(listing, buyer_key=bytes(32), max_price=50 * TOKEN)
    assert buyer.balance(buyer.address) == 100 * TOKEN


# -- reentrancy --------------------------------------------------------------------------------


def _deploy(chain: Chain, abi: list[dict[str, object]], bytecode: str, *args: object) -> str:
    return deploy_contract(chain.w3, chain.accounts[0], abi, bytecode, *args)


def test_reentrant_token_cannot_claim_twice(chain: Chain) -> None:
    from fedmarket.contracts import load_artifact
    from fedmarket.ledger import Deployment

    hostile = helper_artifact("ReentrantToken")
    token = _deploy(chain, hostile["abi"], hostile["bytecode"], 10**6 * TOKEN)
    market_artifact = load_artifact("DataMarket")
    market = _deploy(chain, market_artifact.abi, market_artifact.bytecode, token, 3600)
    sponsor_account, device = chain.accounts[0], devices(chain)[0]
    w3 = chain.w3
    evil = w3.eth.contract(address=token, abi=hostile["abi"])
    deployment = Deployment(chain.deployment.chain_id, token, market, w3.eth.block_number)
    sponsor = Web3Ledger(w3, deployment, sponsor_account)
    sponsor.approve(market, 100 * TOKEN)
    market_contract = w3.eth.contract(address=market, abi=market_artifact.abi)
    sponsor._transact(  # the hostile token has no permit: plain createTask
        market_contract.functions.createTask(
            chain.accounts[1].address, TOKEN, 100 * TOKEN, b"\x01"
        ),
        "create task",
    )
    tree = RewardTree.build({device.address: 5 * TOKEN, chain.accounts[3].address: TOKEN})
    Web3Ledger(w3, deployment, chain.accounts[1]).commit_round(
        TaskId(1),
        1,
        model_cid=MODEL_CID,
        bundle_cid=EMPTY_CID,
        rewards_root=tree.root,
        cumulative_total=6 * TOKEN,
    )
    proof = tree.proof(device.address)
    attack = market_contract.encode_abi("claim", [1, device.address, 5 * TOKEN, proof])
    sponsor._transact(evil.functions.arm(market, attack), "arm")

    claimer = Web3Ledger(w3, deployment, device)
    assert claimer.claim(TaskId(1), device.address, 5 * TOKEN, proof) == 5 * TOKEN

    assert evil.functions.attempted().call() is True
    assert evil.functions.reentered().call() is False  # the guard refused the inner claim
    assert evil.functions.balanceOf(device.address).call() == 5 * TOKEN
