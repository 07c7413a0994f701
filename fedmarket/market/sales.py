"""Selling and buying encrypted models over a Ledger and a ContentStore.

Seller: :func:`list_model` takes a committed round's sealed model (model + salt, see
:mod:`fedmarket.market.sealed_models`), checks it opens that round's on-chain commitment,
encrypts it with a fresh key, stores the ciphertext and a metadata document (canonical JSON:
task, round, model commitment, ε, δ, devices, accuracy) by CID, and lists (task, round) with the
key's sha256 commitment; the key goes to the seller's keyring. Nothing of the model is ever
stored in the clear. :func:`serve` delivers the key to every paid purchase still pending, by
ECDH on alt_bn128 to the buyer's one-time key (:mod:`fedmarket.crypto.key_delivery`): run it
again after a restart and it delivers what is missing, never twice. :func:`settle_due` releases
the proceeds of deliveries whose dispute window has passed.

Buyer: :func:`buy_model` pays in one transaction, waits for the key (with a timeout), checks it
against the commitment, fetches and decrypts the ciphertext, and verifies the lineage of the
listed task up to the listed round, ending with the decrypted model opening that round's
commitment. A key that misses the commitment raises :class:`KeyCommitmentMismatch`:
:func:`dispute_key` then proves it on chain and takes the payment back.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from fedmarket.crypto import AssetKey, decrypt_bytes, encrypt_bytes
from fedmarket.crypto.key_delivery import KeyDelivery, OneTimeKey, deliver_key, open_delivery
from fedmarket.exceptions import (
    DataError,
    DecryptionFailed,
    FedmarketError,
    InvalidInput,
    KeyCommitmentMismatch,
    LineageBroken,
    StoreError,
    TransactionFailed,
)
from fedmarket.ledger.base import Ledger, PurchaseState
from fedmarket.ledger.errors import DeliveryWindowClosed, WrongPurchaseState
from fedmarket.market.amounts import to_tokens
from fedmarket.market.bundle import canonical_json
from fedmarket.market.lineage import Lineage, verify_lineage
from fedmarket.market.sealed_models import SealedModel
from fedmarket.privacy.accounting import ADJACENCY, PRIVACY_UNIT
from fedmarket.store.base import ContentStore
from fedmarket.types import ListingId, PurchaseId, TaskId

log = logging.getLogger(__name__)


MAX_METADATA_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Bought:
    listing: ListingId
    purchase: PurchaseId
    task: TaskId
    round: int
    price: int
    sealed: SealedModel  # the decrypted model with its commitment's salt
    metadata: dict[str, Any]
    lineage: Lineage | None = None  # once verified (the model opens the round's commitment)

    @property
    def model(self) -> bytes:
        """The model (safetensors)."""
        return self.sealed.model


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
    task: TaskId,
    round: int,
    model: SealedModel,
    price: int,
    metadata: Mapping[str, Any],
    contributors_bps: int,
) -> ListingId:
    """Encrypt, store and list the model of ``round`` of ``task``; return the listing."""
    committed = ledger.round_state(task, round)
    if committed is None:
        raise InvalidInput(f"task {task} has no committed round {round}; list a committed one")
    if model.commitment != committed.model_commitment:
        raise InvalidInput(
            f"that model does not open task {task} round {round}'s commitment "
            f"0x{committed.model_commitment.hex()}; list the model that round committed"
        )
    if committed.voided:
        raise InvalidInput(f"task {task} round {round} was voided; it cannot be listed")
    if not committed.final(ledger.now()):
        raise InvalidInput(
            f"task {task} round {round} is not final yet (its challenge window ends at chain "
            f"time {committed.final_at}, or a challenge of it is open); list it after that"
        )
    key = AssetKey.generate()
    asset_cid = store.put_bytes(encrypt_bytes(model.to_bytes(), key))
    document = {
        **metadata,
        "task": task,
        "round": round,
        "model_commitment": committed.model_commitment.hex(),
    }
    metadata_cid = store.put_bytes(canonical_json(document))
    listing = ledger.list_asset(
        task=task,
        round=round,
        asset_cid=asset_cid,
        price=price,
        key_commitment=key.commitment,
        metadata_cid=metadata_cid,
        contributors_bps=contributors_bps,
    )
    keyring.add(listing, key)
    return listing


def serve(ledger: Ledger, keyring: Keyring) -> list[PurchaseId]:
    """Deliver keys for every pending purchase of our listings; return those served."""
    served = []
    now = ledger.now()
    for purchase in ledger.purchases_of(ledger.address):
        if purchase.state is not PurchaseState.PENDING or now > purchase.deadline:
            continue
        key = keyring.get(purchase.listing)
        if key is None:
            continue  # listed from another keyring
        buyer = ledger.buyer_key(purchase.purchase)
        if keccak(encode(["uint256", "uint256"], list(buyer.as_tuple()))) != (
            purchase.buyer_key_hash
        ):
            continue  # not the key the contract holds for this purchase: never deliver to it
        delivery = deliver_key(
            key,
            buyer,
            purchase=purchase.purchase,
            chain_id=ledger.chain_id,
            market=ledger.market_address,
        )
        try:
            ledger.deliver_key(purchase.purchase, delivery)
        except (DeliveryWindowClosed, WrongPurchaseState) as exc:
            # Its window closed (or its buyer refunded) after we read the chain: skip it, so
            # one purchase never stops delivery to the others.
            log.warning("purchase %d: key not delivered: %s", purchase.purchase, exc)
            continue
        served.append(purchase.purchase)
    return served


def settle_due(ledger: Ledger) -> list[PurchaseId]:
    """Release every delivered purchase of our listings whose dispute window has passed; return
    those this call settled (anyone may settle: one settled first by someone else is skipped,
    its proceeds released all the same)."""
    now = ledger.now()
    due = [
        p.purchase
        for p in ledger.purchases_of(ledger.address)
        if p.state is PurchaseState.DELIVERED and now > p.deadline
    ]
    settled = []
    for purchase in due:
        try:
            ledger.settle(purchase)
        except WrongPurchaseState:
            if ledger.purchase(purchase).state is not PurchaseState.SETTLED:
                raise
            continue  # front-run or settled concurrently: not an error
        settled.append(purchase)
    return settled


def buy_model(
    ledger: Ledger,
    store: ContentStore,
    listing: ListingId,
    identity: OneTimeKey,
    *,
    max_price: int | None = None,
    timeout: float = 120.0,
    poll: float = 1.0,
    progress: Callable[[float], None] | None = None,
) -> Bought:
    """Buy ``listing`` with the one-time key ``identity`` (saved by the caller beforehand) and
    return the decrypted model, its lineage verified before paying and after decrypting."""
    check_listing(ledger, store, listing)
    purchase = pay_for(ledger, listing, identity, max_price=max_price)
    bought = receive(
        ledger, store, purchase, identity, timeout=timeout, poll=poll, progress=progress
    )
    return replace(bought, lineage=verify_bought(ledger, store, bought))


def check_listing(ledger: Ledger, store: ContentStore, listing: ListingId) -> Lineage:
    """What a buyer checks before paying: the listed task's lineage up to the listed round
    (commits, bundles, receipts, rewards, every round's ciphertext in the store), and that the
    listing's asset and metadata are in the store. Raises
    :class:`~fedmarket.exceptions.LineageBroken` for a listing that does not verify. What it
    cannot check before paying is that the asset opens with the key (see README)."""
    offer = ledger.listing(listing)
    lineage = verify_lineage(
        ledger,
        store,
        offer.task,
        offer.round,
        chain_id=ledger.chain_id,
        market=ledger.market_address,
    )
    try:
        store.size(offer.asset_cid)
        listing_metadata(store, ledger, listing)
    except (StoreError, ValueError) as exc:  # ValueError: DataError, InvalidInput
        raise LineageBroken(f"listing {listing}: {exc}") from None
    return lineage


def pay_for(
    ledger: Ledger, listing: ListingId, identity: OneTimeKey, *, max_price: int | None = None
) -> PurchaseId:
    """Pay for ``listing`` in one transaction, after checking everything that can be checked."""
    offer = ledger.listing(listing)  # unknown listing: a clear error before paying
    if not offer.active:
        raise InvalidInput(f"listing {listing} is withdrawn; it cannot be bought")
    if max_price is not None and offer.price > max_price:
        raise InvalidInput(
            f"listing {listing} costs {to_tokens(offer.price)} tokens, above your maximum "
            f"{to_tokens(max_price)} (nothing was sent)"
        )
    balance = ledger.balance(ledger.address)
    if balance < offer.price:
        raise InvalidInput(
            f"listing {listing} costs {to_tokens(offer.price)} tokens but {ledger.address} "
            f"holds {to_tokens(balance)}; top up the account first (nothing was sent)"
        )
    return ledger.buy(listing, buyer_key=identity.public, max_price=offer.price)


def delivered_key(ledger: Ledger, purchase: PurchaseId, identity: OneTimeKey) -> AssetKey | None:
    """The key delivered for ``purchase``, opened with ``identity``; None while none came."""
    delivery = ledger.key_delivery(purchase)
    if delivery is None:
        return None
    return _open(ledger, purchase, identity, delivery)


def receive(
    ledger: Ledger,
    store: ContentStore,
    purchase: PurchaseId,
    identity: OneTimeKey,
    *,
    timeout: float = 120.0,
    poll: float = 1.0,
    progress: Callable[[float], None] | None = None,
) -> Bought:
    """Wait for ``purchase``'s key, check it against the listing's commitment (a mismatch
    raises :class:`KeyCommitmentMismatch`: dispute it), fetch and decrypt the model. The
    lineage is checked separately (:func:`verify_bought`), so a paid model is never lost to a
    failed check."""
    record = ledger.purchase(purchase)
    offer = ledger.listing(record.listing)
    delivery = _wait_for_key(ledger, purchase, timeout, poll, progress)
    key = _open(ledger, purchase, identity, delivery)
    key.check_commitment(offer.key_commitment)
    try:
        plaintext = decrypt_bytes(store.get_bytes(offer.asset_cid), key)
    except DecryptionFailed as exc:
        raise type(exc)(
            f"listing {record.listing}: the key matches the listing's commitment but does not "
            f"open its asset {offer.asset_cid} ({exc}); the seller published a bad asset, which "
            "cannot be proven on chain (see README, 'What each party must trust')"
        ) from None
    try:
        sealed = SealedModel.from_bytes(plaintext)
    except DataError as exc:
        raise DataError(f"listing {record.listing}: the decrypted asset is {exc}") from None
    try:  # the model is paid for: a metadata document gone missing since must not cost it
        metadata = listing_metadata(store, ledger, record.listing)
    except FedmarketError as exc:
        log.warning("listing %d: metadata unreadable (%s)", record.listing, exc)
        metadata = {}
    return Bought(record.listing, purchase, offer.task, offer.round, record.price, sealed, metadata)


def verify_bought(ledger: Ledger, store: ContentStore, bought: Bought) -> Lineage:
    """Verify the listed task's lineage up to the listed round, ending with the decrypted model
    opening that round's commitment; raise :class:`LineageBroken` naming the broken link."""
    return verify_lineage(
        ledger,
        store,
        bought.task,
        bought.round,
        chain_id=ledger.chain_id,
        market=ledger.market_address,
        model=bought.sealed,
    )


def dispute_key(ledger: Ledger, purchase: PurchaseId, identity: OneTimeKey) -> int:
    """Prove on chain that ``purchase``'s delivered key misses the listing's commitment; return
    the refund. Refuses locally, before revealing ``identity``, if the key is in fact right."""
    delivery = ledger.key_delivery(purchase)
    if delivery is None:
        raise InvalidInput(f"purchase {purchase} has no delivered key to dispute")
    key = _open(ledger, purchase, identity, delivery)
    offer = ledger.listing(ledger.purchase(purchase).listing)
    try:
        key.check_commitment(offer.key_commitment)
    except KeyCommitmentMismatch:
        return ledger.dispute(purchase, identity, delivery)
    raise InvalidInput(
        f"purchase {purchase}'s key matches the listing's commitment: there is nothing to "
        "dispute (nothing was sent)"
    )


def _open(
    ledger: Ledger, purchase: PurchaseId, identity: OneTimeKey, delivery: KeyDelivery
) -> AssetKey:
    return open_delivery(
        delivery,
        identity,
        purchase=purchase,
        chain_id=ledger.chain_id,
        market=ledger.market_address,
    )


def model_metadata(lineage: Lineage, **declared: Any) -> dict[str, Any]:
    """A listing's metadata from a verified lineage, plus what the seller declares."""
    epsilons = sorted(lineage.epsilon.values())
    facts: dict[str, Any] = {
        "task": lineage.task,
        "round": lineage.round,
        "rounds": len(lineage.rounds),
        "devices": len(lineage.devices),
        "epsilon_max": epsilons[-1] if epsilons else None,
        "epsilon_median": statistics.median(epsilons) if epsilons else None,
        "delta": lineage.delta,
        "privacy_unit": PRIVACY_UNIT,
        "adjacency": ADJACENCY,
        "format": "safetensors",
    }
    return {**facts, **{k: v for k, v in declared.items() if v is not None}}


def _wait_for_key(
    ledger: Ledger,
    purchase: PurchaseId,
    timeout: float,
    poll: float,
    progress: Callable[[float], None] | None,
) -> KeyDelivery:
    started = time.monotonic()
    while (delivery := ledger.key_delivery(purchase)) is None:
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
    return delivery


def listing_metadata(store: ContentStore, ledger: Ledger, listing: ListingId) -> dict[str, Any]:
    """The metadata document a listing was published with (what its seller declares)."""
    cid = ledger.listing_metadata_cid(listing)
    if (size := store.size(cid)) > MAX_METADATA_BYTES:
        raise DataError(
            f"listing {listing}: metadata {cid} is {size} bytes, above {MAX_METADATA_BYTES}"
        )
    try:
        document = json.loads(store.get_bytes(cid))
    except ValueError as exc:
        raise DataError(f"listing {listing}: metadata {cid} is not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise DataError(f"listing {listing}: metadata {cid} is not a JSON object")
    return document
