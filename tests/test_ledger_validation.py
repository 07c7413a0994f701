"""Web3Ledger checks money arguments before anything is signed or sent."""

from __future__ import annotations

import pytest
from chain_helpers import EMPTY_CID, MODEL_COMMITMENT, Chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmarket.crypto import OneTimeKey
from fedmarket.exceptions import InvalidInput
from fedmarket.types import ListingId, TaskId

pytestmark = pytest.mark.integration

BAD_AMOUNTS = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**256),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=3),
)
BUYER_KEY = OneTimeKey(7).public


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    amount=BAD_AMOUNTS,
    operation=st.sampled_from(["budget", "claim", "sale_share", "price", "buy"]),
)
def test_bad_amounts_are_refused_before_sending(
    chain: Chain, amount: object, operation: str
) -> None:
    ledger = chain.ledger(0)
    block = chain.w3.eth.block_number
    actions = {
        "budget": lambda: ledger.create_task(
            aggregator=ledger.address, reward_per_update=1, budget=amount, spec_cid=EMPTY_CID
        ),
        "claim": lambda: ledger.claim(TaskId(1), 1, ledger.address, amount, []),
        "sale_share": lambda: ledger.claim_sale_share(TaskId(1), 1, ledger.address, amount, []),
        "price": lambda: ledger.list_asset(
            task=TaskId(1),
            round=1,
            asset_cid=EMPTY_CID,
            price=amount,
            key_commitment=bytes(32),
            metadata_cid=EMPTY_CID,
            contributors_bps=0,
        ),
        "buy": lambda: ledger.buy(ListingId(1), buyer_key=BUYER_KEY, max_price=amount),
    }

    with pytest.raises(InvalidInput, match="must be"):
        actions[operation]()  # type: ignore[no-untyped-call]
    assert chain.w3.eth.block_number == block


@pytest.mark.parametrize(
    ("field", "kwargs", "message"),
    [
        ("root", {"rewards_root": b"short"}, "rewards_root must be 32 bytes"),
        ("commitment", {"model_commitment": b"short"}, "model_commitment must be 32 bytes"),
        ("round", {"round": 0}, "round must be in 1"),
        ("cid", {"model_cid": "not-a-cid"}, "is not a CID"),
    ],
)
def test_bad_commit_arguments_are_refused(
    chain: Chain, field: str, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "round": 1,
        "model_commitment": MODEL_COMMITMENT,
        "model_cid": EMPTY_CID,
        "bundle_cid": EMPTY_CID,
        "rewards_root": bytes(32),
        "cumulative_total": 0,
        **kwargs,
    }
    round_ = arguments.pop("round")
    with pytest.raises(InvalidInput, match=message):
        chain.ledger(1).commit_round(TaskId(1), round_, **arguments)  # type: ignore[arg-type]
