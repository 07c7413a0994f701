"""Reward trees: every proof verifies, nothing else does (OpenZeppelin's layout; the npm
oracle comparison and on-chain claims are in test_market_contracts)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.exceptions import InvalidInput
from fedmarket.market.rewards import RewardTree, verify

ADDRESSES = st.integers(min_value=1, max_value=2**160 - 1).map(lambda n: f"0x{n:040x}")
AMOUNTS = st.integers(min_value=0, max_value=2**256 - 1)
REWARDS = st.dictionaries(ADDRESSES, AMOUNTS, min_size=1, max_size=40)


@settings(max_examples=80, deadline=None)
@given(REWARDS)
def test_every_account_proves_exactly_its_amount(rewards: dict[str, int]) -> None:
    tree = RewardTree.build(rewards)
    for account, amount in rewards.items():
        proof = tree.proof(account)
        assert verify(tree.root, account, amount, proof)
        assert not verify(tree.root, account, amount ^ 1, proof)
        assert len(proof) <= len(rewards).bit_length()
    assert tree.total == sum(rewards.values())


@settings(max_examples=40, deadline=None)
@given(REWARDS, ADDRESSES)
def test_outsiders_cannot_borrow_a_proof(rewards: dict[str, int], outsider: str) -> None:
    tree = RewardTree.build(rewards)
    if outsider.lower() in {a.lower() for a in rewards}:
        return
    for account, amount in rewards.items():
        assert not verify(tree.root, outsider, amount, tree.proof(account))


def test_root_does_not_depend_on_insertion_order() -> None:
    rewards = {f"0x{n:040x}": n * 10 for n in range(1, 9)}
    reversed_rewards = dict(reversed(list(rewards.items())))
    assert RewardTree.build(rewards).root == RewardTree.build(reversed_rewards).root


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        ({}, "at least one account"),
        ({"0x" + "11" * 20: -1}, "must be in 0..2\\*\\*256-1"),
        ({"0x" + "11" * 20: 1.5}, "must be an integer"),
        ({"0x" + "ab" * 20: 1, "0x" + "AB" * 20: 2}, "appears twice"),
    ],
)
def test_bad_rewards_are_refused(rewards: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        RewardTree.build(rewards)
