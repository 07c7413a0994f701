// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Merkle-sum trees of cumulative rewards
/// @notice Every node carries the sum of the amounts below it, so a proof that reaches a
/// committed root with that root's committed total shows the leaf is one of leaves adding up to
/// exactly that total (the Merkle-sum trees of G. Maxwell's proof-of-reserves scheme, 2013).
/// A root can therefore never promise more than its total.
/// @dev Leaves are keccak256(keccak256(abi.encode(account, amount))) with sum = amount, as in
/// OpenZeppelin's StandardMerkleTree; a parent is keccak256(abi.encode(lo.hash, lo.sum, hi.hash,
/// hi.sum)) with its children ordered by hash (so proofs carry no directions) and sum lo.sum +
/// hi.sum. A parent's preimage is 128 bytes and a leaf's outer one 32, so neither can pass for
/// the other. `fedmarket.market.rewards` builds the same trees.
library RewardSumTree {
    /// @notice A sibling on a proof's path: its hash and the sum of the amounts below it.
    struct Node {
        bytes32 hash;
        uint256 sum;
    }

    error SumOverflow();

    function leafHash(address account, uint256 amount) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
    }

    /// @notice The (hash, sum) of the root that `proof` leads to from the leaf (account, amount).
    /// Reverts with SumOverflow when the sums pass 2**256 - 1 (no real tree's do).
    function rootOf(address account, uint256 amount, Node[] calldata proof)
        internal
        pure
        returns (bytes32 hash, uint256 sum)
    {
        hash = leafHash(account, amount);
        sum = amount;
        for (uint256 i = 0; i < proof.length; ++i) {
            bytes32 siblingHash = proof[i].hash;
            uint256 siblingSum = proof[i].sum;
            hash = hash <= siblingHash
                ? _parent(hash, sum, siblingHash, siblingSum)
                : _parent(siblingHash, siblingSum, hash, sum);
            unchecked {
                uint256 total = sum + siblingSum;
                if (total < sum) revert SumOverflow();
                sum = total;
            }
        }
    }

    function _parent(bytes32 loHash, uint256 loSum, bytes32 hiHash, uint256 hiSum)
        private
        pure
        returns (bytes32 hash)
    {
        // keccak256(abi.encode(loHash, loSum, hiHash, hiSum)) in scratch memory past the free
        // pointer, without moving it.
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, loHash)
            mstore(add(m, 0x20), loSum)
            mstore(add(m, 0x40), hiHash)
            mstore(add(m, 0x60), hiSum)
            hash := keccak256(m, 0x80)
        }
    }
}
