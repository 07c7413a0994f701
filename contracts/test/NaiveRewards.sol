// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

/// @notice Benchmark baseline: the design we avoid. Every update costs one storage write and
/// one token transfer at commit time.
contract NaiveRewards {
    IERC20 public immutable token;
    mapping(uint256 round => mapping(address device => bytes32 upload)) public updates;

    constructor(IERC20 token_) {
        token = token_;
    }

    function commitRound(uint256 round, address[] calldata devices, bytes32[] calldata uploads, uint256 reward)
        external
    {
        for (uint256 i = 0; i < devices.length; ++i) {
            updates[round][devices[i]] = uploads[i];
            token.transferFrom(msg.sender, devices[i], reward);
        }
    }
}
