// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ThinkMeshToken
/// @notice The reward and staking token of a thinkmesh run: sponsors fund pools with it, nodes
/// stake it and are paid in it. A plain 18-decimal ERC-20 (no fees, no rebasing).
contract ThinkMeshToken is ERC20, AccessControl {
    /// @notice The role allowed to mint.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @param admin receives DEFAULT_ADMIN_ROLE and MINTER_ROLE
    constructor(address admin) ERC20("ThinkMesh Reward", "MESH") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
    }

    /// @notice Creates `amount` tokens for `to`.
    /// @dev Minter only. Emits {Transfer} from the zero address.
    /// @param to the recipient
    /// @param amount token units to create
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }
}
