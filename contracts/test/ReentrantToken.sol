// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice Test-only hostile token: on every transfer out of `victim` it calls `victim` again
/// with `attack` (e.g. a second claim or withdraw) and records whether that call succeeded.
contract ReentrantToken is ERC20 {
    address public victim;
    bytes public attack;
    bool public attempted;
    bool public reentered;

    constructor(uint256 supply) ERC20("hostile", "EVIL") {
        _mint(msg.sender, supply);
    }

    function arm(address victim_, bytes calldata attack_) external {
        victim = victim_;
        attack = attack_;
        attempted = false;
        reentered = false;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (from == victim && victim != address(0) && !attempted) {
            attempted = true;
            (bool ok,) = victim.call(attack);
            reentered = ok;
        }
    }
}
