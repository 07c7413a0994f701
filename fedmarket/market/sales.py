"""Selling and buying encrypted models over a Ledger and a ContentStore.

Seller: :func:`list_model` encrypts the model with a fresh key, stores the ciphertext and a
metadata document (canonical JSON: the plaintext model's CID, ε, δ, devices, rounds, accuracy)
by CID, and lists it with the key's sha256 commitment; the key goes to the seller's keyring.
:func:`serve` delivers the key, sealed to each buyer's X25519 key, for every paid purchase still
pending: run it again after a restart and it delivers what is missing, never twice.

Buyer: :func:`buy_model` pays in one transaction, waits for the sealed key (with a timeout),
checks it against the commitment, fetches and decrypts the ciphertext, and checks that the
plaintext has the model CID the metadata names (whose lineage ``fedmarket verify`` walks).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmarket.crypto import AssetKey, Identity, decrypt_bytes, encrypt_bytes
from fedmarket.crypto.sealed import open_sealed_key, seal_key
from fedmarket.exceptions import DataError, InvalidInput, TransactionFailed
from fedmarket.ledger.base import Ledger, PurchaseState
from fedmarket.market.bundle import canonical_json
from fedmarket.market.lineage import Lineage
from fedmarket.store.base import ContentStore
from fedmarket.store.cid import canonical
from fedmarket.store.unixfs import cid_of_bytes
from fedmarket.types import ListingId, PurchaseId, TaskId


@dataclass(frozen=True)
class Bought:
    listing: ListingId
    purchase: PurchaseId
    price: int
    model: bytes
    model_cid: str
    metadata: dict[str, Any]


class Keyring:
    """The seller's asset keys, one 0600 file per listing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add(self, listing: ListingId, key: AssetKey) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key.save(self.folder / f"{listing}.key")

    def get(self, listing: ListingId) -> AssetKey | None:
        path = self.folder / f"{listing}.key"
        return AssetKey.load(path) if path.exists() else None


def list_model(
    ledger: Ledger,
    store: ContentStore,
    keyring: Keyring,
    *,
    task: TaskId | None,
    model: bytes,
    price: int,
    metadata: Mapping[str, Any],
    contributors_bps: int,
) -> ListingId:
    """Encrypt, store and list ``model``; return the listing."""
    key = AssetKey.generate()
    asset_cid = store.put_bytes(encrypt_bytes(model, key))
    model_cid = canonical(cid_of_bytes(model).to_cid())
    metadata_cid = store.put_bytes(canonical_json({**metadata, "model_cid": model_cid}))
    listing = ledger.list_asset(
        task=task,
        asset_cid=asset_cid,
        price=price,
        key_commitment=key.commitment,
        metadata_cid=metadata_cid,
        contributors_bps=contributors_bps,
    )
    keyring.add(listing, key)
    return listing


def serve(ledger: Ledger, keyring: Keyring) -> list[PurchaseId]:
    """Deliver sealed keys for every pending purchase of our listings; return those served."""
    served = []
    now = ledger.now()
    for purchase in ledger.purchases_of(ledger.address):
        if purchase.state is not PurchaseState.PENDING or now > purchase.deadline:
            continue
        key = keyring.get(purchase.listing)
        if key is None:
            continue  # listed from another keyring
        ledger.deliver_key(purchase.purchase, seal_key(key, purchase.buyer_key))
        served.append(purchase.purchase)
    return served


def buy_model(
    ledger: Ledger,
    store: ContentStore,
    listing: ListingId,
    identity: Identity,
    *,
    max_price: int | None = None,
    timeout: float = 120.0,
    poll: float = 1.0,
    progress: Callable[[float], None] | None = None,
) -> Bought:
    """Buy ``listing`` and return the decrypted, checked model."""
    purchase = pay_for(ledger, listing, identity, max_price=max_price)
    return receive(ledger, store, purchase, identity, timeout=timeout, poll=poll, progress=progress)


def pay_for(
    ledger: Ledger, listing: ListingId, identity: Identity, *, max_price: int | None = None
) -> PurchaseId:
    """Pay for ``listing`` in one transaction, after checking everything that can be checked."""
    offer = ledger.listing(listing)  # unknown listing: a clear error before paying
    if not offer.active:
        raise InvalidInput(f"listing {listing} is withdrawn; it cannot be bought")
    if max_price is not None and offer.price > max_price:
        raise InvalidInput(
            f"listing {listing} costs {offer.price}, above your maximum {max_price} "
            "(nothing was sent)"
        )
    balance = ledger.balance(ledger.address)
    if balance < offer.price:
        raise InvalidInput(
            f"listing {listing} costs {offer.price} but {ledger.address} holds {balance}; "
            "top up the account first (nothing was sent)"
        )
    return ledger.buy(listing, buyer_key=identity.public_key, max_price=offer.price)


def receive(
    ledger: Ledger,
    store: ContentStore,
    purchase: PurchaseId,
    identity: Identity,
    *,
    timeout: float = 120.0,
    poll: float = 1.0,
    progress: Callable[[float], None] | None = None,
) -> Bought:
    """Wait for ``purchase``'s sealed key, check it, fetch and decrypt the model, check its CID."""
    record = ledger.purchase(purchase)
    offer = ledger.listing(record.listing)
    sealed = _wait_for_key(ledger, purchase, timeout, poll, progress)
    key = open_sealed_key(sealed, identity)
    key.check_commitment(offer.key_commitment)
    model = decrypt_bytes(store.get_bytes(offer.asset_cid), key)
    metadata = listing_metadata(store, ledger, record.listing)
    model_cid = canonical(cid_of_bytes(model).to_cid())
    if metadata.get("model_cid") != model_cid:
        raise DataError(
            f"listing {record.listing}: the decrypted model is {model_cid}, but its metadata "
            f"names {metadata.get('model_cid')}; the seller listed something else"
        )
    return Bought(record.listing, purchase, record.price, model, model_cid, metadata)


def model_metadata(lineage: Lineage, **declared: Any) -> dict[str, Any]:
    """A listing's metadata from a verified lineage, plus what the seller declares."""
    epsilons = sorted(lineage.epsilon.values())
    facts: dict[str, Any] = {
        "task": lineage.task,
        "rounds": len(lineage.rounds),
        "devices": len(lineage.devices),
        "epsilon_max": epsilons[-1] if epsilons else None,
        "epsilon_median": statistics.median(epsilons) if epsilons else None,
        "delta": lineage.delta,
        "format": "safetensors",
    }
    return {**facts, **{k: v for k, v in declared.items() if v is not None}}


def _wait_for_key(
    ledger: Ledger,
    purchase: PurchaseId,
    timeout: float,
    poll: float,
    progress: Callable[[float], None] | None,
) -> bytes:
    started = time.monotonic()
    while (sealed := ledger.sealed_key(purchase)) is None:
        waited = time.monotonic() - started
        if waited > timeout:
            deadline = ledger.purchase(purchase).deadline
            raise TransactionFailed(
                f"purchase {purchase} is paid but no key came within {timeout:g} s; wait "
                f"longer, or after its deadline (unix time {deadline}) take a refund of "
                f"purchase {purchase}"
            )
        if progress is not None:
            progress(waited)
        time.sleep(poll)
    return sealed


def listing_metadata(store: ContentStore, ledger: Ledger, listing: ListingId) -> dict[str, Any]:
    """The metadata document a listing was published with."""
    cid = ledger.listing_metadata_cid(listing)
    try:
        document = json.loads(store.get_bytes(cid))
    except ValueError as exc:
        raise DataError(f"listing {listing}: metadata {cid} is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise DataError(f"listing {listing}: metadata {cid} is not a JSON object")
    return document
