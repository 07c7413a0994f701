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

    /// @notice The (hash, sum) of the root that `proof` leads to from the leaf (account, amount).
    /// Reverts with SumOverflow when the sums pass 2**256 - 1 (no real tree's do).
    /// @dev In assembly, on a claim's hot path: scratch memory past the free pointer (never
    /// moved) holds each preimage, and the ABI decoder already bounded `proof` to the calldata.
    function rootOf(address account, uint256 amount, Node[] calldata proof)
        internal
        pure
        returns (bytes32 hash, uint256 sum)
    {
        bool overflow;
        assembly ("memory-safe") {
            let m := mload(0x40)
            // leaf: keccak256(bytes.concat(keccak256(abi.encode(account, amount))))
            mstore(m, and(account, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(m, 0x20), amount)
            mstore(m, keccak256(m, 0x40))
            hash := keccak256(m, 0x20)
            sum := amount
            let node := proof.offset
            for { let end := add(node, shl(6, proof.length)) } lt(node, end) { node := add(node, 0x40) } {
                let siblingHash := calldataload(node)
                let siblingSum := calldataload(add(node, 0x20))
                // parent: keccak256(abi.encode(lo.hash, lo.sum, hi.hash, hi.sum)), ordered by hash
                switch gt(hash, siblingHash)
                case 0 {
                    mstore(m, hash)
                    mstore(add(m, 0x20), sum)
                    mstore(add(m, 0x40), siblingHash)
                    mstore(add(m, 0x60), siblingSum)
                }
                default {
                    mstore(m, siblingHash)
                    mstore(add(m, 0x20), siblingSum)
                    mstore(add(m, 0x40), hash)
                    mstore(add(m, 0x60), sum)
                }
                hash := keccak256(m, 0x80)
                let total := add(sum, siblingSum)
                if lt(total, sum) {
                    overflow := 1
                    break
                }
                sum := total
            }
        }
        if (overflow) revert SumOverflow();
    }
}
