// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

import {IThinkMeshLedger} from "./IThinkMeshLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";

/// @title NodeRegistry
/// @notice Nodes register with their Ed25519 key, libp2p PeerID and a stake; they leave through
/// an unbonding delay during which their stake stays slashable.
/// @dev Stake leaves the ledger only through {withdrawStake} after the delay, or through a slash
/// (which moves it into the pool). An address registers once; a node that exited rejoins under a
/// new address. Key ownership is proven off chain by the binding in {NodeRegistered}.
abstract contract NodeRegistry is LedgerStorage {
    using SafeERC20 for IERC20;

    /// @inheritdoc IThinkMeshLedger
    function register(
        bytes32 ed25519Key,
        bytes calldata peerId,
        bytes calldata binding,
        uint96 stake,
        string calldata strategy,
        string calldata endpoint
    ) external whenNotPaused nonReentrant {
        NodeAccount storage account = _accounts[msg.sender];
        if (account.status != NodeStatus.None) revert NodeAlreadyRegistered(msg.sender);
        if (ed25519Key == bytes32(0)) revert InvalidEd25519Key();
        if (peerId.length == 0 || peerId.length > MAX_PEER_ID_BYTES) {
            revert InvalidPeerId(peerId.length, MAX_PEER_ID_BYTES);
        }
        if (binding.length != BINDING_BYTES) revert InvalidBinding(binding.length, BINDING_BYTES);
        _checkMetadata(strategy, endpoint);
        if (stake == 0 || stake < minStake) revert StakeBelowMinimum(stake, minStake);

        account.stake = stake;
        account.status = NodeStatus.Active;
        NodeProfile storage profile = _profiles[msg.sender];
        profile.ed25519Key = ed25519Key;
        profile.registeredAt = uint40(block.timestamp);
        profile.peerId = peerId;
        profile.strategy = strategy;
        profile.endpoint = endpoint;
        _staked += stake;
        emit NodeRegistered(msg.sender, ed25519Key, peerId, binding, stake, strategy, endpoint);

        token.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @inheritdoc IThinkMeshLedger
    function addStake(uint96 amount) external whenNotPaused nonReentrant {
        NodeAccount storage account = _accounts[msg.sender];
        if (account.status != NodeStatus.Active) revert NodeNotActive(msg.sender, account.status);
        if (amount == 0) revert ZeroAmount();
        uint256 stake = uint256(account.stake) + amount;
        if (stake > type(uint96).max) revert AmountTooLarge(stake, type(uint96).max);

        // forge-lint: disable-next-line(unsafe-typecast)
        account.stake = uint96(stake); // bounded by the check above
        _staked += amount;
        emit StakeAdded(msg.sender, amount, stake);

        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @inheritdoc IThinkMeshLedger
    function updateMetadata(string calldata strategy, string calldata endpoint) external whenNotPaused {
        NodeStatus status = _accounts[msg.sender].status;
        if (status != NodeStatus.Active && status != NodeStatus.Unbonding) revert NodeNotActive(msg.sender, status);
        _checkMetadata(strategy, endpoint);
        NodeProfile storage profile = _profiles[msg.sender];
        profile.strategy = strategy;
        profile.endpoint = endpoint;
        emit NodeMetadataUpdated(msg.sender, strategy, endpoint);
    }

    /// @inheritdoc IThinkMeshLedger
    function beginUnbonding() external whenNotPaused {
        NodeAccount storage account = _accounts[msg.sender];
        if (account.status != NodeStatus.Active) revert NodeNotActive(msg.sender, account.status);
        uint40 ends = uint40(block.timestamp) + unbondingDelay;
        account.status = NodeStatus.Unbonding;
        account.unbondingEnds = ends;
        emit UnbondingStarted(msg.sender, account.stake, ends);
    }

    /// @inheritdoc IThinkMeshLedger
    function withdrawStake() external whenNotPaused nonReentrant returns (uint256 amount) {
        NodeAccount storage account = _accounts[msg.sender];
        if (account.status != NodeStatus.Unbonding) revert NodeNotUnbonding(msg.sender, account.status);
        // Validators can skew timestamps by seconds; unbonding delays are hours to days.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp < account.unbondingEnds) {
            revert UnbondingNotFinished(msg.sender, account.unbondingEnds, block.timestamp);
        }
        amount = account.stake;
        account.stake = 0;
        account.status = NodeStatus.Exited;
        _staked -= amount;
        emit StakeWithdrawn(msg.sender, amount);

        if (amount != 0) token.safeTransfer(msg.sender, amount);
    }

    /// @inheritdoc IThinkMeshLedger
    function node(address account) external view returns (NodeView memory view_) {
        NodeAccount storage acct = _accounts[account];
        NodeProfile storage profile = _profiles[account];
        view_ = NodeView({
            status: acct.status,
            stake: acct.stake,
            claimable: acct.claimable,
            unbondingEnds: acct.unbondingEnds,
            registeredAt: profile.registeredAt,
            ed25519Key: profile.ed25519Key,
            peerId: profile.peerId,
            strategy: profile.strategy,
            endpoint: profile.endpoint
        });
    }

    function _checkMetadata(string calldata strategy, string calldata endpoint) private pure {
        if (bytes(strategy).length > MAX_STRATEGY_BYTES) {
            revert FieldTooLong("strategy", bytes(strategy).length, MAX_STRATEGY_BYTES);
        }
        if (bytes(endpoint).length > MAX_ENDPOINT_BYTES) {
            revert FieldTooLong("endpoint", bytes(endpoint).length, MAX_ENDPOINT_BYTES);
        }
    }
}
