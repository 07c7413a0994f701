// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title fedmarket's reward and payment token
/// @notice A fixed-supply ERC-20 with EIP-2612 permits, so buyers and sponsors approve and pay
/// in one transaction. The whole supply is minted once to `holder`.
contract FedToken is ERC20, ERC20Permit {
    constructor(address holder, uint256 supply) ERC20("fedmarket token", "FED") ERC20Permit("fedmarket token") {
        _mint(holder, supply);
    }
}
