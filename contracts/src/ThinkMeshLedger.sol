// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

import {BootstrapPeers} from "./BootstrapPeers.sol";
import {LedgerStorage} from "./LedgerStorage.sol";
import {NodeRegistry} from "./NodeRegistry.sol";
import {RewardPool} from "./RewardPool.sol";
import {RoundBook} from "./RoundBook.sol";

/// @title ThinkMeshLedger
/// @notice One deployment records one training run: its pool, nodes, rounds, slashes, claims
/// and bootstrap peers. See {IThinkMeshLedger} for the full surface.
/// @dev Roles: DEFAULT_ADMIN_ROLE pauses, sets the minimum stake and manages roles;
/// COORDINATOR_ROLE opens, settles and slashes rounds and curates bootstrap peers.
contract ThinkMeshLedger is NodeRegistry, RewardPool, RoundBook, BootstrapPeers {
    /// @param token_ the reward and staking token (a plain ERC-20)
    /// @param admin receives DEFAULT_ADMIN_ROLE
    /// @param coordinator receives COORDINATOR_ROLE
    /// @param unbondingDelay_ seconds a leaving node's stake stays slashable
    /// @param minStake_ smallest stake a node may register with
    constructor(IERC20 token_, address admin, address coordinator, uint40 unbondingDelay_, uint96 minStake_)
        LedgerStorage(token_, admin, coordinator, unbondingDelay_, minStake_)
    {}

    /// @notice Stops every state change except the admin's own; views keep working.
    /// @dev Admin only. Emits {Paused}.
    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    /// @notice Resumes normal operation.
    /// @dev Admin only. Emits {Unpaused}.
    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    /// @notice Sets the smallest stake {register} accepts; registered nodes keep their stake.
    /// @dev Admin only. Emits {MinStakeChanged}.
    /// @param minStake_ the new minimum, in token units
    function setMinStake(uint96 minStake_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        emit MinStakeChanged(minStake, minStake_);
        minStake = minStake_;
    }
}
