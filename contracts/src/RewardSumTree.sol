// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Merkle-sum trees of cumulative rewards
/// @notice Every node carries the sum of the amounts below it, so a proof that reaches a
/// committed root with that root's committed total shows the leaf is one of leaves adding up to
/// exactly that total (the Merkle-sum trees of G. Maxwell's proof-of-reserves scheme, 2013).
/// A root can therefore never promise more than its total.
/// @dev Leaves are keccak256(keccak256(abi.encode(account, amount))) with sum = amount, as in
/// OpenZeppelin's StandardMerkleTree; amounts and sums stay below 2**128. A parent is keccak256(abi.encode(lo.hash, lo.sum, hi.hash,
/// hi.sum)) with its children ordered by hash (so proofs carry no directions) and sum lo.sum +
/// hi.sum. A parent's preimage is 128 bytes and a leaf's outer one 32, so neither can pass for
/// the other. `fedmarket.market.rewards` builds the same trees.
library RewardSumTree {
    /// @notice Bytes per node of a packed proof: a sibling's hash (32) then the sum of the
    /// amounts below it as a big-endian uint128 (16). Sums never pass uint128 (the market's
    /// totals are uint128), and 48-byte nodes cost a claim a quarter less calldata than
    /// ABI-encoded (bytes32, uint256) pairs.
    uint256 internal constant NODE_BYTES = 48;

    /// @notice A leaf amount past 2**128 - 1: no committed total can hold it.
    error SumOverflow();
    /// @notice A proof whose length is not a whole number of 48-byte nodes.
    error MalformedProof(uint256 length);

    /// @notice The (hash, sum) of the root that the packed `proof` leads to from the leaf
    /// (account, amount), its nodes ordered from the leaf's sibling up.
    /// @dev In assembly, on a claim's hot path: scratch memory past the free pointer (never
    /// moved) holds each preimage. With the amount and every sibling's sum below 2**128 and
    /// fewer than 2**32 nodes in any calldata, the sums cannot overflow.
    function rootOf(address account, uint256 amount, bytes calldata proof)
        internal
        pure
        returns (bytes32 hash, uint256 sum)
    {
        if (amount > type(uint128).max) revert SumOverflow();
        if (proof.length % NODE_BYTES != 0) revert MalformedProof(proof.length);
        assembly ("memory-safe") {
            let m := mload(0x40)
            // leaf: keccak256(bytes.concat(keccak256(abi.encode(account, amount))))
            mstore(m, and(account, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(m, 0x20), amount)
            mstore(m, keccak256(m, 0x40))
            hash := keccak256(m, 0x20)
            sum := amount
            let node := proof.offset
            for { let end := add(node, proof.length) } lt(node, end) { node := add(node, 48) } {
                let siblingHash := calldataload(node)
                let siblingSum := shr(128, calldataload(add(node, 0x20)))
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
                sum := add(sum, siblingSum)
            }
        }
    }
}
