// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IThinkMeshLedger} from "./IThinkMeshLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";

/// @title RewardPool
/// @notice Sponsors fund the pool; settlements move pool tokens into nodes' claimable balances;
/// nodes pull their balance whenever they like.
/// @dev Books: funded + slashed == paidOut + claimable + unallocated, at every step.
abstract contract RewardPool is LedgerStorage {
    using SafeERC20 for IERC20;

    /// @inheritdoc IThinkMeshLedger
    function fund(uint256 amount) external whenNotPaused nonReentrant {
        if (amount == 0) revert ZeroAmount();
        _funded += amount;
        uint256 unallocated = _unallocated + amount;
        _unallocated = unallocated;
        emit PoolFunded(msg.sender, amount, unallocated);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IThinkMeshLedger
    function claim(address recipient) external whenNotPaused nonReentrant returns (uint256 amount) {
        if (recipient == address(0)) revert ZeroAddress();
        NodeAccount storage account = _accounts[msg.sender];
        amount = account.claimable;
        if (amount == 0) revert NothingToClaim(msg.sender);
        account.claimable = 0;
        _claimable -= amount;
        _paidOut += amount;
        emit RewardClaimed(msg.sender, recipient, amount);

        token.safeTransfer(recipient, amount);
    }

    /// @inheritdoc IThinkMeshLedger
    function poolTotals() external view returns (PoolTotals memory) {
        return PoolTotals({
            funded: _funded,
            slashed: _slashed,
            paidOut: _paidOut,
            claimable: _claimable,
            unallocated: _unallocated,
            staked: _staked
        });
    }
}
