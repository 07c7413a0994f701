"""The data market (v2) on a real anvil node with the committed compiled artifacts.

Honest flows first, then one test per attack of the threat model (docs: THREATS.md), each
showing the attacker takes nothing while the honest party is still paid in full. Roots pay only
once final (their challenge window over, no challenge open): tests call ``chain.finalize()``
before claiming or listing, and the challenge tests show what happens inside the window.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from chain_helpers import (
    CHALLENGE_WINDOW,
    CLOSE_GRACE,
    DISPUTE_WINDOW,
    EMPTY_CID,
    MODEL_CID,
    MODEL_COMMITMENT,
    RESPONSE_WINDOW,
    Chain,
    helper_artifact,
)
from chain_helpers import commit as commit_round
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError

from fedmarket.acks import ACK_TYPES, Ack, sign_ack
from fedmarket.contracts import load_artifact
from fedmarket.crypto import AssetKey, G1Point, KeyDelivery, OneTimeKey, deliver_key, open_delivery
from fedmarket.crypto.key_delivery import FIELD
from fedmarket.exceptions import (
    ContractRejected,
    InvalidInput,
    KeyCommitmentMismatch,
    ReceiptInvalid,
)
from fedmarket.ledger import Deployment, PurchaseState, Web3Ledger
from fedmarket.ledger import errors as market_errors
from fedmarket.ledger.base import ChallengeState
from fedmarket.ledger.deploy import deploy_contract, send_call
from fedmarket.market.rewards import RewardTree, SumNode, encode_proof, leaf, parent, verify
from fedmarket.receipts import Receipt, eip712_domain, sign_receipt, verify_receipt
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = pytest.mark.integration

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
PACKAGE_ARTIFACTS = Path(__file__).resolve().parents[1] / "fedmarket" / "contracts"
TOKEN = 10**18
SPONSOR, AGGREGATOR, ATTACKER, BUYER, SYBIL = 0, 1, 7, 8, 9
A, B, C, D = 2, 3, 4, 5  # honest devices
UPLOAD = hashlib.sha256(b"masked upload").digest()


# -- small constructors ------------------------------------------------------------------------


def address(chain: Chain, index: int) -> str:
    return chain.accounts[index].address


def give(chain: Chain, index: int, amount: int) -> None:
    chain.ledger(SPONSOR).transfer(address(chain, index), amount)


def new_task(
    chain: Chain,
    *,
    budget: int = 1000 * TOKEN,
    sponsor: int = SPONSOR,
    aggregator: int = AGGREGATOR,
) -> TaskId:
    return chain.ledger(sponsor).create_task(
        aggregator=address(chain, aggregator),
        reward_per_update=TOKEN,
        budget=budget,
        spec_cid=EMPTY_CID,
    )


def tree_of(chain: Chain, amounts: dict[int, int]) -> RewardTree:
    return RewardTree.build({address(chain, i): v for i, v in amounts.items()})


def commit(
    chain: Chain, task: TaskId, round_: int, tree: RewardTree, *, aggregator: int = AGGREGATOR
) -> bool:
    return commit_round(chain.ledger(aggregator), task, round_, tree)


def claim(chain: Chain, task: TaskId, round_: int, tree: RewardTree, device: int) -> int:
    """``device`` claims its amount in ``tree`` (committed as ``round_``), sending it itself."""
    account = address(chain, device)
    return chain.ledger(device).claim(
        task, round_, account, tree.amounts[account], tree.proof(account)
    )


def challenge(
    chain: Chain,
    task: TaskId,
    round_: int,
    evidence_round: int,
    evidence: RewardTree,
    device: int,
    *,
    by: int | None = None,
) -> None:
    """``by`` (default: ``device`` itself) challenges ``round_`` for ``device`` with the
    device's leaf in ``evidence`` (committed as ``evidence_round``)."""
    account = address(chain, device)
    chain.ledger(device if by is None else by).challenge(
        task,
        round_,
        evidence_round=evidence_round,
        account=account,
        cumulative_amount=evidence.amounts[account],
        proof=evidence.proof(account),
    )


def answer(
    chain: Chain, task: TaskId, round_: int, tree: RewardTree, device: int, *, by: int = AGGREGATOR
) -> None:
    """``by`` answers ``device``'s challenge of ``round_`` with its leaf in ``tree``."""
    account = address(chain, device)
    chain.ledger(by).answer(task, round_, account, tree.amounts[account], tree.proof(account))


def market_balance(chain: Chain) -> int:
    return chain.ledger(SPONSOR).balance(chain.deployment.market)


def ack(chain: Chain, task: TaskId, round_: int, device: int, amount: int) -> Ack:
    return Ack(task, round_, address(chain, device), UPLOAD, amount)


def signed(chain: Chain, item: Ack, signer: int = AGGREGATOR) -> bytes:
    return sign_ack(
        item,
        chain.accounts[signer],
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
    )


def hand_signed_ack(
    chain: Chain, task: TaskId, round_: int, device: int, amount: int
) -> tuple[tuple[object, ...], bytes]:
    """An ``Ack`` struct the aggregator signs by EIP-712 directly, past the client's checks
    (the ``Ack`` class refuses some of what the contract must refuse on its own)."""
    struct = {
        "task": task,
        "round": round_,
        "device": address(chain, device),
        "uploadDigest": UPLOAD,
        "cumulativeAmount": amount,
    }
    domain = eip712_domain(chain.deployment.chain_id, chain.deployment.market)
    signature = chain.accounts[AGGREGATOR].sign_typed_data(domain, ACK_TYPES, struct).signature
    return tuple(struct.values()), bytes(signature)


def raw_market(chain: Chain) -> Contract:
    """The market contract through web3 alone: no client checks in the way."""
    return chain.w3.eth.contract(
        address=chain.w3.to_checksum_address(chain.deployment.market),
        abi=load_artifact("DataMarket").abi,
    )


def send_raw(chain: Chain, sender: int, call: ContractFunction) -> None:
    """Send ``call`` as ``sender`` through web3 directly; a revert raises the market's custom
    error as the client would name it (it reverts at gas estimation: nothing is sent)."""
    try:
        send_call(chain.w3, chain.accounts[sender], call)
    except ContractCustomError as exc:
        data = bytes.fromhex(str(exc.data).removeprefix("0x"))
        error = market_errors.RevertDecoder([load_artifact("DataMarket").abi]).decode(data)
        if error is None:
            raise
        raise error from None


def list_round(
    chain: Chain,
    task: TaskId,
    round_: int,
    key: AssetKey,
    *,
    price: int = 50 * TOKEN,
    bps: int = 2000,
    seller: int = AGGREGATOR,
) -> ListingId:
    return chain.ledger(seller).list_asset(
        task=task,
        round=round_,
        asset_cid=MODEL_CID,
        price=price,
        key_commitment=key.commitment,
        metadata_cid=EMPTY_CID,
        contributors_bps=bps,
    )


def buy(
    chain: Chain, listing: ListingId, price: int, buyer: int = BUYER
) -> tuple[PurchaseId, OneTimeKey]:
    one_time = OneTimeKey.generate()
    purchase = chain.ledger(buyer).buy(listing, buyer_key=one_time.public, max_price=price)
    return purchase, one_time


def delivery_of(chain: Chain, purchase: PurchaseId, key: AssetKey) -> KeyDelivery:
    """What a seller posts to deliver ``key`` to ``purchase``'s buyer."""
    return deliver_key(
        key,
        chain.ledger(SPONSOR).buyer_key(purchase),
        purchase=purchase,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
    )


def opened(chain: Chain, purchase: PurchaseId, one_time: OneTimeKey) -> AssetKey:
    posted = chain.ledger(BUYER).key_delivery(purchase)
    assert posted is not None
    return open_delivery(
        posted,
        one_time,
        purchase=purchase,
        chain_id=chain.deployment.chain_id,
        market=chain.deployment.market,
    )


def unchecked_point(x: int, y: int) -> G1Point:
    """A G1Point that skips the client's checks, to show the contract's own."""
    point = object.__new__(G1Point)
    object.__setattr__(point, "x", x)
    object.__setattr__(point, "y", y)
    return point


def sold_round(chain: Chain, *, bps: int = 2000) -> tuple[TaskId, ListingId, AssetKey]:
    """A task whose round 1 pays device A 10 tokens, listed by its aggregator; a funded buyer."""
    task = new_task(chain, budget=100 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    chain.finalize()
    key = AssetKey.generate()
    listing = list_round(chain, task, 1, key, bps=bps)
    give(chain, BUYER, 100 * TOKEN)
    return task, listing, key


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


# -- rewards -----------------------------------------------------------------------------------


def test_one_claim_pays_any_number_of_rounds(chain: Chain) -> None:
    task = new_task(chain)
    cumulative = {A: 0, B: 0}
    for round_ in (1, 2, 3):
        cumulative[A] += TOKEN
        if round_ != 2:  # B dropped out of round 2
            cumulative[B] += TOKEN
        assert commit(chain, task, round_, tree_of(chain, cumulative))
    tree = tree_of(chain, cumulative)
    chain.finalize()

    paid = claim(chain, task, 3, tree, A)

    assert paid == 3 * TOKEN
    assert chain.ledger(A).balance(address(chain, A)) == 3 * TOKEN
    assert chain.ledger(A).claimed(task, address(chain, A)) == 3 * TOKEN
    state = chain.ledger(SPONSOR).task(task)
    assert (state.last_round, state.committed, state.escrow, state.paid) == (
        3,
        5 * TOKEN,
        1000 * TOKEN,
        3 * TOKEN,
    )
    stored = chain.ledger(SPONSOR).round_state(task, 3)
    assert stored is not None
    assert (stored.rewards_root, stored.model_commitment, stored.cumulative_total) == (
        tree.root,
        MODEL_COMMITMENT,
        5 * TOKEN,
    )
    assert stored.final_at == stored.committed_at + CHALLENGE_WINDOW
    assert (stored.open_challenges, stored.voided) == (0, False)
    assert stored.final(chain.ledger(SPONSOR).now())
    assert not state.frozen
    assert chain.ledger(SPONSOR).round_state(task, 4) is None


def test_claims_after_more_rounds_pay_only_the_difference(chain: Chain) -> None:
    task = new_task(chain)
    tree1 = tree_of(chain, {A: TOKEN})
    commit(chain, task, 1, tree1)
    chain.finalize()
    assert claim(chain, task, 1, tree1, A) == TOKEN
    tree3 = tree_of(chain, {A: 3 * TOKEN})
    commit(chain, task, 3, tree3)
    chain.finalize()

    assert claim(chain, task, 3, tree3, A) == 2 * TOKEN
    assert chain.ledger(A).balance(address(chain, A)) == 3 * TOKEN
    with pytest.raises(market_errors.NothingToClaim, match="already claimed"):
        claim(chain, task, 1, tree1, A)  # an older root pays nothing more


def test_recommitting_the_same_round_is_a_no_op(chain: Chain) -> None:
    task = new_task(chain)
    tree = tree_of(chain, {A: TOKEN})
    assert commit(chain, task, 1, tree) is True
    block = chain.w3.eth.block_number

    assert commit(chain, task, 1, tree) is False  # nothing sent
    assert chain.w3.eth.block_number == block


def test_double_claim_fails(chain: Chain) -> None:
    task = new_task(chain)
    tree = tree_of(chain, {A: TOKEN, B: TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    claim(chain, task, 1, tree, A)

    with pytest.raises(market_errors.NothingToClaim, match="already claimed"):
        claim(chain, task, 1, tree, A)
    assert chain.ledger(A).balance(address(chain, A)) == TOKEN


@pytest.mark.parametrize("forgery", ["amount", "account", "proof", "sum", "round"])
def test_forged_claims_fail(chain: Chain, forgery: str) -> None:
    task = new_task(chain)
    tree = tree_of(chain, {A: TOKEN, SYBIL: TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    thief = address(chain, SYBIL)
    round_, amount, proof = 1, TOKEN, list(tree.proof(thief))
    if forgery == "amount":
        amount = 500 * TOKEN
    elif forgery == "account":
        proof = list(tree.proof(address(chain, A)))
    elif forgery == "proof":
        proof = [SumNode(bytes(32), 0)]
    elif forgery == "sum":  # A's sibling node claimed to hold less, so a bigger leaf adds up
        amount, proof = TOKEN + TOKEN // 2, [SumNode(proof[0].hash, TOKEN // 2)]
    else:
        round_ = 2  # not committed: refused before any proof is checked
    before = chain.ledger(SYBIL).balance(thief)

    expected = market_errors.UnknownRound if forgery == "round" else market_errors.InvalidProof
    with pytest.raises(expected):
        chain.ledger(SYBIL).claim(task, round_, thief, amount, proof)
    assert chain.ledger(SYBIL).balance(thief) == before


def test_commit_attacks_fail(chain: Chain) -> None:
    task = new_task(chain, budget=10 * TOKEN)
    commit(chain, task, 5, tree_of(chain, {A: 2 * TOKEN}))

    with pytest.raises(market_errors.RoundNotIncreasing, match="round 5 committed"):
        commit(chain, task, 4, tree_of(chain, {A: 3 * TOKEN}))
    with pytest.raises(market_errors.ExceedsEscrow, match="exceed its escrow"):
        commit(chain, task, 6, tree_of(chain, {A: 11 * TOKEN}))
    with pytest.raises(market_errors.CumulativeDecreased, match="only grow"):
        commit(chain, task, 6, tree_of(chain, {A: TOKEN}))
    with pytest.raises(market_errors.ZeroCommitment, match="model commitment is zero"):
        chain.ledger(AGGREGATOR).commit_round(
            task,
            6,
            model_commitment=bytes(32),
            model_cid=MODEL_CID,
            bundle_cid=EMPTY_CID,
            rewards_root=bytes(32),
            cumulative_total=3 * TOKEN,
        )
    with pytest.raises(market_errors.NotAggregator, match="not the aggregator"):
        commit(chain, task, 6, tree_of(chain, {A: 3 * TOKEN}), aggregator=ATTACKER)
    with pytest.raises(market_errors.UnknownTask, match="does not exist"):
        commit(chain, TaskId(999), 1, tree_of(chain, {A: TOKEN}))
    assert chain.ledger(SPONSOR).task(task).last_round == 5


def test_every_market_error_explains_itself() -> None:
    for cls in market_errors.MarketRejected.__subclasses__():
        assert cls.advice != market_errors.MarketRejected.advice, cls
        assert issubclass(cls, ContractRejected)


# -- attack: draining the market through a hostile task ---------------------------------------


def test_a_hostile_root_cannot_drain_other_tasks(chain: Chain) -> None:
    # Prepare: an honest task owes device A 30 tokens; the attacker opens a 1-unit task
    honest = new_task(chain, budget=100 * TOKEN)
    honest_tree = tree_of(chain, {A: 30 * TOKEN})
    commit(chain, honest, 1, honest_tree)
    give(chain, ATTACKER, 1)
    hostile = new_task(chain, budget=1, sponsor=ATTACKER, aggregator=ATTACKER)
    whole = market_balance(chain)
    drain = tree_of(chain, {ATTACKER: whole})  # one leaf: the market's whole balance
    attacker = chain.ledger(ATTACKER)
    with pytest.raises(market_errors.ExceedsEscrow):  # its true total is past its escrow
        commit(chain, hostile, 1, drain, aggregator=ATTACKER)
    attacker.commit_round(
        hostile,
        1,
        model_commitment=MODEL_COMMITMENT,
        model_cid=MODEL_CID,
        bundle_cid=EMPTY_CID,
        rewards_root=drain.root,
        cumulative_total=1,  # within its own escrow; the leaf says `whole`
    )
    chain.finalize()

    # Execute / Assert: the leaf does not add up to the root's total, so it pays nothing
    with pytest.raises(market_errors.InvalidProof, match="reward tree"):
        attacker.claim(hostile, 1, attacker.address, whole, drain.proof(attacker.address))
    assert attacker.balance(attacker.address) == 0
    assert market_balance(chain) == whole
    assert claim(chain, honest, 1, honest_tree, A) == 30 * TOKEN
    assert chain.ledger(A).balance(address(chain, A)) == 30 * TOKEN


def test_a_hostile_root_cannot_take_another_rounds_sales_revenue(chain: Chain) -> None:
    # Prepare: an honest round earns 10 tokens of contributors' revenue from a sale
    task, listing, key = sold_round(chain, bps=2000)
    purchase, _ = buy(chain, listing, 50 * TOKEN)
    chain.ledger(AGGREGATOR).deliver_key(purchase, delivery_of(chain, purchase, key))
    chain.advance(DISPUTE_WINDOW + 1)
    chain.ledger(SYBIL).settle(purchase)
    assert chain.ledger(SPONSOR).sales_revenue(task, 1) == (10 * TOKEN, 0)
    # ...and the attacker's own task claims the market's whole balance as a "contributor"
    give(chain, ATTACKER, 10)
    hostile = new_task(chain, budget=1, sponsor=ATTACKER, aggregator=ATTACKER)
    whole = market_balance(chain)
    drain = tree_of(chain, {ATTACKER: whole})
    attacker = chain.ledger(ATTACKER)
    attacker.commit_round(
        hostile,
        1,
        model_commitment=MODEL_COMMITMENT,
        model_cid=MODEL_CID,
        bundle_cid=EMPTY_CID,
        rewards_root=drain.root,
        cumulative_total=1,
    )
    chain.finalize()
    own_key = AssetKey.generate()
    own = list_round(chain, hostile, 1, own_key, price=1, bps=10_000, seller=ATTACKER)
    bought, _ = buy(chain, own, 1, buyer=ATTACKER)  # sells to itself: 1 unit of revenue
    attacker.deliver_key(bought, delivery_of(chain, bought, own_key))
    chain.advance(DISPUTE_WINDOW + 1)
    attacker.settle(bought)
    balance = attacker.balance(attacker.address)
    proof = drain.proof(attacker.address)

    # Execute / Assert: its own root's leaf does not add up to its total; the honest round
    # refuses it too
    with pytest.raises(market_errors.InvalidProof):
        attacker.claim_sale_share(hostile, 1, attacker.address, whole, proof)
    with pytest.raises(market_errors.InvalidProof):
        attacker.claim_sale_share(task, 1, attacker.address, whole, proof)
    assert attacker.balance(attacker.address) == balance
    device = address(chain, A)
    honest_tree = tree_of(chain, {A: 10 * TOKEN})
    paid = chain.ledger(A).claim_sale_share(task, 1, device, 10 * TOKEN, honest_tree.proof(device))
    assert paid == 10 * TOKEN  # A is the round's only contributor
    assert chain.ledger(SPONSOR).sales_revenue(task, 1) == (10 * TOKEN, 10 * TOKEN)


# -- attack: re-rooting ------------------------------------------------------------------------


def test_re_rooting_cannot_erase_an_earlier_rounds_reward(chain: Chain) -> None:
    # Nobody challenges round 2 in time, but the escrow covers both roots: claims are cumulative
    # per account and any final root pays, so A's round-1 leaf still pays it.
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN})
    commit(chain, task, 1, round1)
    round2 = tree_of(chain, {B: 20 * TOKEN, SYBIL: 10 * TOKEN})  # drops A, pays a Sybil
    commit(chain, task, 2, round2)
    chain.finalize()

    assert claim(chain, task, 1, round1, A) == 10 * TOKEN
    assert chain.ledger(A).balance(address(chain, A)) == 10 * TOKEN
    assert claim(chain, task, 2, round2, B) == 20 * TOKEN
    with pytest.raises(market_errors.NothingToClaim):
        claim(chain, task, 1, round1, B)  # B's older leaf pays nothing more


def test_re_rooting_on_a_tight_escrow_cannot_outrun_an_earlier_reward(chain: Chain) -> None:
    # Prepare: each root's total fits the escrow (20, then 30), but their union (40) does not.
    # Round 1 is final when the aggregator re-roots to drop A and pay its Sybil instead.
    task = new_task(chain, budget=30 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    round2 = tree_of(chain, {B: 20 * TOKEN, SYBIL: 10 * TOKEN})
    commit(chain, task, 2, round2)
    a, sybil = address(chain, A), address(chain, SYBIL)

    # Execute: A's device sees round 2 pay it less than round 1 and challenges with its leaf
    challenge(chain, task, 2, 1, round1, A)

    # Assert: the Sybil cannot claim first, and the aggregator has no leaf of A to answer with
    with pytest.raises(market_errors.RoundNotFinal, match="not final"):
        claim(chain, task, 2, round2, SYBIL)
    with pytest.raises(market_errors.InvalidProof):
        chain.ledger(AGGREGATOR).answer(task, 2, a, 10 * TOKEN, round2.proof(sybil))
    chain.advance(RESPONSE_WINDOW + 1)
    with pytest.raises(market_errors.RoundNotFinal):  # its window is over, the challenge open
        claim(chain, task, 2, round2, SYBIL)
    chain.ledger(BUYER).void_round(task, 2, a)  # anyone may void it
    stored = chain.ledger(SPONSOR).round_state(task, 2)
    assert stored is not None
    assert stored.voided
    assert not stored.final(chain.ledger(SPONSOR).now())
    state = chain.ledger(SPONSOR).task(task)
    assert (state.frozen, state.committed) == (True, 20 * TOKEN)  # back to round 1's total
    for device in (SYBIL, B):
        with pytest.raises(market_errors.RoundIsVoided, match="voided"):
            claim(chain, task, 2, round2, device)
    assert claim(chain, task, 1, round1, A) == 10 * TOKEN  # A's round-1 reward stands
    assert claim(chain, task, 1, round1, B) == 10 * TOKEN
    assert chain.ledger(SYBIL).balance(sybil) == 0
    with pytest.raises(market_errors.TaskFrozen, match="frozen"):
        commit(chain, task, 3, tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN, SYBIL: 10 * TOKEN}))
    assert chain.ledger(SPONSOR).challenges_opened(task) == [(2, a)]
    # What no root pays goes back to the sponsor, not to the Sybil: a close grace after the
    # task's commits stop (acks are paid first).
    sponsor = chain.ledger(SPONSOR)
    sponsor.close_task(task)
    chain.advance(2 * CLOSE_GRACE + 1)
    assert sponsor.refund_unspent(task) == 10 * TOKEN


# -- challenges --------------------------------------------------------------------------------


def test_a_root_pays_nothing_before_its_challenge_window_ends(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    tree = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, tree)
    stored = chain.ledger(SPONSOR).round_state(task, 1)
    assert stored is not None
    a = address(chain, A)

    for wait in (0, CHALLENGE_WINDOW - 60):
        chain.advance(wait)
        assert not stored.final(chain.ledger(SPONSOR).now())
        with pytest.raises(
            market_errors.RoundNotFinal, match=f"ends at unix time {stored.final_at}"
        ):
            claim(chain, task, 1, tree, A)
        with pytest.raises(market_errors.RoundNotFinal):
            chain.ledger(A).claim_sale_share(task, 1, a, 10 * TOKEN, tree.proof(a))
        with pytest.raises(market_errors.RoundNotFinal):
            list_round(chain, task, 1, AssetKey.generate())
    assert chain.ledger(A).balance(a) == 0
    assert chain.ledger(SPONSOR).listing_ids() == []

    chain.advance(61)

    assert stored.final(chain.ledger(SPONSOR).now())
    assert claim(chain, task, 1, tree, A) == 10 * TOKEN
    assert list_round(chain, task, 1, AssetKey.generate())


def test_a_root_whose_leaves_add_up_to_more_than_its_total_pays_nobody(chain: Chain) -> None:
    # Prepare: a genuine tree whose leaves add up to 100, committed with a total of 10: the
    # Sybil's 90 hidden behind a total that fits what the aggregator acknowledged
    task = new_task(chain, budget=100 * TOKEN)
    acked = ack(chain, task, 1, A, 10 * TOKEN)
    inflated = tree_of(chain, {A: 10 * TOKEN, SYBIL: 90 * TOKEN})
    chain.ledger(AGGREGATOR).commit_round(
        task,
        1,
        model_commitment=MODEL_COMMITMENT,
        model_cid=MODEL_CID,
        bundle_cid=EMPTY_CID,
        rewards_root=inflated.root,
        cumulative_total=10 * TOKEN,
    )
    chain.finalize()
    before = market_balance(chain)

    # Execute / Assert: no leaf reaches (root, 10): not the Sybil's, not even A's honest one
    for device in (SYBIL, A):
        account = address(chain, device)
        proof = inflated.proof(account)
        assert verify(inflated.root, 100 * TOKEN, account, inflated.amounts[account], proof)
        assert not verify(inflated.root, 10 * TOKEN, account, inflated.amounts[account], proof)
        with pytest.raises(market_errors.InvalidProof):
            claim(chain, task, 1, inflated, device)
    assert market_balance(chain) == before
    assert chain.ledger(SPONSOR).task(task).paid == 0
    # A's acknowledgement still pays it once the sponsor's close grace is over.
    chain.ledger(SPONSOR).close_task(task)
    chain.advance(CLOSE_GRACE + 1)
    assert chain.ledger(A).claim_acknowledged(acked, signed(chain, acked)) == 10 * TOKEN
    assert chain.ledger(SYBIL).balance(address(chain, SYBIL)) == 0


def test_an_honest_aggregator_answers_challenges_and_the_root_becomes_final(chain: Chain) -> None:
    # Prepare: round 2 raises A to 12 and adds B (acknowledged at 5); late in its window A
    # challenges it with its round-1 leaf (by mistake, or to grief) and B with its ack
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    round2 = tree_of(chain, {A: 12 * TOKEN, B: 5 * TOKEN})
    commit(chain, task, 2, round2)
    acked = ack(chain, task, 2, B, 5 * TOKEN)
    chain.advance(CHALLENGE_WINDOW - 100)
    challenge(chain, task, 2, 1, round1, A)
    chain.ledger(B).challenge_with_ack(task, 2, acked, signed(chain, acked))
    viewer = chain.ledger(SPONSOR)
    a, b = address(chain, A), address(chain, B)
    opened = viewer.challenge_state(task, 2, a)
    assert opened is not None
    assert (opened.amount, opened.open) == (10 * TOKEN, True)
    assert opened.deadline >= viewer.now() + RESPONSE_WINDOW - 5
    assert viewer.challenges_opened(task) == [(2, a), (2, b)]
    stored = viewer.round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 2
    chain.advance(101)  # the window is over, but challenges are open
    with pytest.raises(market_errors.RoundNotFinal):
        claim(chain, task, 2, round2, A)

    # Execute: the aggregator answers A; anyone holding the tree may answer B
    answer(chain, task, 2, round2, A)
    answer(chain, task, 2, round2, B, by=SYBIL)

    # Assert: the root is final at once and pays; the answered challenges cannot void it
    stored = viewer.round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 0
    assert stored.final(viewer.now())
    assert viewer.challenge_state(task, 2, a) == ChallengeState(12 * TOKEN, opened.deadline, False)
    assert claim(chain, task, 2, round2, A) == 12 * TOKEN
    assert claim(chain, task, 2, round2, B) == 5 * TOKEN
    with pytest.raises(market_errors.NotChallenged, match="no open challenge"):
        chain.ledger(A).void_round(task, 2, a)
    assert not viewer.task(task).frozen
    assert commit(chain, task, 3, tree_of(chain, {A: 13 * TOKEN, B: 5 * TOKEN}))


def test_answers_below_the_challenge_or_with_a_wrong_proof_fail(chain: Chain) -> None:
    # Prepare: round 2 cuts A from 10 to 8 and pays a Sybil; A challenges
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN, B: 3 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    round2 = tree_of(chain, {A: 8 * TOKEN, B: 3 * TOKEN, SYBIL: 10 * TOKEN})
    commit(chain, task, 2, round2)
    challenge(chain, task, 2, 1, round1, A)
    aggregator = chain.ledger(AGGREGATOR)
    a, sybil = address(chain, A), address(chain, SYBIL)

    # Execute / Assert: A's true leaf is too low; no other leaf or root passes for it
    with pytest.raises(market_errors.AnswerTooLow, match="less than"):
        aggregator.answer(task, 2, a, 8 * TOKEN, round2.proof(a))
    with pytest.raises(market_errors.InvalidProof):  # A's leaf does not say 10
        aggregator.answer(task, 2, a, 10 * TOKEN, round2.proof(a))
    with pytest.raises(market_errors.InvalidProof):  # the Sybil's 10 is not A's
        aggregator.answer(task, 2, a, 10 * TOKEN, round2.proof(sybil))
    with pytest.raises(market_errors.InvalidProof):  # A's 10 is in round 1, not round 2
        aggregator.answer(task, 2, a, 10 * TOKEN, round1.proof(a))
    with pytest.raises(market_errors.NotChallenged):  # B never challenged
        answer(chain, task, 2, round2, B)
    chain.advance(RESPONSE_WINDOW + 1)
    with pytest.raises(market_errors.ResponseWindowClosed, match="had to be answered"):
        aggregator.answer(task, 2, a, 8 * TOKEN, round2.proof(a))
    chain.ledger(A).void_round(task, 2, a)
    assert claim(chain, task, 1, round1, A) == 10 * TOKEN
    with pytest.raises(market_errors.RoundIsVoided):
        claim(chain, task, 2, round2, SYBIL)


def test_a_challenge_after_the_window_fails(chain: Chain) -> None:
    # Prepare: round 2 drops A, and A's device does not look until the window is over
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    round2 = tree_of(chain, {SYBIL: 10 * TOKEN})
    commit(chain, task, 2, round2)
    acked = ack(chain, task, 2, A, 10 * TOKEN)
    chain.finalize()

    with pytest.raises(market_errors.ChallengeWindowClosed, match="only until"):
        challenge(chain, task, 2, 1, round1, A)
    with pytest.raises(market_errors.ChallengeWindowClosed):
        chain.ledger(A).challenge_with_ack(task, 2, acked, signed(chain, acked))

    # Round 2 is final and pays the Sybil, but A's final round-1 leaf still pays A in full.
    assert claim(chain, task, 2, round2, SYBIL) == 10 * TOKEN
    assert claim(chain, task, 1, round1, A) == 10 * TOKEN


def test_challenges_need_genuine_earlier_evidence_but_anyone_may_bring_it(chain: Chain) -> None:
    # Prepare: round 2 leaves D out though the aggregator acknowledged it
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    round2 = tree_of(chain, {A: 10 * TOKEN, SYBIL: 5 * TOKEN})
    commit(chain, task, 2, round2)
    acked = ack(chain, task, 2, D, 5 * TOKEN)
    signature = signed(chain, acked)
    attacker = chain.ledger(ATTACKER)
    a = address(chain, A)

    # Execute / Assert: each challenge on bad evidence fails
    with pytest.raises(market_errors.InvalidProof):  # A's leaf for another account
        attacker.challenge(
            task,
            2,
            evidence_round=1,
            account=address(chain, ATTACKER),
            cumulative_amount=10 * TOKEN,
            proof=round1.proof(a),
        )
    device = chain.ledger(D)
    with pytest.raises(market_errors.NotAcknowledgedByAggregator):
        device.challenge_with_ack(task, 2, acked, signed(chain, acked, D))
    later = ack(chain, task, 3, D, 5 * TOKEN)
    with pytest.raises(market_errors.EvidenceNotEarlier):
        device.challenge_with_ack(task, 2, later, signed(chain, later))
    with pytest.raises(market_errors.EvidenceNotEarlier):
        challenge(chain, task, 1, 1, round1, A)  # evidence from the challenged round itself
    other = new_task(chain)
    elsewhere = ack(chain, other, 2, D, 5 * TOKEN)
    with pytest.raises(market_errors.UnknownTask):
        device.challenge_with_ack(task, 2, elsewhere, signed(chain, elsewhere))
    stored = chain.ledger(SPONSOR).round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 0
    assert chain.ledger(SPONSOR).challenges_opened(task) == []
    # A genuine ack opens one for D, whoever brings it (a watcher, here the attacker)
    attacker.challenge_with_ack(task, 2, acked, signature)
    assert chain.ledger(SPONSOR).challenges_opened(task) == [(2, device.address)]


def test_evidence_from_a_voided_root_fails(chain: Chain) -> None:
    # Prepare: round 1 pays a Sybil instead of acknowledged D; D challenges it; the aggregator
    # commits round 2 (D paid, the Sybil dropped) and lets round 1 be voided
    task = new_task(chain, budget=100 * TOKEN)
    acked = ack(chain, task, 1, D, 10 * TOKEN)
    round1 = tree_of(chain, {SYBIL: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.ledger(D).challenge_with_ack(task, 1, acked, signed(chain, acked))
    chain.advance(100)
    round2 = tree_of(chain, {D: 10 * TOKEN})
    commit(chain, task, 2, round2)
    chain.advance(RESPONSE_WINDOW - 100 + 5)
    chain.ledger(D).void_round(task, 1, address(chain, D))

    # Execute / Assert: the Sybil's leaf in the voided root cannot challenge round 2
    with pytest.raises(market_errors.RoundIsVoided, match="round 1 was voided"):
        challenge(chain, task, 2, 1, round1, SYBIL)
    state = chain.ledger(SPONSOR).task(task)
    assert (state.frozen, state.committed) == (True, 10 * TOKEN)
    chain.finalize()
    assert claim(chain, task, 2, round2, D) == 10 * TOKEN
    with pytest.raises(market_errors.RoundIsVoided):
        claim(chain, task, 1, round1, SYBIL)
    assert chain.ledger(SYBIL).balance(address(chain, SYBIL)) == 0


def test_a_challenge_answered_reopens_only_for_more(chain: Chain) -> None:
    # Prepare: round 2 pays A 10, as round 1 did; A challenges and the aggregator answers
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    round2 = tree_of(chain, {A: 10 * TOKEN, B: 5 * TOKEN})
    commit(chain, task, 2, round2)
    challenge(chain, task, 2, 1, round1, A)
    answer(chain, task, 2, round2, A)
    device, a = chain.ledger(A), address(chain, A)

    # Execute / Assert: the same question, or a smaller one, cannot be asked again ...
    with pytest.raises(market_errors.AlreadyAnswered, match="already shown to pay"):
        challenge(chain, task, 2, 1, round1, A)
    smaller = ack(chain, task, 2, A, 8 * TOKEN)
    with pytest.raises(market_errors.AlreadyAnswered):
        device.challenge_with_ack(task, 2, smaller, signed(chain, smaller))
    stored = chain.ledger(SPONSOR).round_state(task, 2)
    assert stored is not None
    assert stored.open_challenges == 0
    # ... but an ack for more than the root pays reopens it, and no leaf answers that
    more = ack(chain, task, 2, A, 12 * TOKEN)
    device.challenge_with_ack(task, 2, more, signed(chain, more))
    reopened = chain.ledger(SPONSOR).challenge_state(task, 2, a)
    assert reopened is not None
    assert (reopened.amount, reopened.open) == (12 * TOKEN, True)
    with pytest.raises(market_errors.AnswerTooLow):
        answer(chain, task, 2, round2, A)
    chain.advance(RESPONSE_WINDOW + 1)
    device.void_round(task, 2, a)
    # A is paid its round-1 10 and, the task frozen, the 2 more its ack promised.
    assert claim(chain, task, 1, round1, A) == 10 * TOKEN
    assert device.claim_acknowledged(more, signed(chain, more)) == 2 * TOKEN
    assert device.balance(a) == 12 * TOKEN


def test_a_round_cannot_be_voided_before_its_deadline(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    round1 = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, round1)
    chain.finalize()
    commit(chain, task, 2, tree_of(chain, {SYBIL: 10 * TOKEN}))
    voider, a = chain.ledger(SYBIL), address(chain, A)
    with pytest.raises(market_errors.NotChallenged):  # nobody challenged it
        voider.void_round(task, 2, a)
    challenge(chain, task, 2, 1, round1, A)

    for wait in (0, RESPONSE_WINDOW - 60):
        chain.advance(wait)
        with pytest.raises(market_errors.ResponseWindowOpen, match="may still be answered"):
            voider.void_round(task, 2, a)
    stored = voider.round_state(task, 2)
    assert stored is not None
    assert not stored.voided
    assert not voider.task(task).frozen

    chain.advance(61)
    voider.void_round(task, 2, a)

    stored = voider.round_state(task, 2)
    assert stored is not None
    assert stored.voided
    with pytest.raises(market_errors.RoundIsVoided):  # once is enough
        voider.void_round(task, 2, a)


def test_a_sybil_ack_cannot_eat_into_what_final_roots_reserve(chain: Chain) -> None:
    # Prepare: round 1 reserves 20 of a 30-token escrow; the aggregator signs acks for its
    # Sybils and the sponsor closes; acks are payable once the close grace is over
    task = new_task(chain, budget=30 * TOKEN)
    tree = tree_of(chain, {A: 10 * TOKEN, B: 10 * TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    greedy = ack(chain, task, 1, SYBIL, 25 * TOKEN)
    modest = ack(chain, task, 1, SYBIL, 10 * TOKEN)
    another = ack(chain, task, 1, ATTACKER, TOKEN)
    chain.ledger(SPONSOR).close_task(task)
    chain.advance(CLOSE_GRACE + 1)
    sybil = chain.ledger(SYBIL)

    # Execute / Assert: acks take at most escrow - committed - paid on acks (10 here)
    with pytest.raises(market_errors.TaskUnderfunded, match="no root reserves"):
        sybil.claim_acknowledged(greedy, signed(chain, greedy))
    assert sybil.claim_acknowledged(modest, signed(chain, modest)) == 10 * TOKEN
    with pytest.raises(market_errors.TaskUnderfunded):
        chain.ledger(ATTACKER).claim_acknowledged(another, signed(chain, another))
    assert claim(chain, task, 1, tree, A) == 10 * TOKEN  # the root's devices are paid in full
    assert claim(chain, task, 1, tree, B) == 10 * TOKEN
    state = chain.ledger(SPONSOR).task(task)
    assert (state.escrow, state.paid, state.paid_on_acks) == (30 * TOKEN, 30 * TOKEN, 10 * TOKEN)


def wrapping_parent(a: SumNode, b: SumNode) -> SumNode:
    """A parent node as the contract hashes it, with the sum wrapped mod 2**256."""
    lo, hi = (a, b) if a.hash <= b.hash else (b, a)
    words = encode(["bytes32", "uint256", "bytes32", "uint256"], [lo.hash, lo.sum, hi.hash, hi.sum])
    return SumNode(keccak(words), (a.sum + b.sum) % 2**256)


def test_a_proof_cannot_wrap_its_sums(chain: Chain) -> None:
    # Prepare: A's 10 and the Sybil's 10 under a phantom node of sum 2**256 - 10, so that in
    # wrapping arithmetic the root's leaves add up to the 10 the escrow holds
    task = new_task(chain, budget=10 * TOKEN)
    a, thief = address(chain, A), address(chain, SYBIL)
    phantom = SumNode(keccak(b"phantom"), 2**256 - 10 * TOKEN)
    pair = parent(leaf(a, 10 * TOKEN), leaf(thief, 10 * TOKEN))
    root = wrapping_parent(pair, phantom)  # our tree builder refuses to make it
    chain.ledger(AGGREGATOR).commit_round(
        task,
        1,
        model_commitment=MODEL_COMMITMENT,
        model_cid=MODEL_CID,
        bundle_cid=EMPTY_CID,
        rewards_root=root.hash,
        cumulative_total=10 * TOKEN,
    )
    chain.finalize()
    assert root.sum == 10 * TOKEN
    sybil = chain.ledger(SYBIL)

    # Execute / Assert: a packed proof holds sums below 2**128 only, so the phantom cannot be
    # sent; cut to 128 bits it leads to another root; a leaf past 2**128 - 1 is refused outright
    with pytest.raises(InvalidInput, match=r"sum must be in 0..2\*\*128-1"):
        sybil.claim(task, 1, thief, 10 * TOKEN, [leaf(a, 10 * TOKEN), phantom])
    cut = SumNode(phantom.hash, phantom.sum % 2**128)
    with pytest.raises(market_errors.InvalidProof):
        sybil.claim(task, 1, thief, 10 * TOKEN, [leaf(a, 10 * TOKEN), cut])
    with pytest.raises(market_errors.SumOverflow, match=r"past 2\*\*128 - 1"):
        sybil.claim(task, 1, thief, 2**256 - 10 * TOKEN, [pair])
    assert sybil.balance(thief) == 0
    assert chain.ledger(SPONSOR).task(task).paid == 0


@pytest.mark.parametrize("extra", [1, 47])
def test_a_proof_of_partial_nodes_is_refused(chain: Chain, extra: int) -> None:
    task = new_task(chain)
    tree = tree_of(chain, {A: TOKEN, B: TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    a = address(chain, A)
    packed = encode_proof(tree.proof(a)) + bytes(extra)
    claim_call = raw_market(chain).functions.claim(task, a, 1, TOKEN, packed)

    with pytest.raises(market_errors.MalformedProof, match=f"{48 + extra} bytes"):
        send_raw(chain, A, claim_call)
    assert chain.ledger(A).claim(task, 1, a, TOKEN, tree.proof(a)) == TOKEN


# -- attack: the sponsor front-runs a commit with a close --------------------------------------


def test_close_front_run_leaves_the_commit_and_claims_standing(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    sponsor = chain.ledger(SPONSOR)
    tree = tree_of(chain, {A: 20 * TOKEN, B: 10 * TOKEN})
    before = sponsor.balance(sponsor.address)

    closes_at = sponsor.close_task(task)  # lands just before the aggregator's commit

    assert sponsor.task(task).closes_at == closes_at > sponsor.now()
    assert commit(chain, task, 1, tree)  # still within the grace
    chain.finalize()  # the grace outlasts the challenge window
    assert claim(chain, task, 1, tree, A) == 20 * TOKEN
    with pytest.raises(market_errors.TaskIsClosed):
        sponsor.close_task(task)  # a second close cannot move closes_at
    with pytest.raises(market_errors.NotSponsor):
        chain.ledger(SYBIL).close_task(task)
    with pytest.raises(market_errors.TaskNotClosed, match="close grace"):
        sponsor.refund_unspent(task)
    assert sponsor.task(task).closes_at == closes_at
    chain.advance(CLOSE_GRACE + 1)
    with pytest.raises(market_errors.TaskIsClosed):
        commit(chain, task, 2, tree_of(chain, {A: 20 * TOKEN, B: 20 * TOKEN}))
    with pytest.raises(market_errors.TaskIsClosed):
        sponsor.fund_task(task, TOKEN)
    opens_at = closes_at + CLOSE_GRACE  # a close grace after commits stop: acks are paid first
    assert sponsor.task(task).refund_opens_at == opens_at
    with pytest.raises(market_errors.TaskNotClosed, match=f"from unix time {opens_at}"):
        sponsor.refund_unspent(task)
    chain.advance(CLOSE_GRACE)
    state = sponsor.task(task)

    refund = chain.ledger(SYBIL).refund_unspent(task)  # anyone may call; the sponsor is paid

    assert refund == state.escrow - max(state.committed, state.paid) == 70 * TOKEN
    assert sponsor.balance(sponsor.address) == before + 70 * TOKEN
    with pytest.raises(market_errors.NothingToRefund):
        sponsor.refund_unspent(task)
    assert claim(chain, task, 1, tree, B) == 10 * TOKEN  # claims outlive the refund
    assert sponsor.task(task).escrow == 30 * TOKEN == sponsor.task(task).paid


def test_refund_unspent_keeps_acknowledged_claims_already_paid(chain: Chain) -> None:
    # An acknowledged claim beyond the committed total raises what the sponsor cannot take.
    task = new_task(chain, budget=100 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    acked = ack(chain, task, 1, D, 25 * TOKEN)
    sponsor = chain.ledger(SPONSOR)
    sponsor.close_task(task)
    chain.advance(CLOSE_GRACE + 1)  # acks pay once the close grace is over
    chain.ledger(D).claim_acknowledged(acked, signed(chain, acked))
    chain.advance(CLOSE_GRACE)  # the refund waits one more grace, so that acks are paid first
    state = sponsor.task(task)

    assert (state.committed, state.paid, state.paid_on_acks) == (10 * TOKEN, 25 * TOKEN, 25 * TOKEN)
    # A's committed 10 is not claimed yet: the refund keeps it back beside what the ack paid.
    assert sponsor.refund_unspent(task) == 65 * TOKEN == state.escrow - state.reserved
    assert claim(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}), A) == 10 * TOKEN


# -- attack: aggregator omits an acknowledged device ------------------------------------------


def test_an_acknowledged_device_left_out_of_the_root_is_paid(chain: Chain) -> None:
    # Prepare: the aggregator acknowledged D's upload (7) and A's (10), then commits a root
    # that leaves D out
    task = new_task(chain, budget=100 * TOKEN)
    acked = ack(chain, task, 1, D, 7 * TOKEN)
    signature = signed(chain, acked)
    acked_a = ack(chain, task, 1, A, 10 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    device = chain.ledger(D)
    with pytest.raises(market_errors.AcksNotPayable, match="still commits rounds"):
        device.claim_acknowledged(acked, signature)  # while roots may still pay it

    # Execute: D challenges the root with its ack; nobody can answer; anyone voids the root
    device.challenge_with_ack(task, 1, acked, signature)
    chain.advance(RESPONSE_WINDOW + 1)
    chain.ledger(SYBIL).void_round(task, 1, device.address)
    before = chain.ledger(SPONSOR).task(task)
    assert (before.frozen, before.committed) == (True, 0)

    # Assert: the ack pays D from the escrow (anyone may submit it), once
    paid = chain.ledger(SYBIL).claim_acknowledged(acked, signature)

    assert paid == 7 * TOKEN
    assert device.balance(device.address) == 7 * TOKEN
    after = chain.ledger(SPONSOR).task(task)
    assert (after.escrow, after.paid) == (before.escrow, before.paid + 7 * TOKEN)
    with pytest.raises(market_errors.NothingToClaim):
        device.claim_acknowledged(acked, signature)
    # The voided root pays nobody, but A's own ack pays what it promised.
    assert chain.ledger(A).claim_acknowledged(acked_a, signed(chain, acked_a)) == 10 * TOKEN


def test_forged_or_premature_acks_are_rejected(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    device = chain.ledger(D)
    forged = ack(chain, task, 1, D, 50 * TOKEN)
    early = ack(chain, task, 2, D, 5 * TOKEN)

    for signer in (SPONSOR, D):  # only the task's aggregator's word counts
        with pytest.raises(market_errors.NotAcknowledgedByAggregator, match="proves nothing"):
            device.claim_acknowledged(forged, signed(chain, forged, signer))
    with pytest.raises(market_errors.AcksNotPayable):  # the task is open and not frozen
        device.claim_acknowledged(early, signed(chain, early))
    other = new_task(chain)  # a signature is bound to its task: replayed elsewhere it fails
    replayed = Ack(other, 2, address(chain, D), UPLOAD, 5 * TOKEN)
    with pytest.raises(market_errors.NotAcknowledgedByAggregator):
        device.claim_acknowledged(replayed, signed(chain, early))
    assert device.balance(device.address) == 0
    closes_at = chain.ledger(SPONSOR).close_task(task)
    with pytest.raises(market_errors.AcksNotPayable, match=f"closes at unix time {closes_at}"):
        device.claim_acknowledged(early, signed(chain, early))  # round 2 may still come
    chain.advance(CLOSE_GRACE + 1)
    assert device.claim_acknowledged(early, signed(chain, early)) == 5 * TOKEN


def test_an_ack_for_round_zero_is_refused_even_signed_by_the_aggregator(chain: Chain) -> None:
    """Round 0 is never committed, yet it is at or below every round: an ack for it could
    challenge any root, and would pay once the task's close grace is over whatever the roots
    say. The client will not build one, so the aggregator signs the struct itself and the
    device calls the contract directly."""
    task = new_task(chain, budget=100 * TOKEN)
    with pytest.raises(InvalidInput, match="round must be >= 1"):
        ack(chain, task, 0, D, 5 * TOKEN)
    struct, signature = hand_signed_ack(chain, task, 0, D, 5 * TOKEN)
    market = raw_market(chain).functions
    claim_round_zero = market.claimAcknowledged(struct, signature)
    device, sponsor = chain.ledger(D), chain.ledger(SPONSOR)
    sent = chain.w3.eth.get_transaction_count(device.address)

    with pytest.raises(market_errors.ZeroRound):  # nothing committed yet
        send_raw(chain, D, claim_round_zero)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    with pytest.raises(market_errors.ZeroRound):  # 0 <= last round 1: still no
        send_raw(chain, D, claim_round_zero)
    with pytest.raises(market_errors.EvidenceNotEarlier):  # nor does it challenge round 1
        send_raw(chain, D, market.challengeWithAck(task, 1, struct, signature))
    sponsor.close_task(task)
    chain.advance(CLOSE_GRACE + 1)
    with pytest.raises(market_errors.ZeroRound):  # nor once the task's acks are paid
        send_raw(chain, D, claim_round_zero)

    assert chain.w3.eth.get_transaction_count(device.address) == sent
    assert device.balance(device.address) == 0
    assert sponsor.task(task).paid == 0
    stored = sponsor.round_state(task, 1)
    assert stored is not None
    assert stored.open_challenges == 0
    # The same hand-built signature for round 1 is the client's own, and pays: the refusal above
    # is the round, not the signature.
    struct1, signature1 = hand_signed_ack(chain, task, 1, D, 5 * TOKEN)
    assert signature1 == signed(chain, ack(chain, task, 1, D, 5 * TOKEN))
    send_raw(chain, D, market.claimAcknowledged(struct1, signature1))
    assert device.balance(device.address) == 5 * TOKEN


def test_an_acknowledged_round_never_committed_is_paid_once_the_task_closes(
    chain: Chain,
) -> None:
    # Prepare: round 1 pays A 10 and D 5; the aggregator acknowledges D's round-2 upload (7 in
    # all) and never commits round 2
    task = new_task(chain, budget=100 * TOKEN)
    tree = tree_of(chain, {A: 10 * TOKEN, D: 5 * TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    acked = ack(chain, task, 2, D, 7 * TOKEN)
    signature = signed(chain, acked)
    device, sponsor = chain.ledger(D), chain.ledger(SPONSOR)

    # Execute / Assert: refused while the task is open (round 2 may still come) ...
    with pytest.raises(market_errors.AcksNotPayable, match="still commits rounds"):
        device.claim_acknowledged(acked, signature)
    # ... and within the sponsor's close grace (round 2 may still come then too) ...
    closes_at = sponsor.close_task(task)
    assert sponsor.now() < closes_at
    with pytest.raises(market_errors.AcksNotPayable, match=f"closes at unix time {closes_at}"):
        device.claim_acknowledged(acked, signature)
    assert device.balance(device.address) == 0
    # ... paid in full once the close grace is over, and only once
    chain.advance(CLOSE_GRACE + 1)
    assert chain.ledger(SYBIL).claim_acknowledged(acked, signature) == 7 * TOKEN
    assert device.balance(device.address) == 7 * TOKEN
    with pytest.raises(market_errors.NothingToClaim):
        device.claim_acknowledged(acked, signature)
    with pytest.raises(market_errors.NothingToClaim):
        claim(chain, task, 1, tree, D)  # its round-1 leaf (5) is inside the 7 it was paid
    assert claim(chain, task, 1, tree, A) == 10 * TOKEN
    with pytest.raises(
        market_errors.TaskNotClosed, match=f"from unix time {closes_at + CLOSE_GRACE}"
    ):
        sponsor.refund_unspent(task)
    # ... and one more grace later the sponsor gets back only what nobody was paid
    chain.advance(CLOSE_GRACE)
    before = sponsor.balance(sponsor.address)

    refund = sponsor.refund_unspent(task)

    # The refund keeps back the committed 15 plus the 7 paid on the ack: the contract cannot
    # tell that D's ack also covered its committed 5, so those 5 stay with the task (the price
    # of an aggregator that did not commit what it acknowledged), never with the sponsor.
    assert refund == 100 * TOKEN - 22 * TOKEN
    assert sponsor.balance(sponsor.address) == before + refund
    state = sponsor.task(task)
    assert (state.escrow, state.paid) == (22 * TOKEN, 17 * TOKEN)
    assert market_balance(chain) == 5 * TOKEN
    with pytest.raises(market_errors.NothingToRefund):
        sponsor.refund_unspent(task)


def test_a_committed_reward_claimed_after_the_refund_survives_an_ack_beyond_the_root(
    chain: Chain,
) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    tree = tree_of(chain, {A: 10 * TOKEN})
    commit(chain, task, 1, tree)
    acked = ack(chain, task, 2, D, 7 * TOKEN)  # D is in no root; round 2 is never committed
    sponsor = chain.ledger(SPONSOR)
    sponsor.close_task(task)
    chain.advance(CLOSE_GRACE + 1)  # acks pay once the close grace is over
    chain.ledger(D).claim_acknowledged(acked, signed(chain, acked))
    chain.advance(CLOSE_GRACE)  # the refund opens one grace later
    sponsor.refund_unspent(task)  # 83 = 100 - (10 committed + 7 paid on acks)

    assert claim(chain, task, 1, tree, A) == 10 * TOKEN  # A's committed reward stands


@pytest.mark.parametrize(("acked", "in_tree"), [(7, 5), (5, 7), (6, 6)])
@pytest.mark.parametrize("ack_first", [True, False])
def test_ack_and_tree_together_pay_the_larger_once(
    chain: Chain, acked: int, in_tree: int, ack_first: bool
) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    item = ack(chain, task, 1, D, acked * TOKEN)
    signature = signed(chain, item)
    tree = tree_of(chain, {A: TOKEN, D: in_tree * TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    chain.ledger(SPONSOR).close_task(task)
    chain.advance(CLOSE_GRACE + 1)  # acks pay once the close grace is over
    ways: list[Callable[[], int]] = [
        lambda: chain.ledger(D).claim_acknowledged(item, signature),
        lambda: claim(chain, task, 1, tree, D),
    ]
    if not ack_first:
        ways.reverse()

    for way in ways:
        with contextlib.suppress(market_errors.NothingToClaim):
            way()

    expected = max(acked, in_tree) * TOKEN
    assert chain.ledger(D).balance(address(chain, D)) == expected
    assert chain.ledger(D).claimed(task, address(chain, D)) == expected


def test_an_acknowledged_reward_survives_a_sybil_leaf(chain: Chain) -> None:
    # Prepare: the aggregator acknowledged D's upload for the whole escrow (10) and commits a
    # root that pays its Sybil those 10 instead
    task = new_task(chain, budget=10 * TOKEN)
    acked = ack(chain, task, 1, D, 10 * TOKEN)
    signature = signed(chain, acked)
    drain = tree_of(chain, {SYBIL: 10 * TOKEN})
    commit(chain, task, 1, drain)
    device, sybil = chain.ledger(D), address(chain, SYBIL)

    # Execute: D challenges with its ack; the aggregator has no leaf of D to answer with
    device.challenge_with_ack(task, 1, acked, signature)
    with pytest.raises(market_errors.InvalidProof):
        chain.ledger(AGGREGATOR).answer(task, 1, device.address, 10 * TOKEN, drain.proof(sybil))
    with pytest.raises(market_errors.RoundNotFinal):  # the Sybil cannot claim first
        claim(chain, task, 1, drain, SYBIL)
    chain.advance(RESPONSE_WINDOW + 1)
    chain.ledger(BUYER).void_round(task, 1, device.address)

    # Assert: the Sybil's root pays nothing; the ack is paid from the escrow it no longer reserves
    with pytest.raises(market_errors.RoundIsVoided):
        claim(chain, task, 1, drain, SYBIL)
    state = chain.ledger(SPONSOR).task(task)
    assert (state.frozen, state.committed) == (True, 0)
    assert chain.ledger(D).claim_acknowledged(acked, signature) == 10 * TOKEN
    assert device.balance(device.address) == 10 * TOKEN
    assert device.balance(sybil) == 0
    with pytest.raises(market_errors.TaskFrozen):
        commit(chain, task, 2, tree_of(chain, {D: 10 * TOKEN, SYBIL: 0}))


def test_an_acknowledged_reward_survives_two_voided_sybil_roots(chain: Chain) -> None:
    # Prepare: two roots in a row pay the aggregator's Sybil the whole escrow instead of D
    task = new_task(chain, budget=10 * TOKEN)
    acked = ack(chain, task, 1, D, 10 * TOKEN)
    signature = signed(chain, acked)
    device = chain.ledger(D)
    commit(chain, task, 1, tree_of(chain, {SYBIL: 10 * TOKEN}))
    device.challenge_with_ack(task, 1, acked, signature)
    commit(chain, task, 2, tree_of(chain, {SYBIL: 10 * TOKEN, B: 0}))
    device.challenge_with_ack(task, 2, acked, signature)  # ack.round 1 <= 2: it covers round 2
    chain.advance(RESPONSE_WINDOW + 1)
    device.void_round(task, 1, device.address)
    device.void_round(task, 2, device.address)

    # Execute / Assert: no root pays anybody, so the ack should be paid from the whole escrow
    # (the task still reports round 1's voided total as committed)
    assert device.claim_acknowledged(acked, signature) == 10 * TOKEN
    assert chain.ledger(SPONSOR).task(task).committed == 0


# -- receipts ----------------------------------------------------------------------------------


def _receipt(device: str, *, task: int = 1, round_: int = 3) -> Receipt:
    return Receipt.for_update(
        task=task,
        round=round_,
        device=device,
        trained_from=MODEL_COMMITMENT,
        upload_digest=UPLOAD,
        weight=120,
        epsilon=2.3456789,
        delta=1e-5,
    )


def test_receipts_verify_in_python_and_on_chain(chain: Chain) -> None:
    device = chain.accounts[A]
    market = chain.deployment.market
    receipt = _receipt(device.address)
    signature = sign_receipt(receipt, device, chain_id=chain.deployment.chain_id, market=market)

    verify_receipt(receipt, signature, chain_id=chain.deployment.chain_id, market=market)
    assert chain.ledger(SPONSOR).receipt_signer(receipt, signature) == device.address
    assert receipt.epsilon_micros == 2345679  # rounded up
    assert receipt.delta_e18 == 10**13


@pytest.mark.parametrize("replay", ["task", "round", "weight", "model", "chain"])
def test_replayed_or_altered_receipts_are_rejected(chain: Chain, replay: str) -> None:
    device = chain.accounts[A]
    market, chain_id = chain.deployment.market, chain.deployment.chain_id
    signature = sign_receipt(_receipt(device.address), device, chain_id=chain_id, market=market)
    original = _receipt(device.address).__dict__
    replayed = {
        "task": _receipt(device.address, task=2),
        "round": _receipt(device.address, round_=4),
        "weight": Receipt(**{**original, "weight": 4096}),
        "model": Receipt(**{**original, "trained_from": hashlib.sha256(b"other").digest()}),
        "chain": _receipt(device.address),
    }[replay]
    other_chain = chain_id + 1 if replay == "chain" else chain_id

    with pytest.raises(ReceiptInvalid, match="altered or replayed"):
        verify_receipt(replayed, signature, chain_id=other_chain, market=market)
    if replay != "chain":
        assert chain.ledger(SPONSOR).receipt_signer(replayed, signature) != device.address


# -- sales -------------------------------------------------------------------------------------


def test_sale_in_one_transaction_key_by_ecdh_and_proceeds_after_the_window(chain: Chain) -> None:
    task, listing, key = sold_round(chain, bps=2000)
    buyer, seller = chain.ledger(BUYER), chain.ledger(AGGREGATOR)
    sent_before = chain.w3.eth.get_transaction_count(buyer.address)

    purchase, one_time = buy(chain, listing, 50 * TOKEN)

    assert chain.w3.eth.get_transaction_count(buyer.address) == sent_before + 1  # one tx
    record = buyer.purchase(purchase)
    assert (record.state, record.price) == (PurchaseState.PENDING, 50 * TOKEN)
    assert buyer.buyer_key(purchase) == one_time.public
    seller.deliver_key(purchase, delivery_of(chain, purchase, key))
    opened(chain, purchase, one_time).check_commitment(seller.listing(listing).key_commitment)
    assert seller.owed(seller.address) == 0  # nothing before the dispute window ends
    with pytest.raises(market_errors.DisputeWindowOpen):
        seller.settle(purchase)
    chain.advance(DISPUTE_WINDOW + 1)
    assert chain.ledger(SYBIL).settle(purchase) == 40 * TOKEN  # anyone may settle
    assert seller.owed(seller.address) == 40 * TOKEN
    assert seller.sales_revenue(task, 1) == (10 * TOKEN, 0)  # 20 % to round 1's devices
    assert seller.task(task).escrow == 100 * TOKEN  # not the sponsor's escrow
    assert seller.withdraw() == 40 * TOKEN
    assert seller.balance(seller.address) == 40 * TOKEN
    with pytest.raises(market_errors.ZeroAmount):
        seller.withdraw()


def test_refund_only_after_deadline_only_buyer_only_undelivered(chain: Chain) -> None:
    _, listing, key = sold_round(chain)
    buyer = chain.ledger(BUYER)
    purchase, _ = buy(chain, listing, 50 * TOKEN)

    with pytest.raises(market_errors.DeliveryWindowOpen, match="after its delivery deadline"):
        buyer.refund(purchase)
    chain.advance(3601)
    with pytest.raises(market_errors.NotBuyer, match="only its buyer"):
        chain.ledger(SYBIL).refund(purchase)
    with pytest.raises(market_errors.DeliveryWindowClosed, match="has passed"):
        chain.ledger(AGGREGATOR).deliver_key(purchase, delivery_of(chain, purchase, key))
    assert buyer.refund(purchase) == 50 * TOKEN
    assert buyer.balance(buyer.address) == 100 * TOKEN
    with pytest.raises(market_errors.WrongPurchaseState, match="refunded"):
        buyer.refund(purchase)


def test_no_refund_after_delivery_and_only_the_seller_delivers(chain: Chain) -> None:
    _, listing, key = sold_round(chain)
    buyer, seller = chain.ledger(BUYER), chain.ledger(AGGREGATOR)
    purchase, _ = buy(chain, listing, 50 * TOKEN)
    with pytest.raises(market_errors.NotSeller):
        chain.ledger(SYBIL).deliver_key(purchase, delivery_of(chain, purchase, key))
    seller.deliver_key(purchase, delivery_of(chain, purchase, key))
    chain.advance(3601)

    with pytest.raises(market_errors.WrongPurchaseState):
        buyer.refund(purchase)
    assert buyer.settle(purchase) == 40 * TOKEN
    assert seller.owed(seller.address) == 40 * TOKEN


def test_price_change_in_flight_is_refused(chain: Chain) -> None:
    _, listing, _ = sold_round(chain)
    buyer = chain.ledger(BUYER)
    with pytest.raises(market_errors.PriceChanged, match="above the"):
        buy(chain, listing, 40 * TOKEN)
    assert buyer.balance(buyer.address) == 100 * TOKEN


# -- attack: the seller delivers a wrong key ---------------------------------------------------


def test_a_wrong_key_is_refunded_in_full_and_never_paid_to_the_seller(chain: Chain) -> None:
    task, listing, _ = sold_round(chain)
    buyer, seller = chain.ledger(BUYER), chain.ledger(AGGREGATOR)
    purchase, one_time = buy(chain, listing, 50 * TOKEN)
    market_before = market_balance(chain)
    wrong = delivery_of(chain, purchase, AssetKey.generate())  # any key but the committed one
    seller.deliver_key(purchase, wrong)
    with pytest.raises(KeyCommitmentMismatch):  # the buyer's client sees it at once
        opened(chain, purchase, one_time).check_commitment(seller.listing(listing).key_commitment)
    with pytest.raises(market_errors.NotBuyer):
        chain.ledger(SYBIL).dispute(purchase, one_time, wrong)

    refunded = buyer.dispute(purchase, one_time, wrong)

    assert refunded == 50 * TOKEN
    assert buyer.balance(buyer.address) == 100 * TOKEN
    assert buyer.purchase(purchase).state == PurchaseState.REFUNDED
    assert market_balance(chain) == market_before - 50 * TOKEN
    chain.advance(DISPUTE_WINDOW + 1)
    with pytest.raises(market_errors.WrongPurchaseState):
        seller.settle(purchase)
    assert seller.owed(seller.address) == 0
    assert seller.sales_revenue(task, 1) == (0, 0)


def test_a_correct_key_cannot_be_disputed_and_settles_after_the_window(chain: Chain) -> None:
    task, listing, key = sold_round(chain)
    buyer, seller = chain.ledger(BUYER), chain.ledger(AGGREGATOR)
    purchase, one_time = buy(chain, listing, 50 * TOKEN)
    right = delivery_of(chain, purchase, key)
    seller.deliver_key(purchase, right)
    opened(chain, purchase, one_time).check_commitment(key.commitment)

    with pytest.raises(market_errors.KeyMatchesCommitment, match="nothing to dispute"):
        buyer.dispute(purchase, one_time, right)
    with pytest.raises(market_errors.InvalidSecret, match="one-time key"):
        buyer.dispute(purchase, OneTimeKey.generate(), right)
    altered = KeyDelivery(right.ephemeral, bytes(32))
    with pytest.raises(market_errors.DeliveryMismatch):
        buyer.dispute(purchase, one_time, altered)
    chain.advance(DISPUTE_WINDOW + 1)
    with pytest.raises(market_errors.DisputeWindowClosed):
        buyer.dispute(purchase, one_time, right)

    assert buyer.settle(purchase) == 40 * TOKEN
    assert seller.owed(seller.address) == 40 * TOKEN
    assert seller.sales_revenue(task, 1) == (10 * TOKEN, 0)
    assert buyer.balance(buyer.address) == 50 * TOKEN
    with pytest.raises(market_errors.WrongPurchaseState):
        buyer.settle(purchase)  # nothing twice


# -- attack: degenerate keys -------------------------------------------------------------------

DEGENERATE = {
    "infinity": (0, 0),
    "off-curve": (1, 1),
    "x not reduced": (1 + FIELD, 2),
    "y not reduced": (1, 2 + FIELD),
}


@pytest.mark.parametrize("point", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_degenerate_buyer_keys_are_rejected_before_money_moves(
    chain: Chain, point: tuple[int, int]
) -> None:
    _, listing, _ = sold_round(chain)
    buyer = chain.ledger(BUYER)
    block, market = chain.w3.eth.block_number, market_balance(chain)

    with pytest.raises(InvalidInput):  # the client refuses it...
        G1Point(*point)
    with pytest.raises(market_errors.InvalidCurvePoint, match="not a point"):  # ...and the chain
        buyer.buy(listing, buyer_key=unchecked_point(*point), max_price=50 * TOKEN)

    assert chain.w3.eth.block_number == block
    assert (buyer.balance(buyer.address), market_balance(chain)) == (100 * TOKEN, market)


@pytest.mark.parametrize("point", DEGENERATE.values(), ids=DEGENERATE.keys())
def test_an_invalid_ephemeral_key_cannot_be_delivered(chain: Chain, point: tuple[int, int]) -> None:
    _, listing, key = sold_round(chain)
    purchase, one_time = buy(chain, listing, 50 * TOKEN)
    seller = chain.ledger(AGGREGATOR)
    garbage = KeyDelivery(unchecked_point(*point), bytes(32))

    with pytest.raises(market_errors.InvalidCurvePoint):
        seller.deliver_key(purchase, garbage)

    assert seller.purchase(purchase).state == PurchaseState.PENDING
    seller.deliver_key(purchase, delivery_of(chain, purchase, key))
    opened(chain, purchase, one_time).check_commitment(key.commitment)


# -- attack: lineage hijack --------------------------------------------------------------------


def test_strangers_cannot_list_or_hijack_a_tasks_lineage(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    chain.finalize()
    key = AssetKey.generate()
    listing = list_round(chain, task, 1, key)
    stranger = chain.ledger(ATTACKER)
    with pytest.raises(market_errors.NotTaskOwner, match="only its sponsor or aggregator"):
        list_round(chain, task, 1, AssetKey.generate(), seller=ATTACKER)
    with pytest.raises(market_errors.UnknownRound, match="no committed round 2"):
        list_round(chain, task, 2, key)  # not even its owners: round 2 is not committed
    with pytest.raises(market_errors.NotAggregator):
        commit(chain, task, 2, tree_of(chain, {ATTACKER: TOKEN}), aggregator=ATTACKER)
    named = stranger.listing(listing)
    stored = stranger.round_state(task, 1)

    # The stranger's own task commits the very same model commitment and lists it.
    give(chain, ATTACKER, 10)
    own = new_task(chain, budget=10, sponsor=ATTACKER, aggregator=ATTACKER)
    commit(chain, own, 1, tree_of(chain, {ATTACKER: 10}), aggregator=ATTACKER)
    chain.finalize()
    theirs = list_round(chain, own, 1, AssetKey.generate(), price=1, seller=ATTACKER)

    assert stranger.listing(listing) == named
    assert (named.task, named.round, named.seller) == (task, 1, address(chain, AGGREGATOR))
    assert stranger.round_state(task, 1) == stored
    assert stranger.listing(theirs).task == own  # it names its own task, nobody else's
    assert [(c.task, c.round) for c in stranger.round_commits(task)] == [(task, 1)]


# -- sale share to devices, not the sponsor ----------------------------------------------------


def test_sale_share_goes_to_the_rounds_devices_not_the_sponsor(chain: Chain) -> None:
    # Prepare: round 1 pays A 30 and B 10; the sponsor sells it twice with 33.33 % to devices
    task = new_task(chain, budget=100 * TOKEN)
    tree = tree_of(chain, {A: 30 * TOKEN, B: 10 * TOKEN})
    commit(chain, task, 1, tree)
    chain.finalize()
    key = AssetKey.generate()
    price = 1001
    listing = list_round(chain, task, 1, key, price=price, bps=3333, seller=SPONSOR)
    give(chain, BUYER, 10 * price)
    sponsor = chain.ledger(SPONSOR)
    first, _ = buy(chain, listing, price)
    sponsor.deliver_key(first, delivery_of(chain, first, key))
    chain.advance(DISPUTE_WINDOW + 1)
    sponsor.settle(first)
    revenue = price * 3333 // 10_000  # 333
    assert sponsor.sales_revenue(task, 1) == (revenue, 0)
    a, b = address(chain, A), address(chain, B)

    # Execute: A claims, a second sale settles, both claim
    share_a = chain.ledger(A).claim_sale_share(task, 1, a, 30 * TOKEN, tree.proof(a))
    second, _ = buy(chain, listing, price)
    sponsor.deliver_key(second, delivery_of(chain, second, key))
    chain.advance(DISPUTE_WINDOW + 1)
    sponsor.settle(second)
    share_a += chain.ledger(SYBIL).claim_sale_share(task, 1, a, 30 * TOKEN, tree.proof(a))
    share_b = chain.ledger(B).claim_sale_share(task, 1, b, 10 * TOKEN, tree.proof(b))

    # Assert: pro rata, within the revenue, nothing twice, nothing to the sponsor
    assert share_a == 2 * revenue * 30 // 40
    assert share_b == 2 * revenue * 10 // 40
    received, paid = sponsor.sales_revenue(task, 1)
    assert (received, paid) == (2 * revenue, share_a + share_b)
    assert paid <= received
    assert chain.ledger(A).balance(a) == share_a
    assert chain.ledger(A).sale_claimed(task, 1, a) == share_a
    with pytest.raises(market_errors.NothingToClaim):
        chain.ledger(A).claim_sale_share(task, 1, a, 30 * TOKEN, tree.proof(a))
    with pytest.raises(market_errors.InvalidProof):  # the sponsor has no leaf
        sponsor.claim_sale_share(task, 1, sponsor.address, 10 * TOKEN, tree.proof(b))
    sponsor.close_task(task)
    chain.advance(2 * CLOSE_GRACE + 1)  # commits stop, then a grace for acks
    assert sponsor.refund_unspent(task) == 60 * TOKEN  # escrow - committed; no sale money
    assert sponsor.sales_revenue(task, 1) == (received, paid)
    owed = sponsor.owed(sponsor.address)  # the sponsor's seller proceeds, 2 x (1001 - 333)
    assert owed == 2 * (price - revenue)
    assert market_balance(chain) == 40 * TOKEN + (received - paid) + owed


def test_a_round_that_paid_nobody_cannot_be_listed_with_a_share(chain: Chain) -> None:
    task = new_task(chain, budget=100 * TOKEN)
    commit(chain, task, 1, tree_of(chain, {A: 0}))
    chain.finalize()
    with pytest.raises(market_errors.NoContributors, match="share of 0"):
        list_round(chain, task, 1, AssetKey.generate(), bps=1000)
    assert list_round(chain, task, 1, AssetKey.generate(), bps=0)


def test_the_share_fixed_at_task_creation_binds_every_listing(chain: Chain) -> None:
    """The sponsor promises devices 25 % of every sale when it opens the task; neither it nor
    the aggregator can list the task's model for less, and nothing is sent trying."""
    sponsor = chain.ledger(SPONSOR)
    task = sponsor.create_task(
        aggregator=address(chain, AGGREGATOR),
        reward_per_update=TOKEN,
        budget=100 * TOKEN,
        spec_cid=EMPTY_CID,
        contributors_bps=2500,
    )
    assert sponsor.task(task).contributors_bps == 2500
    commit(chain, task, 1, tree_of(chain, {A: 10 * TOKEN}))
    chain.finalize()

    for seller, bps in ((SPONSOR, 2499), (AGGREGATOR, 2499), (SPONSOR, 0), (AGGREGATOR, 0)):
        sent = chain.w3.eth.get_transaction_count(address(chain, seller))
        with pytest.raises(market_errors.ShareBelowTask, match="at least 2500 basis points"):
            list_round(chain, task, 1, AssetKey.generate(), bps=bps, seller=seller)
        assert chain.w3.eth.get_transaction_count(address(chain, seller)) == sent
    assert sponsor.listing_ids() == []

    at = list_round(chain, task, 1, AssetKey.generate(), bps=2500, seller=SPONSOR)
    above = list_round(chain, task, 1, AssetKey.generate(), bps=10_000, seller=AGGREGATOR)
    assert [sponsor.listing(n).contributors_bps for n in (at, above)] == [2500, 10_000]
    assert sponsor.task(task).contributors_bps == 2500

    # A share above 100 % at creation: the client refuses it before sending, and so would the
    # contract (reverting before it takes any token).
    sent = chain.w3.eth.get_transaction_count(sponsor.address)
    tasks_before = sponsor.task_ids()
    with pytest.raises(InvalidInput, match=r"0\.\.10000"):
        sponsor.create_task(
            aggregator=address(chain, AGGREGATOR),
            reward_per_update=TOKEN,
            budget=100 * TOKEN,
            spec_cid=EMPTY_CID,
            contributors_bps=10_001,
        )
    create = raw_market(chain).functions.createTask(
        address(chain, AGGREGATOR), TOKEN, 100 * TOKEN, 10_001, b"\x01"
    )
    with pytest.raises(market_errors.BpsTooHigh):
        send_raw(chain, SPONSOR, create)
    assert chain.w3.eth.get_transaction_count(sponsor.address) == sent
    assert sponsor.task_ids() == tasks_before


# -- reentrancy through a hostile token --------------------------------------------------------


@dataclass
class HostileMarket:
    """A market whose token calls back into it on every transfer out (ReentrantToken)."""

    chain: Chain
    token: Contract
    market: Contract
    deployment: Deployment
    tree: RewardTree  # round 1 of task 1: A 5 tokens, B 1
    wrong: PurchaseId  # a wrong key delivered, inside the dispute window
    wrong_delivery: KeyDelivery
    undelivered: PurchaseId  # past its delivery deadline
    one_time: OneTimeKey

    def ledger(self, index: int) -> Web3Ledger:
        return Web3Ledger(self.chain.w3, self.deployment, self.chain.accounts[index])

    def send(self, index: int, call: object) -> None:
        send_call(self.chain.w3, self.chain.accounts[index], call)

    def balance(self, index: int) -> int:
        return int(self.token.functions.balanceOf(address(self.chain, index)).call())

    def raw_proof(self, account: str) -> bytes:
        """``account``'s proof in round 1 as the contract takes it (packed)."""
        return encode_proof(self.tree.proof(account))


def _deploy(chain: Chain, abi: list[dict[str, object]], bytecode: str, *args: object) -> str:
    return deploy_contract(chain.w3, chain.accounts[SPONSOR], abi, bytecode, *args)


def hostile_market(chain: Chain) -> HostileMarket:
    """Task 1 with round 1 committed, final and listed (50 % to devices), then closed with its
    close grace over (so its acknowledgements pay); purchases: one settled (proceeds for the
    seller and the round), one wrong key in its dispute window, one never delivered and past
    its deadline."""
    evil = helper_artifact("ReentrantToken")
    token_address = _deploy(chain, evil["abi"], evil["bytecode"], 10**6 * TOKEN)
    artifact = load_artifact("DataMarket")
    market_address = _deploy(
        chain,
        artifact.abi,
        artifact.bytecode,
        token_address,
        3600,
        DISPUTE_WINDOW,
        CLOSE_GRACE,
        CHALLENGE_WINDOW,
        RESPONSE_WINDOW,
    )
    w3 = chain.w3
    token = w3.eth.contract(address=token_address, abi=evil["abi"])
    market = w3.eth.contract(address=market_address, abi=artifact.abi)
    deployment = Deployment(chain.deployment.chain_id, token_address, market_address, 0)

    def send(index: int, call: object) -> None:
        send_call(w3, chain.accounts[index], call)

    # The hostile token has no permit: plain createTask and buy after an approval.
    send(SPONSOR, token.functions.approve(market_address, 100 * TOKEN))
    aggregator_address = address(chain, AGGREGATOR)
    send(SPONSOR, market.functions.createTask(aggregator_address, TOKEN, 100 * TOKEN, 0, b"\x01"))
    aggregator = Web3Ledger(w3, deployment, chain.accounts[AGGREGATOR])
    tree = tree_of(chain, {A: 5 * TOKEN, B: TOKEN})
    commit_round(aggregator, TaskId(1), 1, tree)
    chain.finalize()
    key = AssetKey.generate()
    listing = aggregator.list_asset(
        task=TaskId(1),
        round=1,
        asset_cid=MODEL_CID,
        price=10 * TOKEN,
        key_commitment=key.commitment,
        metadata_cid=EMPTY_CID,
        contributors_bps=5000,
    )
    # Closed before the purchases, so that waiting out its grace leaves their windows alone:
    # acknowledgements pay once the close grace is over.
    send(SPONSOR, market.functions.closeTask(1))
    chain.advance(CLOSE_GRACE + 1)
    send(SPONSOR, token.functions.transfer(address(chain, BUYER), 100 * TOKEN))
    send(BUYER, token.functions.approve(market_address, 100 * TOKEN))
    one_time = OneTimeKey.generate()

    def purchase() -> PurchaseId:
        send(BUYER, market.functions.buy(listing, list(one_time.public.as_tuple()), 10 * TOKEN))
        return PurchaseId(int(market.functions.purchaseCount().call()))

    def delivered(bought: PurchaseId, asset_key: AssetKey) -> KeyDelivery:
        delivery = deliver_key(
            asset_key,
            one_time.public,
            purchase=bought,
            chain_id=deployment.chain_id,
            market=market_address,
        )
        aggregator.deliver_key(bought, delivery)
        return delivery

    settled = purchase()
    delivered(settled, key)
    undelivered = purchase()
    chain.advance(3601)
    aggregator.settle(settled)  # 5 tokens to round 1's devices, 5 owed to the seller
    wrong = purchase()
    wrong_delivery = delivered(wrong, AssetKey.generate())
    return HostileMarket(
        chain, token, market, deployment, tree, wrong, wrong_delivery, undelivered, one_time
    )


def _hostile_ack(h: HostileMarket) -> tuple[Ack, bytes]:
    acked = ack(h.chain, TaskId(1), 1, C, 2 * TOKEN)  # C is not in the root
    signature = sign_ack(
        acked,
        h.chain.accounts[AGGREGATOR],
        chain_id=h.deployment.chain_id,
        market=h.deployment.market,
    )
    return acked, signature


def _outer_calls(h: HostileMarket) -> dict[str, tuple[int, Callable[[], int]]]:
    """Each payout of the hostile market: (who receives, the call as that party makes it)."""
    a = address(h.chain, A)
    acked, signature = _hostile_ack(h)
    return {
        "claim": (A, lambda: h.ledger(A).claim(TaskId(1), 1, a, 5 * TOKEN, h.tree.proof(a))),
        "claimAcknowledged": (C, lambda: h.ledger(C).claim_acknowledged(acked, signature)),
        "claimSaleShare": (
            A,
            lambda: h.ledger(A).claim_sale_share(TaskId(1), 1, a, 5 * TOKEN, h.tree.proof(a)),
        ),
        "dispute": (BUYER, lambda: h.ledger(BUYER).dispute(h.wrong, h.one_time, h.wrong_delivery)),
        "refund": (BUYER, lambda: h.ledger(BUYER).refund(h.undelivered)),
        "withdraw": (AGGREGATOR, lambda: h.ledger(AGGREGATOR).withdraw()),
    }


EXPECTED_PAYOUT = {
    "claim": 5 * TOKEN,
    "claimAcknowledged": 2 * TOKEN,
    "claimSaleShare": 5 * TOKEN * 5 // 6,  # 5 tokens of revenue, A holds 5 of 6 rewards
    "dispute": 10 * TOKEN,
    "refund": 10 * TOKEN,
    "withdraw": 5 * TOKEN,
}


# claim holds no lock of its own (it is CEI): another payout entered from its transfer runs as
# if called after it (test_a_claim_entered_from_its_own_transfer_pays_each_once).
REENTRY_CASES = [
    (operation, inner)
    for operation in EXPECTED_PAYOUT
    for inner in ("same call", "another payout")
    if (operation, inner) != ("claim", "another payout")
]


@pytest.mark.parametrize(("operation", "inner"), REENTRY_CASES)
def test_a_reentrant_token_cannot_pay_twice(chain: Chain, operation: str, inner: str) -> None:
    # Prepare: arm the token to call back into the market when the market pays out
    h = hostile_market(chain)
    receiver, outer = _outer_calls(h)[operation]
    b = address(chain, B)
    if inner == "another payout":  # valid on its own: only the guard can refuse it
        attack = h.market.encode_abi("claim", [1, b, 1, TOKEN, h.raw_proof(b)])
    else:
        attack = _same_call(h, operation)
    h.send(SPONSOR, h.token.functions.arm(h.market.address, attack))
    market_before = int(h.token.functions.balanceOf(h.market.address).call())
    before = h.balance(receiver)

    # Execute
    paid = outer()

    # Assert: the callback ran and failed; the payout happened once
    assert h.token.functions.attempted().call() is True
    assert h.token.functions.reentered().call() is False
    assert paid == EXPECTED_PAYOUT[operation]
    assert h.balance(receiver) == before + paid
    assert h.token.functions.balanceOf(h.market.address).call() == market_before - paid
    assert h.ledger(B).claim(TaskId(1), 1, b, TOKEN, h.tree.proof(b)) == TOKEN  # nothing lost


def test_a_claim_entered_from_its_own_transfer_pays_each_once(chain: Chain) -> None:
    # Prepare: A's claim transfers; the token then claims B's reward inside that transfer
    h = hostile_market(chain)
    a, b = address(chain, A), address(chain, B)
    attack = h.market.encode_abi("claim", [1, b, 1, TOKEN, h.raw_proof(b)])
    h.send(SPONSOR, h.token.functions.arm(h.market.address, attack))
    market_before = int(h.token.functions.balanceOf(h.market.address).call())
    before = {a: h.balance(A), b: h.balance(B)}

    # Execute
    paid = h.ledger(A).claim(TaskId(1), 1, a, 5 * TOKEN, h.tree.proof(a))

    # Assert: A's claim had settled before its transfer, so B's ran as a claim of its own; each
    # account was paid once, exactly what its leaf holds, and a second claim finds nothing
    assert h.token.functions.reentered().call() is True
    assert (paid, h.balance(A) - before[a], h.balance(B) - before[b]) == (
        5 * TOKEN,
        5 * TOKEN,
        TOKEN,
    )
    assert h.token.functions.balanceOf(h.market.address).call() == market_before - 6 * TOKEN
    for index, account, amount in ((A, a, 5 * TOKEN), (B, b, TOKEN)):
        with pytest.raises(market_errors.NothingToClaim):
            h.ledger(index).claim(TaskId(1), 1, account, amount, h.tree.proof(account))


def _same_call(h: HostileMarket, operation: str) -> bytes:
    """The outer call's own calldata, replayed from inside the token."""
    a = address(h.chain, A)
    acked, signature = _hostile_ack(h)
    arguments: dict[str, list[object]] = {
        "claim": [1, a, 1, 5 * TOKEN, h.raw_proof(a)],
        "claimAcknowledged": [tuple(acked.as_struct().values()), signature],
        "claimSaleShare": [1, a, 1, 5 * TOKEN, h.raw_proof(a)],
        "dispute": [
            h.wrong,
            h.one_time.secret,
            list(h.wrong_delivery.ephemeral.as_tuple()),
            h.wrong_delivery.masked_key,
        ],
        "refund": [h.undelivered],
        "withdraw": [],
    }
    return bytes.fromhex(h.market.encode_abi(operation, arguments[operation]).removeprefix("0x"))
