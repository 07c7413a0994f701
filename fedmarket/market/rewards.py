"""Reward trees: OpenZeppelin ``StandardMerkleTree`` of (address, cumulative amount).

Leaves are ``keccak256(keccak256(abi.encode(address, uint256)))``, sorted, in a complete binary
tree stored as an array with commutative pair hashing, exactly as ``@openzeppelin/merkle-tree``
builds it (a test compares roots and proofs with that library); ``DataMarket.claim`` checks the
proofs with OpenZeppelin's ``MerkleProof``. OpenZeppelin ships no Python version, hence this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from fedmarket.exceptions import InvalidInput

_LEAF_TYPES = ["address", "uint256"]
_MAX_UINT256 = 2**256 - 1


def leaf_hash(account: str, amount: int) -> bytes:
    return keccak(keccak(encode(_LEAF_TYPES, [account, amount])))


def _hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


@dataclass(frozen=True)
class RewardTree:
    """Cumulative rewards per account for one task, and their Merkle proofs."""

    amounts: Mapping[str, int]  # checksummed address -> cumulative amount (token base units)
    _tree: tuple[bytes, ...]
    _index: Mapping[str, int]  # address -> position of its leaf in the tree array

    @classmethod
    def build(cls, amounts: Mapping[str, int]) -> RewardTree:
        if not amounts:
            raise InvalidInput("a reward tree needs at least one account")
        clean: dict[str, int] = {}
        for account, amount in amounts.items():
            address = to_checksum_address(account)
            if isinstance(amount, bool) or not isinstance(amount, int):
                raise InvalidInput(f"reward for {address} must be an integer, got {amount!r}")
            if not 0 <= amount <= _MAX_UINT256:
                raise InvalidInput(f"reward for {address} must be in 0..2**256-1, got {amount}")
            if address in clean:
                raise InvalidInput(f"{address} appears twice in the rewards")
            clean[address] = amount
        leaves = sorted((leaf_hash(a, v), a) for a, v in clean.items())
        size = 2 * len(leaves) - 1
        tree: list[bytes] = [b""] * size
        index: dict[str, int] = {}
        for position, (leaf, account) in enumerate(leaves):
            tree[size - 1 - position] = leaf
            index[account] = size - 1 - position
        for node in range(size - 1 - len(leaves), -1, -1):
            tree[node] = _hash_pair(tree[2 * node + 1], tree[2 * node + 2])
        return cls(clean, tuple(tree), index)

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def total(self) -> int:
        return sum(self.amounts.values())

    def proof(self, account: str) -> list[bytes]:
        address = to_checksum_address(account)
        if address not in self._index:
            raise InvalidInput(f"{address} has no reward in this tree")
        node, proof = self._index[address], []
        while node > 0:
            proof.append(self._tree[node + 1 if node % 2 else node - 1])
            node = (node - 1) // 2
        return proof


def verify(root: bytes, account: str, amount: int, proof: list[bytes]) -> bool:
    """OpenZeppelin ``MerkleProof.verify`` for one (account, amount) leaf."""
    node = leaf_hash(to_checksum_address(account), amount)
    for sibling in proof:
        node = _hash_pair(node, sibling)
    return node == root
