"""Reward trees: Merkle-sum trees in which every proof verifies, with its leaf's exact amount and
the root's exact total, and nothing else does; the contract accepts exactly the same proofs."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from chain_helpers import EMPTY_CID, Chain
from chain_helpers import commit as commit_round
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedmarket.exceptions import InvalidInput
from fedmarket.ledger import errors as market_errors
from fedmarket.market.rewards import (
    RewardTree,
    SumNode,
    encode_proof,
    leaf,
    parent,
    root_of,
    verify,
)
from fedmarket.types import TaskId

ADDRESSES = st.integers(min_value=1, max_value=2**160 - 1).map(lambda n: f"0x{n:040x}")
# Up to 40 amounts below 2**120 add up to less than 2**128: every such tree can be built.
AMOUNTS = st.integers(min_value=0, max_value=2**120)
REWARDS = st.dictionaries(ADDRESSES, AMOUNTS, min_size=1, max_size=40)


def _flip(node: SumNode) -> SumNode:
    return replace(node, hash=bytes([node.hash[0] ^ 1]) + node.hash[1:])


@settings(max_examples=80, deadline=None)
@given(REWARDS)
def test_every_account_proves_exactly_its_amount(rewards: dict[str, int]) -> None:
    tree = RewardTree.build(rewards)

    assert tree.total == sum(rewards.values())
    for account, amount in rewards.items():
        proof = tree.proof(account)
        assert root_of(account, amount, proof) == SumNode(tree.root, tree.total)
        assert verify(tree.root, tree.total, account, amount, proof)
        assert not verify(tree.root, tree.total, account, amount ^ 1, proof)
        assert not verify(tree.root, tree.total, account, amount + 1, proof)
        assert not verify(tree.root, tree.total + 1, account, amount, proof)
        assert len(proof) <= len(rewards).bit_length()


@settings(max_examples=40, deadline=None)
@given(REWARDS, ADDRESSES)
def test_outsiders_cannot_borrow_a_proof(rewards: dict[str, int], outsider: str) -> None:
    tree = RewardTree.build(rewards)
    if outsider.lower() in {a.lower() for a in rewards}:
        return
    for account, amount in rewards.items():
        assert not verify(tree.root, tree.total, outsider, amount, tree.proof(account))


@settings(max_examples=40, deadline=None)
@given(REWARDS.filter(lambda r: len(r) > 1), st.data())
def test_a_proof_with_any_node_altered_fails(rewards: dict[str, int], data: st.DataObject) -> None:
    # Prepare: one account's proof, and one of its nodes
    tree = RewardTree.build(rewards)
    account = data.draw(st.sampled_from(sorted(rewards)))
    proof = list(tree.proof(account))
    at = data.draw(st.integers(0, len(proof) - 1))
    node = proof[at]
    delta = data.draw(st.integers(1, 2**64))

    # Execute / Assert: a sum or hash of a sibling changed, the proof cut or lengthened
    for altered in (replace(node, sum=node.sum + delta), _flip(node)):
        forged = [*proof[:at], altered, *proof[at + 1 :]]
        assert not verify(tree.root, tree.total, account, rewards[account], forged)
    assert not verify(tree.root, tree.total, account, rewards[account], proof[:-1])
    assert not verify(tree.root, tree.total, account, rewards[account], [*proof, node])


@settings(max_examples=40, deadline=None)
@given(REWARDS, st.data())
def test_the_root_commits_to_every_amount(rewards: dict[str, int], data: st.DataObject) -> None:
    tree = RewardTree.build(rewards)
    account = data.draw(st.sampled_from(sorted(rewards)))
    delta = data.draw(st.integers(1, 2**64))

    changed = RewardTree.build({**rewards, account: rewards[account] + delta})

    assert changed.root != tree.root
    assert changed.total == tree.total + delta
    assert not verify(tree.root, tree.total, account, rewards[account] + delta, tree.proof(account))


@settings(max_examples=40, deadline=None)
@given(REWARDS, st.randoms(use_true_random=False))
def test_root_does_not_depend_on_insertion_order(
    rewards: dict[str, int], shuffler: random.Random
) -> None:
    items = list(rewards.items())
    shuffler.shuffle(items)

    shuffled = RewardTree.build(dict(items))

    assert (shuffled.root, shuffled.total) == (
        RewardTree.build(rewards).root,
        RewardTree.build(rewards).total,
    )


@given(
    st.builds(SumNode, st.binary(min_size=32, max_size=32), AMOUNTS),
    st.builds(SumNode, st.binary(min_size=32, max_size=32), AMOUNTS),
)
def test_a_parent_sums_its_children_in_either_order(a: SumNode, b: SumNode) -> None:
    # Equal hashes (a collision) keep the contract's order: the node on the path first.
    assume(a.hash != b.hash)
    assert parent(a, b) == parent(b, a)
    assert parent(a, b).sum == a.sum + b.sum


def test_a_one_account_tree_is_its_leaf() -> None:
    account = "0x" + "11" * 20
    tree = RewardTree.build({account: 7})

    assert (tree.root, tree.total, tree.proof(account)) == (leaf(account, 7).hash, 7, ())


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        ({}, "at least one account"),
        ({"0x" + "11" * 20: -1}, "must be in 0..2\\*\\*128-1"),
        ({"0x" + "11" * 20: 2**128}, "must be in 0..2\\*\\*128-1"),
        ({"0x" + "11" * 20: 1.5}, "must be an integer"),
        ({"0x" + "11" * 20: True}, "must be an integer"),
        ({"0x" + "ab" * 20: 1, "0x" + "AB" * 20: 2}, "appears twice"),
        ({"0x" + "11" * 20: 2**128 - 1, "0x" + "22" * 20: 1}, "more than 2\\*\\*128-1"),
    ],
)
def test_bad_rewards_are_refused(rewards: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        RewardTree.build(rewards)


def test_no_proof_for_an_account_outside_the_tree() -> None:
    tree = RewardTree.build({"0x" + "11" * 20: 1})
    with pytest.raises(InvalidInput, match="no reward in this tree"):
        tree.proof("0x" + "22" * 20)


# -- the contract accepts the Python proofs, and only them --------------------------------------


def _random_rewards(count: int) -> dict[str, int]:
    rng = random.Random(count)
    return {f"0x{rng.getrandbits(160):040x}": rng.randrange(1, 10**21) for _ in range(count)}


def _tampered(tree: RewardTree, account: str) -> list[tuple[str, str, int, list[SumNode]]]:
    """(what, account, amount, proof) for every way of bending one leaf's proof."""
    amount, proof = tree.amounts[account], list(tree.proof(account))
    other = next((a for a in tree.amounts if a != account), "0x" + "ee" * 20)
    bent = [
        ("amount + 1", account, amount + 1, proof),
        ("amount - 1", account, amount - 1, proof),
        ("another account", other, amount, proof),
        ("an extra node", account, amount, [*proof, SumNode(bytes(32), 0)]),
    ]
    if proof:
        first = proof[0]
        bent += [
            (
                "a sibling's sum + 1",
                account,
                amount,
                [replace(first, sum=first.sum + 1), *proof[1:]],
            ),
            ("a sibling's hash", account, amount, [_flip(first), *proof[1:]]),
            ("the last node cut", account, amount, proof[:-1]),
        ]
    return bent


@pytest.mark.integration
@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 33])
def test_the_contract_pays_every_python_proof_and_refuses_bent_ones(
    chain: Chain, count: int
) -> None:
    # Prepare: a task whose escrow is exactly the tree's total, committed and final
    rewards = _random_rewards(count)
    tree = RewardTree.build(rewards)
    sponsor, aggregator, sender = chain.ledger(0), chain.ledger(1), chain.ledger(2)
    task: TaskId = sponsor.create_task(
        aggregator=aggregator.address,
        reward_per_update=1,
        budget=tree.total,
        spec_cid=EMPTY_CID,
    )
    commit_round(aggregator, task, 1, tree)
    chain.finalize()

    for account in tree.amounts:
        # Execute / Assert: every bent proof is refused, the true one pays the leaf in full
        paid = sponsor.task(task).paid
        for what, who, amount, proof in _tampered(tree, account):
            with pytest.raises(market_errors.InvalidProof):
                sender.claim(task, 1, who, amount, proof)
            assert sponsor.task(task).paid == paid, what
        assert (
            sender.claim(task, 1, account, tree.amounts[account], tree.proof(account))
            == (tree.amounts[account])
        )
        assert sender.balance(account) == tree.amounts[account]

    state = sponsor.task(task)
    assert state.paid == state.escrow == tree.total == sum(rewards.values())


def test_a_proof_whose_sums_overflow_does_not_verify() -> None:
    account = "0x" + "11" * 20
    proof = [SumNode(b"\x01" * 32, 2**127), SumNode(b"\x02" * 32, 0)]

    assert not verify(bytes(32), 1, account, 2**127, proof)  # the sums pass 2**128 - 1


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (SumNode(bytes(31), 0), "hash must be 32 bytes"),
        (SumNode(bytes(32), 2**128), "sum must be in 0..2\\*\\*128-1"),
        (SumNode(bytes(32), -1), "sum must be in 0..2\\*\\*128-1"),
    ],
)
def test_a_malformed_node_is_not_encoded(node: SumNode, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        encode_proof([node])


@given(rewards=REWARDS, data=st.data())
@settings(max_examples=40, deadline=None)
def test_packed_proofs_are_48_bytes_a_node(rewards: dict[str, int], data: st.DataObject) -> None:
    tree = RewardTree.build(rewards)
    account = data.draw(st.sampled_from(sorted(tree.amounts)))
    proof = tree.proof(account)

    packed = encode_proof(proof)

    assert len(packed) == 48 * len(proof)
    for i, node in enumerate(proof):
        chunk = packed[48 * i : 48 * (i + 1)]
        assert (chunk[:32], int.from_bytes(chunk[32:], "big")) == (node.hash, node.sum)
