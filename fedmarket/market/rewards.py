"""Reward trees: Merkle-sum trees of (address, cumulative amount), as ``RewardSumTree.sol``.

Every node carries the sum of the amounts below it (the Merkle-sum trees of G. Maxwell's
proof-of-reserves scheme), so a root commits to its total and a proof shows a leaf is one of
leaves adding up to exactly that total. Leaves are ``keccak256(keccak256(abi.encode(address,
uint256)))`` with sum = amount, sorted by hash and laid out as a complete binary tree in an array,
as OpenZeppelin's ``StandardMerkleTree``; a parent is ``keccak256(abi.encode(lo.hash, lo.sum,
hi.hash, hi.sum))`` with its children ordered by hash, and its sum ``lo.sum + hi.sum``.
Amounts and sums are uint128 (the market's totals are), so a proof travels packed: 48 bytes a
node, the sibling's hash then its sum (:func:`encode_proof`).
``DataMarket`` checks the proofs on chain (a test builds trees here and claims with them there).
No maintained library builds Merkle-sum trees in this layout, hence this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fedmarket.exceptions import InvalidInput

_LEAF_TYPES = ["address", "uint256"]
_NODE_TYPES = ["bytes32", "uint256", "bytes32", "uint256"]
MAX_AMOUNT = 2**128 - 1  # the market's totals and claims are uint128
NODE_BYTES = 48  # a packed proof node: 32-byte hash, 16-byte big-endian sum


@dataclass(frozen=True)
class SumNode:
    """A node of a reward tree: its hash (32 bytes) and the sum of the amounts below it."""

    hash: bytes
    sum: int

    def packed(self) -> bytes:
        """The node as ``RewardSumTree`` reads it: hash (32 bytes) then sum (uint128, 16 bytes).
        Raises :class:`InvalidInput` for a hash that is not 32 bytes or a sum past 2**128-1."""
        if len(self.hash) != 32:
            raise InvalidInput(f"each proof node's hash must be 32 bytes, got {len(self.hash)}")
        if not 0 <= self.sum <= MAX_AMOUNT:
            raise InvalidInput(f"each proof node's sum must be in 0..2**128-1, got {self.sum}")
        return self.hash + self.sum.to_bytes(16, "big")


Proof = tuple[SumNode, ...]


def leaf(account: str, amount: int) -> SumNode:
    """Raises :class:`InvalidInput` for an amount outside 0..2**128-1."""
    if not 0 <= amount <= MAX_AMOUNT:
        raise InvalidInput(f"a reward must be in 0..2**128-1, got {amount}")
    return SumNode(keccak(keccak(encode(_LEAF_TYPES, [account, amount]))), amount)


def parent(a: SumNode, b: SumNode) -> SumNode:
    """Raises :class:`InvalidInput` when a sum leaves 0..2**128-1 (no committed total holds it)."""
    if a.sum + b.sum > MAX_AMOUNT or min(a.sum, b.sum) < 0:
        raise InvalidInput("the sums of a reward tree must stay in 0..2**128-1")
    lo, hi = (a, b) if a.hash <= b.hash else (b, a)
    return SumNode(keccak(encode(_NODE_TYPES, [lo.hash, lo.sum, hi.hash, hi.sum])), a.sum + b.sum)


@dataclass(frozen=True)
class RewardTree:
    """Cumulative rewards per account for one task at one round, and their proofs."""

    amounts: Mapping[str, int]  # checksummed address -> cumulative amount (token base units)
    _tree: tuple[SumNode, ...]
    _index: Mapping[str, int]  # address -> position of its leaf in the tree array

    @classmethod
    def build(cls, amounts: Mapping[str, int]) -> RewardTree:
        """Raises :class:`InvalidInput` for no accounts, a repeated account, or an amount that is
        not an integer in 0..2**128-1 (or a total past 2**128-1)."""
        if not amounts:
            raise InvalidInput("a reward tree needs at least one account")
        clean: dict[str, int] = {}
        for account, amount in amounts.items():
            address = to_checksum_address(account)
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise InvalidInput(f"reward for {address} must be an integer, got {amount!r}")
            if not 0 <= amount <= MAX_AMOUNT:
                raise InvalidInput(f"reward for {address} must be in 0..2**128-1, got {amount}")
            if address in clean:
                raise InvalidInput(f"{address} appears twice in the rewards")
            clean[address] = amount
        if sum(clean.values()) > MAX_AMOUNT:
            raise InvalidInput("the rewards add up to more than 2**128-1")
        leaves = sorted(((leaf(a, v), a) for a, v in clean.items()), key=lambda x: x[0].hash)
        size = 2 * len(leaves) - 1
        tree: list[SumNode] = [SumNode(b"", 0)] * size
        index: dict[str, int] = {}
        for position, (node, account) in enumerate(leaves):
            tree[size - 1 - position] = node
            index[account] = size - 1 - position
        for i in range(size - 1 - len(leaves), -1, -1):
            tree[i] = parent(tree[2 * i + 1], tree[2 * i + 2])
        return cls(clean, tuple(tree), index)

    @property
    def root(self) -> bytes:
        return self._tree[0].hash

    @property
    def total(self) -> int:
        """The root's sum: what the tree's leaves add up to."""
        return self._tree[0].sum

    def proof(self, account: str) -> Proof:
        address = to_checksum_address(account)
        if address not in self._index:
            raise InvalidInput(f"{address} has no reward in this tree")
        i, path = self._index[address], []
        while i > 0:
            path.append(self._tree[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return tuple(path)


def encode_proof(proof: Sequence[SumNode]) -> bytes:
    """``proof`` packed as ``DataMarket`` takes it: 48 bytes a node, from the leaf's sibling up.
    Raises :class:`InvalidInput` for a malformed node."""
    return b"".join(node.packed() for node in proof)


def root_of(account: str, amount: int, proof: Sequence[SumNode]) -> SumNode:
    """The root (hash and sum) that ``proof`` leads to from the leaf (account, amount), as
    ``RewardSumTree.rootOf`` computes it; :class:`InvalidInput` where the sums overflow."""
    node = leaf(to_checksum_address(account), amount)
    for sibling in proof:
        node = parent(node, sibling)
    return node


def verify(root: bytes, total: int, account: str, amount: int, proof: Sequence[SumNode]) -> bool:
    """Whether (account, amount) is a leaf of the tree with this root and total."""
    try:
        top = root_of(account, amount, proof)
    except InvalidInput:  # sums out of range: no real tree's proof
        return False
    return top.hash == root and top.sum == total
