"""Key delivery by hashed ElGamal on alt_bn128: round trips, binding, point checks, key files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

import pytest
from chain_helpers import Chain
from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.contracts import load_artifact
from fedmarket.crypto import (
    AssetKey,
    G1Point,
    KeyDelivery,
    OneTimeKey,
    deliver_key,
    key_mask,
    open_delivery,
)
from fedmarket.crypto.key_delivery import FIELD, GENERATOR, ORDER
from fedmarket.exceptions import DataError, InvalidInput, KeyCommitmentMismatch

MARKET = "0x" + "ab" * 20
OTHER_MARKET = "0x" + "cd" * 20
CHAIN_ID = 31337
PURCHASE = 7


class Context(TypedDict):
    """What a delivery is bound to: ``keyMask``'s purchase, ``block.chainid`` and the market."""

    purchase: int
    chain_id: int
    market: str


CONTEXT = Context(purchase=PURCHASE, chain_id=CHAIN_ID, market=MARKET)

keys = st.binary(min_size=32, max_size=32).map(AssetKey)
scalars = st.integers(min_value=1, max_value=ORDER - 1)
uint256 = st.integers(min_value=0, max_value=2**256 - 1)


# ---------------------------------------------------------------- round trip and binding


@settings(max_examples=20, deadline=None)
@given(key=keys, purchase=uint256, chain_id=uint256)
def test_the_buyer_opens_the_key_the_seller_delivered(
    key: AssetKey, purchase: int, chain_id: int
) -> None:
    # Prepare
    buyer = OneTimeKey.generate()
    context = Context(purchase=purchase, chain_id=chain_id, market=MARKET)
    # Execute
    delivery = deliver_key(key, buyer.public, **context)
    opened = open_delivery(delivery, buyer, **context)
    # Assert
    assert opened.secret == key.secret
    opened.check_commitment(key.commitment)
    assert delivery.masked_key != key.secret


def test_another_one_time_key_opens_a_key_that_fails_the_commitment() -> None:
    # Prepare
    key, buyer, stranger = AssetKey.generate(), OneTimeKey.generate(), OneTimeKey.generate()
    delivery = deliver_key(key, buyer.public, **CONTEXT)
    # Execute
    opened = open_delivery(delivery, stranger, **CONTEXT)
    # Assert
    assert opened.secret != key.secret
    with pytest.raises(KeyCommitmentMismatch, match="does not hash to"):
        opened.check_commitment(key.commitment)


@pytest.mark.parametrize(
    "wrong",
    [
        Context({**CONTEXT, "purchase": PURCHASE + 1}),
        Context({**CONTEXT, "chain_id": CHAIN_ID + 1}),
        Context({**CONTEXT, "market": OTHER_MARKET}),
    ],
    ids=["purchase", "chain", "market"],
)
def test_a_delivery_opened_for_another_purchase_chain_or_market_gives_a_wrong_key(
    wrong: Context,
) -> None:
    # Prepare
    key, buyer = AssetKey.generate(), OneTimeKey.generate()
    delivery = deliver_key(key, buyer.public, **CONTEXT)
    # Execute
    right = open_delivery(delivery, buyer, **CONTEXT)
    elsewhere = open_delivery(delivery, buyer, **wrong)
    # Assert
    right.check_commitment(key.commitment)
    with pytest.raises(KeyCommitmentMismatch):
        elsewhere.check_commitment(key.commitment)


def test_each_delivery_uses_a_fresh_ephemeral_key() -> None:
    # Prepare
    key, buyer = AssetKey.generate(), OneTimeKey.generate()
    # Execute
    first = deliver_key(key, buyer.public, **CONTEXT)
    second = deliver_key(key, buyer.public, **CONTEXT)
    # Assert
    assert first.ephemeral != second.ephemeral
    assert first.masked_key != second.masked_key


def test_a_masked_key_of_the_wrong_length_is_refused() -> None:
    # Prepare
    delivery = deliver_key(AssetKey.generate(), OneTimeKey.generate().public, **CONTEXT)
    # Execute / Assert
    assert len(KeyDelivery(delivery.ephemeral, delivery.masked_key).masked_key) == 32
    with pytest.raises(InvalidInput, match="32 bytes, got 31"):
        KeyDelivery(delivery.ephemeral, delivery.masked_key[:31])


# ---------------------------------------------------------------- points


def test_known_multiples_of_the_generator() -> None:
    # Prepare / Execute
    one, minus_one = OneTimeKey(1), OneTimeKey(ORDER - 1)
    # Assert: 1·G = G = (1, 2) and (n-1)·G = -G = (1, p-2)
    assert one.public == GENERATOR == G1Point(1, 2)
    assert minus_one.public.as_tuple() == (1, FIELD - 2)


@pytest.mark.parametrize("secret", [0, ORDER, ORDER + 1, -1])
def test_a_one_time_secret_outside_the_group_order_is_refused(secret: int) -> None:
    with pytest.raises(InvalidInput, match=r"1\.\.ORDER-1"):
        OneTimeKey(secret)


@settings(max_examples=10, deadline=None)
@given(scalar=scalars)
def test_every_multiple_of_the_generator_is_a_valid_point_and_survives_text(scalar: int) -> None:
    # Prepare
    point = OneTimeKey(scalar).public
    # Execute
    text = point.to_text()
    # Assert
    assert G1Point(*point.as_tuple()) == point
    assert text.startswith("0x")
    assert len(text) == 130
    assert G1Point.parse(text) == point


@pytest.mark.parametrize(
    ("x", "y", "reason"),
    [
        (1, 3, "not on alt_bn128"),
        (0, 0, "point at infinity"),
        (1 + FIELD, 2, "must be in 0..FIELD-1"),
        (1, 2 + FIELD, "must be in 0..FIELD-1"),
        (1, -(FIELD - 2), "must be in 0..FIELD-1"),
        (0, 1, "not on alt_bn128"),
    ],
    ids=["off-curve", "infinity", "x-too-big", "y-too-big", "negative", "zero-x"],
)
def test_invalid_points_are_refused(x: int, y: int, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        G1Point(x, y)


@pytest.mark.parametrize(
    "text", ["", "0x", "0x" + "00" * 63, "0x" + "zz" * 64, "1,2", "0x" + "00" * 64]
)
def test_text_that_is_not_a_g1_point_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        G1Point.parse(text)


def test_deliver_key_refuses_an_invalid_buyer_key_given_as_text() -> None:
    # Prepare
    valid = OneTimeKey.generate().public.to_text()
    off_curve = "0x" + (1).to_bytes(32, "big").hex() + (3).to_bytes(32, "big").hex()
    # Execute / Assert
    assert deliver_key(AssetKey.generate(), G1Point.parse(valid), **CONTEXT)
    with pytest.raises(InvalidInput, match="not on alt_bn128"):
        deliver_key(AssetKey.generate(), G1Point.parse(off_curve), **CONTEXT)


# ---------------------------------------------------------------- the secret stays secret


@settings(max_examples=10, deadline=None)
@given(secret=st.integers(min_value=2**128, max_value=ORDER - 1))  # too long to appear by chance
def test_the_repr_shows_the_public_key_and_never_the_secret(secret: int) -> None:
    # Prepare
    key = OneTimeKey(secret)
    # Execute
    shown = [repr(key), str(key), f"{key!r}"]
    # Assert
    for text in shown:
        assert key.public.to_text() in text
        assert str(secret) not in text
        assert f"{secret:x}" not in text.lower()
        assert f"{secret:064x}" not in text.lower()


def test_a_saved_one_time_key_loads_back_from_a_0600_file(tmp_path: Path) -> None:
    # Prepare
    key = OneTimeKey.generate()
    path = tmp_path / "purchase.key"
    # Execute
    key.save(path)
    loaded = OneTimeKey.load(path)
    # Assert
    assert path.stat().st_mode & 0o777 == 0o600
    assert loaded.secret == key.secret
    assert loaded.public == key.public
    with pytest.raises(InvalidInput, match="refusing to overwrite"):
        OneTimeKey.generate().save(path)


def test_a_key_file_that_others_can_read_or_that_is_malformed_is_refused(tmp_path: Path) -> None:
    # Prepare
    readable, malformed, zero = tmp_path / "readable", tmp_path / "malformed", tmp_path / "zero"
    OneTimeKey.generate().save(readable)
    os.chmod(readable, 0o644)
    malformed.write_text("not hex\n")
    os.chmod(malformed, 0o600)
    zero.write_text("00" * 32 + "\n")
    os.chmod(zero, 0o600)
    # Execute / Assert
    with pytest.raises(InvalidInput, match="chmod 600"):
        OneTimeKey.load(readable)
    with pytest.raises(DataError, match="a one-time key"):
        OneTimeKey.load(malformed)
    with pytest.raises(InvalidInput, match=r"1\.\.ORDER-1"):
        OneTimeKey.load(zero)


# ---------------------------------------------------------------- the mask


def _reference_mask(point: G1Point, purchase: int, chain_id: int, market: str) -> bytes:
    """keccak256 over five hand-packed 32-byte words, as ``abi.encode`` lays them out."""
    words = [
        chain_id.to_bytes(32, "big"),
        bytes(12) + bytes.fromhex(market.removeprefix("0x")),
        purchase.to_bytes(32, "big"),
        point.x.to_bytes(32, "big"),
        point.y.to_bytes(32, "big"),
    ]
    packed = b"".join(words)
    types = ["uint256", "address", "uint256", "uint256", "uint256"]
    assert packed == encode(types, [chain_id, market, purchase, point.x, point.y])
    return keccak(packed)


@settings(max_examples=10, deadline=None)
@given(scalar=scalars, purchase=uint256, chain_id=uint256)
def test_key_mask_is_keccak_of_the_abi_encoded_context(
    scalar: int, purchase: int, chain_id: int
) -> None:
    # Prepare
    point = OneTimeKey(scalar).public
    # Execute
    mask = key_mask(point, purchase=purchase, chain_id=chain_id, market=MARKET)
    # Assert
    assert mask == _reference_mask(point, purchase, chain_id, MARKET)
    assert mask != _reference_mask(point, purchase, chain_id, OTHER_MARKET)


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [
        (Context({**CONTEXT, "purchase": -1}), "purchase must be a uint256"),
        (Context({**CONTEXT, "purchase": 2**256}), "purchase must be a uint256"),
        (Context({**CONTEXT, "chain_id": -5}), "chain_id must be a uint256"),
        (Context({**CONTEXT, "market": "0x1234"}), "not an address"),
        (Context({**CONTEXT, "market": "0x" + "zz" * 20}), "not an address"),
    ],
    ids=["negative-purchase", "huge-purchase", "negative-chain", "short-market", "non-hex-market"],
)
def test_key_mask_refuses_a_context_the_contract_could_not_encode(
    wrong: Context, reason: str
) -> None:
    # Prepare
    point = OneTimeKey.generate().public
    # Execute / Assert
    assert len(key_mask(point, **CONTEXT)) == 32
    with pytest.raises(InvalidInput, match=reason):
        key_mask(point, **wrong)


@pytest.mark.integration
def test_key_mask_matches_the_deployed_contracts_key_mask_view(chain: Chain) -> None:
    # Prepare
    market = chain.w3.eth.contract(
        address=to_checksum_address(chain.deployment.market), abi=load_artifact("DataMarket").abi
    )
    shared = OneTimeKey.generate().public
    chain_id = chain.w3.eth.chain_id
    # Execute
    on_chain = bytes(market.functions.keyMask(PURCHASE, shared.x, shared.y).call())
    # Assert
    context = Context(purchase=PURCHASE, chain_id=chain_id, market=chain.deployment.market)
    assert on_chain == key_mask(shared, **context)
    assert on_chain != key_mask(shared, **Context({**context, "chain_id": chain_id + 1}))
    assert on_chain != key_mask(shared, **Context({**context, "purchase": PURCHASE + 1}))


@pytest.mark.integration
def test_the_contracts_dispute_arithmetic_recovers_the_delivered_key(chain: Chain) -> None:
    # Prepare: what DataMarket.dispute does, step by step, with the EIP-196 ecMul precompile
    market = chain.w3.eth.contract(
        address=to_checksum_address(chain.deployment.market), abi=load_artifact("DataMarket").abi
    )
    context = Context(purchase=PURCHASE, chain_id=chain.w3.eth.chain_id, market=market.address)
    key, buyer = AssetKey.generate(), OneTimeKey.generate()
    delivery = deliver_key(key, buyer.public, **context)

    def ec_mul(point: G1Point, scalar: int) -> G1Point:
        data = encode(["uint256", "uint256", "uint256"], [point.x, point.y, scalar])
        out = bytes(
            chain.w3.eth.call({"to": to_checksum_address("0x" + "00" * 19 + "07"), "data": data})
        )
        return G1Point(int.from_bytes(out[:32], "big"), int.from_bytes(out[32:], "big"))

    # Execute
    shared = ec_mul(delivery.ephemeral, buyer.secret)
    mask = bytes(market.functions.keyMask(PURCHASE, shared.x, shared.y).call())
    recovered = AssetKey(bytes(m ^ k for m, k in zip(mask, delivery.masked_key, strict=True)))
    stranger = ec_mul(delivery.ephemeral, OneTimeKey.generate().secret)
    wrong_mask = bytes(market.functions.keyMask(PURCHASE, stranger.x, stranger.y).call())
    # Assert
    assert ec_mul(GENERATOR, buyer.secret) == buyer.public
    recovered.check_commitment(key.commitment)
    assert wrong_mask != mask
