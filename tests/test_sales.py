"""Selling an encrypted model: list, buy in one transaction, serve sealed keys, refund."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chain_helpers import MODEL_CID, Chain

from fedmarket.crypto import AssetKey, Identity, seal_key
from fedmarket.exceptions import InvalidInput, KeyCommitmentMismatch, TransactionFailed
from fedmarket.market.sales import Keyring, buy_model, list_model, serve
from fedmarket.store import LocalStore
from fedmarket.types import ListingId, TaskId

pytestmark = pytest.mark.integration

PRICE = 50
MODEL = b"safetensors bytes of a trained model" * 1000


def setup_sale(chain: Chain, tmp_path: Path) -> tuple[TaskId, ListingId, LocalStore, Keyring]:
    task = chain.ledger(0).create_task(
        aggregator=chain.accounts[1].address, reward_per_update=1, budget=100, spec_cid=MODEL_CID
    )
    store, keyring = LocalStore(tmp_path / "store"), Keyring(tmp_path / "seller-keys")
    listing = list_model(
        chain.ledger(1),
        store,
        keyring,
        task=task,
        model=MODEL,
        price=PRICE,
        metadata={"accuracy": 0.85, "epsilon_max": 6.9},
        contributors_bps=2000,
    )
    chain.ledger(0).transfer(chain.accounts[8].address, 100)
    return task, listing, store, keyring


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


def test_buyer_gets_the_model_and_the_money_splits(
    chain: Chain, tmp_path: Path, seller_online: Keyring
) -> None:
    task, listing, store, keyring = setup_sale(chain, tmp_path)
    buyer = chain.ledger(8)

    bought = buy_model(buyer, store, listing, Identity.generate(), timeout=30, poll=0.2)

    assert bought.model == MODEL
    assert bought.metadata["accuracy"] == 0.85
    assert bought.metadata["model_cid"] == bought.model_cid
    seller = chain.ledger(1)
    assert seller.owed(seller.address) == PRICE * 80 // 100
    assert seller.task(task).escrow == 100 + PRICE * 20 // 100
    assert serve(seller, keyring) == []  # already delivered: nothing sent twice


def test_seller_offline_buyer_times_out_then_refunds(chain: Chain, tmp_path: Path) -> None:
    _, listing, store, _ = setup_sale(chain, tmp_path)
    buyer = chain.ledger(8)

    with pytest.raises(TransactionFailed, match=r"no key came .*take a refund of purchase 1"):
        buy_model(buyer, store, listing, Identity.generate(), timeout=0.5, poll=0.1)
    (purchase,) = chain.ledger(1).purchases_of(chain.accounts[1].address)
    chain.advance(3601)

    assert buyer.refund(purchase.purchase) == PRICE
    assert buyer.balance(buyer.address) == 100


def test_bad_purchases_send_nothing(chain: Chain, tmp_path: Path) -> None:
    _, listing, store, _ = setup_sale(chain, tmp_path)
    poor = chain.ledger(9)
    sent = chain.w3.eth.get_transaction_count(poor.address)

    with pytest.raises(InvalidInput, match="does not exist"):
        buy_model(poor, store, ListingId(999), Identity.generate(), timeout=1)
    with pytest.raises(InvalidInput, match="top up the account first"):
        buy_model(poor, store, listing, Identity.generate(), timeout=1)
    assert chain.w3.eth.get_transaction_count(poor.address) == sent


def test_a_key_that_misses_its_commitment_is_refused(chain: Chain, tmp_path: Path) -> None:
    _, listing, store, _ = setup_sale(chain, tmp_path)
    buyer, seller = chain.ledger(8), chain.ledger(1)
    identity = Identity.generate()
    result: list[BaseException] = []

    def cheat() -> None:  # delivers some other key
        while not seller.purchases_of(seller.address):
            pass
        (purchase,) = seller.purchases_of(seller.address)
        seller.deliver_key(purchase.purchase, seal_key(AssetKey.generate(), identity.public_key))

    thread = threading.Thread(target=cheat, daemon=True)
    thread.start()
    try:
        buy_model(buyer, store, listing, identity, timeout=30, poll=0.2)
    except KeyCommitmentMismatch as exc:
        result.append(exc)
    thread.join()
    assert result, "a wrong key must be refused"
    assert "does not hash to the listing's key commitment" in str(result[0])
