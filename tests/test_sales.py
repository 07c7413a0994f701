"""Selling a committed round's model: list, buy in one transaction, deliver keys by ECDH, settle
after the dispute window, dispute a wrong key, and what each party must not be able to take."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
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

from fedmarket.contracts import load_artifact
from fedmarket.crypto import AssetKey
from fedmarket.crypto.key_delivery import GENERATOR, KeyDelivery, OneTimeKey, deliver_key
from fedmarket.exceptions import (
    InvalidInput,
    KeyCommitmentMismatch,
    TransactionFailed,
)
from fedmarket.ledger import Web3Ledger
from fedmarket.ledger.base import PurchaseState
from fedmarket.ledger.errors import (
    DisputeWindowOpen,
    InvalidSecret,
    KeyMatchesCommitment,
    NotTaskOwner,
    RoundIsVoided,
    RoundNotFinal,
)
from fedmarket.market.claims import claim_all, rewards_of
from fedmarket.market.publisher import RoundPublisher
from fedmarket.market.rewards import RewardTree
from fedmarket.market.sales import (
    Keyring,
    buy_model,
    dispute_key,
    list_model,
    pay_for,
    receive,
    serve,
    settle_due,
)
from fedmarket.market.sealed_models import SealedModel, model_commitment
from fedmarket.market.watch import watch
from fedmarket.store import LocalStore
from fedmarket.types import ListingId, PurchaseId, TaskId

pytestmark = pytest.mark.integration

PRICE = 50
BPS = 2000  # the contributors' share of each sale
BUDGET = 100
INITIAL = b"the initial model's safetensors bytes"
# Not periodic, so any 32-byte window of it found in a ciphertext would be a real leak.
MODEL = hashlib.shake_256(b"safetensors bytes of a trained model").digest(40_000)


# -- helpers shared with test_cli_market -----------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """The deployed market's windows, read from the contract (chain seconds)."""

    delivery: int
    dispute: int
    close_grace: int


def windows(chain: Chain) -> Windows:
    market = chain.w3.eth.contract(
        address=chain.w3.to_checksum_address(chain.deployment.market),
        abi=load_artifact("DataMarket").abi,
    )
    return Windows(
        int(market.functions.deliveryWindow().call()),
        int(market.functions.disputeWindow().call()),
        int(market.functions.closeGrace().call()),
    )


def publish_first_round(
    chain: Chain,
    publisher: RoundPublisher,
    task: TaskId,
    model: bytes,
    devices: Iterable[LocalAccount],
) -> None:
    """Round 1 of ``task`` by its publisher, trained from INITIAL, paying ``devices``."""
    trained_from = publisher.trained_from(1, INITIAL)
    paid = list(devices)
    publisher.publish(
        1,
        model=model,
        trained_from=trained_from,
        survivors=[d.address for d in paid],
        receipts=[signed_receipt(chain, d, task, 1, trained_from) for d in paid],
        evidence={"accuracy": 0.85},
    )


def nonces(chain: Chain) -> list[int]:
    return [chain.w3.eth.get_transaction_count(a.address) for a in chain.accounts]


# -- this module's setup -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sale:
    task: TaskId
    listing: ListingId
    store: LocalStore
    keyring: Keyring
    publisher: RoundPublisher


def setup_sale(chain: Chain, tmp_path: Path) -> Sale:
    """Task 1 (sponsor 0, aggregator 1, reward 1) with round 1 committed and final, paying
    devices 2 and 3; the aggregator lists its model at PRICE with BPS to contributors; buyer 8
    holds 100."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=1,
        budget=BUDGET,
        spec_cid=MODEL_CID,
    )
    publisher = open_publisher(chain, task, tmp_path)
    publish_first_round(chain, publisher, task, MODEL, chain.accounts[2:4])
    chain.finalize()  # only a final round is listed
    store, keyring = LocalStore(tmp_path / "store"), Keyring(tmp_path / "seller-keys")
    listing = list_model(
        chain.ledger(1),
        store,
        keyring,
        task=task,
        round=1,
        model=publisher.sealed_model(1),
        price=PRICE,
        metadata={"accuracy": 0.85, "epsilon_max": 6.9},
        contributors_bps=BPS,
    )
    chain.ledger(0).transfer(chain.accounts[8].address, 100)
    return Sale(task, listing, store, keyring, publisher)


def deliver_wrong_key(seller: Web3Ledger, purchase: PurchaseId) -> None:
    """The seller posts a well-formed delivery of some other key to the buyer's real key."""
    delivery = deliver_key(
        AssetKey.generate(),
        seller.buyer_key(purchase),
        purchase=purchase,
        chain_id=seller.chain_id,
        market=seller.market_address,
    )
    seller.deliver_key(purchase, delivery)


@pytest.fixture
def seller_online(chain: Chain, tmp_path: Path) -> Iterator[Keyring]:
    keyring = Keyring(tmp_path / "seller-keys")
    stop = threading.Event()

    def loop() -> None:
        seller = chain.ledger(1)
        while not stop.wait(0.3):
            serve(seller, keyring)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield keyring
    stop.set()
    thread.join()


# -- honest sales ----------------------------------------------------------------------------------


def test_buyer_gets_the_model_and_the_money_splits(
    chain: Chain, tmp_path: Path, seller_online: Keyring
) -> None:
    sale = setup_sale(chain, tmp_path)
    buyer, seller = chain.ledger(8), chain.ledger(1)

    bought = buy_model(buyer, sale.store, sale.listing, OneTimeKey.generate(), timeout=30, poll=0.2)

    assert bought.model == MODEL
    assert (bought.task, bought.round, bought.price) == (sale.task, 1, PRICE)
    assert bought.lineage is not None
    assert bought.lineage.model_opened
    assert bought.metadata["accuracy"] == 0.85
    assert bought.metadata["model_commitment"] == bought.sealed.commitment.hex()
    assert (bought.metadata["task"], bought.metadata["round"]) == (sale.task, 1)
    # Proceeds wait out the dispute window; nothing is split before.
    assert seller.owed(seller.address) == 0
    assert settle_due(seller) == []
    assert serve(seller, seller_online) == []  # already delivered: nothing sent twice

    chain.advance(windows(chain).dispute + 1)
    assert settle_due(seller) == [bought.purchase]
    assert settle_due(seller) == []  # settled once

    assert seller.owed(seller.address) == PRICE * (10_000 - BPS) // 10_000
    assert seller.sales_revenue(sale.task, 1) == (PRICE * BPS // 10_000, 0)
    assert seller.task(sale.task).escrow == BUDGET  # sales never move the task's escrow
    # The contributors' share reaches the two paid devices, pro rata to their rewards.
    for index in (2, 3):
        ledger = chain.ledger(index)
        paid = claim_all(ledger, rewards_of(ledger, sale.store, ledger.address))
        assert paid == {sale.task: 1 + PRICE * BPS // 10_000 // 2}
    assert seller.sales_revenue(sale.task, 1) == (PRICE * BPS // 10_000,) * 2


def test_seller_offline_buyer_times_out_then_refunds(chain: Chain, tmp_path: Path) -> None:
    sale = setup_sale(chain, tmp_path)
    buyer = chain.ledger(8)

    with pytest.raises(TransactionFailed, match=r"no key came .*take a refund of purchase 1"):
        buy_model(buyer, sale.store, sale.listing, OneTimeKey.generate(), timeout=0.5, poll=0.1)
    (purchase,) = chain.ledger(1).purchases_of(chain.accounts[1].address)
    chain.advance(windows(chain).delivery + 1)

    assert buyer.refund(purchase.purchase) == PRICE
    assert buyer.balance(buyer.address) == 100
    assert serve(chain.ledger(1), sale.keyring) == []  # too late to deliver: nothing sent


def test_bad_purchases_send_nothing(chain: Chain, tmp_path: Path) -> None:
    sale = setup_sale(chain, tmp_path)
    poor = chain.ledger(9)
    sent = nonces(chain)

    with pytest.raises(InvalidInput, match="does not exist"):
        buy_model(poor, sale.store, ListingId(999), OneTimeKey.generate(), timeout=1)
    with pytest.raises(InvalidInput, match="top up the account first"):
        buy_model(poor, sale.store, sale.listing, OneTimeKey.generate(), timeout=1)
    with pytest.raises(InvalidInput, match="above your maximum"):
        buy_model(poor, sale.store, sale.listing, OneTimeKey.generate(), max_price=PRICE - 1)
    assert nonces(chain) == sent


# -- a seller who cheats ---------------------------------------------------------------------------


def cheat_delivery(kind: str, seller: Web3Ledger, sale: Sale, purchase: PurchaseId) -> KeyDelivery:
    """A well-formed delivery that does not give the buyer the listing's key."""
    right = sale.keyring.get(sale.listing)
    assert right is not None
    chain_id, market, buyer = seller.chain_id, seller.market_address, seller.buyer_key(purchase)
    if kind == "another key":
        return deliver_key(
            AssetKey.generate(), buyer, purchase=purchase, chain_id=chain_id, market=market
        )
    if kind == "the key bound to another purchase":
        return deliver_key(right, buyer, purchase=purchase + 1, chain_id=chain_id, market=market)
    return KeyDelivery(GENERATOR, os.urandom(32))  # "random bytes"


@pytest.mark.parametrize(
    "kind", ["another key", "the key bound to another purchase", "random bytes"]
)
def test_a_key_that_misses_its_commitment_is_refused_and_refunded(
    chain: Chain, tmp_path: Path, kind: str
) -> None:
    """THREATS, seller: may deliver any bytes as a key, must not keep the payment for it."""
    sale = setup_sale(chain, tmp_path)
    buyer, seller = chain.ledger(8), chain.ledger(1)
    identity = OneTimeKey.generate()
    stop = threading.Event()

    def cheat() -> None:
        while not stop.wait(0.1):
            for p in seller.purchases_of(seller.address):
                if p.state is PurchaseState.PENDING:
                    seller.deliver_key(p.purchase, cheat_delivery(kind, seller, sale, p.purchase))

    thread = threading.Thread(target=cheat, daemon=True)
    thread.start()
    try:
        with pytest.raises(KeyCommitmentMismatch, match="does not hash to the listing's key"):
            buy_model(buyer, sale.store, sale.listing, identity, timeout=30, poll=0.2)
    finally:
        stop.set()
        thread.join()
    (purchase,) = seller.purchases_of(seller.address)
    assert buyer.balance(buyer.address) == 100 - PRICE

    assert dispute_key(buyer, purchase.purchase, identity) == PRICE

    assert buyer.balance(buyer.address) == 100
    assert buyer.purchase(purchase.purchase).state is PurchaseState.REFUNDED
    chain.advance(windows(chain).dispute + 1)
    assert settle_due(seller) == []  # nothing left to release to the seller
    assert seller.owed(seller.address) == 0
    assert seller.sales_revenue(sale.task, 1) == (0, 0)


# -- a buyer who cheats ----------------------------------------------------------------------------


def test_a_working_key_cannot_be_disputed(chain: Chain, tmp_path: Path) -> None:
    """THREATS, buyer: may dispute falsely, must not get a refund for a key that works. The
    client refuses before revealing anything; the contract refuses a dispute sent anyway, and
    one made with another secret."""
    sale = setup_sale(chain, tmp_path)
    buyer, seller = chain.ledger(8), chain.ledger(1)
    identity = OneTimeKey.generate()
    purchase = pay_for(buyer, sale.listing, identity)
    assert serve(seller, sale.keyring) == [purchase]
    assert receive(buyer, sale.store, purchase, identity, timeout=5).model == MODEL
    sent = nonces(chain)

    with pytest.raises(InvalidInput, match="nothing to dispute"):
        dispute_key(buyer, purchase, identity)
    assert nonces(chain) == sent
    delivery = buyer.key_delivery(purchase)
    assert delivery is not None
    with pytest.raises(KeyMatchesCommitment):
        buyer.dispute(purchase, identity, delivery)
    with pytest.raises(InvalidSecret):
        buyer.dispute(purchase, OneTimeKey.generate(), delivery)
    with pytest.raises(DisputeWindowOpen):
        seller.settle(purchase)  # nor is anything released early
    assert nonces(chain) == sent

    chain.advance(windows(chain).dispute + 1)
    assert settle_due(seller) == [purchase]
    assert buyer.balance(buyer.address) == 100 - PRICE
    assert seller.owed(seller.address) == PRICE * (10_000 - BPS) // 10_000


# -- who may list what -----------------------------------------------------------------------------


def test_only_the_tasks_owners_list_and_only_its_committed_model(
    chain: Chain, tmp_path: Path
) -> None:
    """THREATS, anyone on chain: must not hijack another task's lineage by listing its rounds;
    and a listing must sell the model its round committed."""
    sale = setup_sale(chain, tmp_path)
    stranger = chain.ledger(5)
    sealed = sale.publisher.sealed_model(1)
    before = nonces(chain)

    def listed(ledger: Web3Ledger, round_: int, model: SealedModel) -> ListingId:
        return list_model(
            ledger,
            sale.store,
            Keyring(tmp_path / f"keys-{ledger.address}"),
            task=sale.task,
            round=round_,
            model=model,
            price=PRICE,
            metadata={},
            contributors_bps=0,
        )

    with pytest.raises(NotTaskOwner, match=f"may not list models of task {sale.task}"):
        listed(stranger, 1, sealed)
    other = SealedModel(sealed.salt, b"another model")
    with pytest.raises(InvalidInput, match="does not open task 1 round 1's commitment"):
        listed(chain.ledger(1), 1, other)
    with pytest.raises(InvalidInput, match="has no committed round 2"):
        listed(chain.ledger(1), 2, sealed)
    assert nonces(chain) == before
    assert chain.ledger(0).listing_ids() == [sale.listing]

    sponsor_listing = listed(chain.ledger(0), 1, sealed)  # the sponsor may sell it too
    assert str(chain.ledger(0).listing(sponsor_listing).seller) == str(chain.accounts[0].address)


def test_a_round_is_listed_only_once_final_and_never_once_voided(
    chain: Chain, tmp_path: Path
) -> None:
    """A root still in its challenge window may yet be voided, so its model is not for sale
    until the window is over; a voided root's model never is."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address,
        reward_per_update=1,
        budget=BUDGET,
        spec_cid=MODEL_CID,
    )
    a, b = chain.accounts[2:4]
    publish_first_round(chain, open_publisher(chain, task, tmp_path), task, MODEL, [a, b])
    store = LocalStore(tmp_path / "store")

    def listed(round_: int) -> ListingId:
        return chain.ledger(1).list_asset(
            task=task,
            round=round_,
            asset_cid=MODEL_CID,
            price=PRICE,
            key_commitment=AssetKey.generate().commitment,
            metadata_cid=MODEL_CID,
            contributors_bps=BPS,
        )

    before = nonces(chain)
    with pytest.raises(RoundNotFinal, match=f"task {task} round 1 is not final"):
        listed(1)
    assert nonces(chain) == before
    chain.finalize()
    first = listed(1)
    # The aggregator commits a round 2 that drops b (no bundle explains it): b's watch
    # challenges it for a and b with their round-1 leaves, nobody answers, and once the
    # response window is over the root is voided.
    commit(chain.ledger(1), task, 2, RewardTree.build({a.address: 2}))
    objections = watch(chain.ledger(3), store, b.address)
    assert {(o.account, o.round, o.owed, o.action) for o in objections} == {
        (a.address, 2, 1, "challenged"),
        (b.address, 2, 1, "challenged"),
    }
    with pytest.raises(RoundNotFinal):
        listed(2)
    chain.advance(CHALLENGE_WINDOW + RESPONSE_WINDOW)
    objections = watch(chain.ledger(3), store, b.address)
    assert "voided (the challenge went unanswered)" in {o.action for o in objections}
    with pytest.raises(RoundIsVoided):
        listed(2)
    assert chain.ledger(0).listing_ids() == [first]


# -- nothing readable without paying ---------------------------------------------------------------


def test_nothing_of_the_model_is_readable_without_paying(chain: Chain, tmp_path: Path) -> None:
    """Everything published (the store's blocks, the listing's asset, the round's stored
    ciphertext, the metadata and the chain's commitment) reveals no part of the model."""
    sale = setup_sale(chain, tmp_path)
    ledger = chain.ledger(9)
    offer = ledger.listing(sale.listing)
    (commit,) = ledger.round_commits(sale.task)
    windows_of_model = {MODEL[i : i + 32] for i in range(0, len(MODEL) - 32, 997)}
    windows_of_model |= {MODEL[:32], MODEL[-32:]}

    published = [
        sale.store.get_bytes(offer.asset_cid),
        sale.store.get_bytes(commit.model_cid),
        sale.store.get_bytes(ledger.listing_metadata_cid(sale.listing)),
        *(block.read_bytes() for block in (tmp_path / "store").rglob("*") if block.is_file()),
    ]

    assert published[0] != published[1]  # the listing has its own key, not the round's
    for blob in published:
        assert not any(window in blob for window in windows_of_model)
    # The commitment is salted: hashing a guessed model (without the secret salt) misses it.
    assert commit.model_commitment == sale.publisher.sealed_model(1).commitment
    assert commit.model_commitment not in {
        model_commitment(bytes(32), MODEL),
        hashlib.sha256(MODEL).digest(),
    }


# -- availability: one purchase, or a front-runner, must not stop the seller ----------------------


class FrontRunSettle(Web3Ledger):
    """The seller's ledger on the real chain, with a stranger's ``settle`` of the same purchase
    mined just before each of its own: what anyone watching the mempool can do (anyone may
    settle a due purchase)."""

    def __init__(self, chain: Chain, seller: int, stranger: Web3Ledger) -> None:
        super().__init__(chain.w3, chain.deployment, chain.accounts[seller], receipt_timeout=30)
        self.stranger = stranger

    def settle(self, purchase: PurchaseId) -> int:
        self.stranger.settle(purchase)
        return super().settle(purchase)


class LateDelivery(Web3Ledger):
    """The seller's ledger on the real chain, whose delivery for ``late`` is mined only after
    ``seconds`` more of chain time: a purchase whose deadline falls between the seller's read
    of the chain time and the block that carries its delivery."""

    def __init__(self, chain: Chain, seller: int, late: PurchaseId, seconds: int) -> None:
        super().__init__(chain.w3, chain.deployment, chain.accounts[seller], receipt_timeout=30)
        self.chain, self.late, self.seconds = chain, late, seconds

    def deliver_key(self, purchase: PurchaseId, delivery: KeyDelivery) -> None:
        if purchase == self.late:
            self.chain.advance(self.seconds)
        super().deliver_key(purchase, delivery)


def test_a_front_run_settle_does_not_stop_the_seller(chain: Chain, tmp_path: Path) -> None:
    """THREATS, anyone on chain: may front-run any transaction, must not break another party's
    commands. A stranger settling the seller's due sale first must not make ``settle_due``
    (so `market serve` and `market withdraw`) fail; the proceeds are the seller's all the same."""
    sale = setup_sale(chain, tmp_path)
    purchase = pay_for(chain.ledger(8), sale.listing, OneTimeKey.generate())
    assert serve(chain.ledger(1), sale.keyring) == [purchase]
    chain.advance(windows(chain).dispute + 1)
    seller = FrontRunSettle(chain, 1, chain.ledger(9))

    assert settle_due(seller) == []  # the stranger released it, not this call

    assert seller.purchase(purchase).state is PurchaseState.SETTLED
    assert seller.withdraw() == PRICE * (10_000 - BPS) // 10_000


def test_a_delivery_that_misses_its_deadline_does_not_stop_the_others(
    chain: Chain, tmp_path: Path
) -> None:
    """THREATS, availability: no single buyer can stop key delivery to the others. A purchase
    whose delivery window closes while its key is in flight is skipped (its buyer refunds), and
    the next buyer still gets its key."""
    sale = setup_sale(chain, tmp_path)
    chain.ledger(0).transfer(chain.accounts[7].address, PRICE)
    delivery_window = windows(chain).delivery
    first = pay_for(chain.ledger(8), sale.listing, OneTimeKey.generate())
    chain.advance(delivery_window - 30)
    second = pay_for(chain.ledger(7), sale.listing, OneTimeKey.generate())
    seller = LateDelivery(chain, 1, first, 60)

    assert serve(seller, sale.keyring) == [second]

    assert seller.purchase(first).state is PurchaseState.PENDING
    assert seller.purchase(second).state is PurchaseState.DELIVERED
    assert chain.ledger(8).refund(first) == PRICE


def test_list_model_refuses_a_round_in_its_challenge_window_before_storing_anything(
    chain: Chain, tmp_path: Path
) -> None:
    """The seller's client checks finality first: nothing is stored or sent for a round whose
    rewards may still be challenged."""
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=BUDGET, spec_cid=MODEL_CID
    )
    publisher = open_publisher(chain, task, tmp_path)
    publish_first_round(chain, publisher, task, MODEL, chain.accounts[2:4])
    store = LocalStore(tmp_path / "seller-store")
    before = nonces(chain)

    with pytest.raises(InvalidInput, match="is not final yet"):
        list_model(
            chain.ledger(1),
            store,
            Keyring(tmp_path / "seller-keys"),
            task=task,
            round=1,
            model=publisher.sealed_model(1),
            price=PRICE,
            metadata={},
            contributors_bps=BPS,
        )

    assert nonces(chain) == before
    assert not [p for p in (tmp_path / "seller-store").rglob("*") if p.is_file()]
