// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {IThinkMeshLedger} from "./IThinkMeshLedger.sol";

/// @title LedgerStorage
/// @notice The state shared by the ledger's parts (registry, pool, rounds, bootstrap peers).
/// @dev Layout is chosen for settlement gas: everything a settlement touches per node (status,
/// stake, claimable balance) shares ONE storage slot, so crediting a node costs one cold slot
/// access and one non-zero to non-zero write. Per-node, per-round facts go to events only.
abstract contract LedgerStorage is IThinkMeshLedger, AccessControl, Pausable, ReentrancyGuard {
    /// @notice The role that opens, settles and slashes rounds and curates bootstrap peers.
    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    uint256 internal constant MAX_PEER_ID_BYTES = 64;
    uint256 internal constant BINDING_BYTES = 64 + 65;
    uint256 internal constant MAX_STRATEGY_BYTES = 64;
    uint256 internal constant MAX_ENDPOINT_BYTES = 256;
    uint256 internal constant MAX_MULTIADDR_BYTES = 256;
    uint256 internal constant MAX_STRATEGY_VALUES = 16;

    /// @dev One slot: 112 + 96 + 40 + 8 bits.
    struct NodeAccount {
        uint112 claimable;
        uint96 stake;
        uint40 unbondingEnds;
        NodeStatus status;
    }

    /// @dev Written at registration and on metadata updates only; never read by settlement.
    struct NodeProfile {
        bytes32 ed25519Key;
        uint40 registeredAt;
        bytes peerId;
        string strategy;
        string endpoint;
    }

    /// @dev Slot 0: status, openedAt, settledAt, nodeCount, totalSamples; slot 1: the two sums.
    struct Round {
        RoundStatus status;
        uint40 openedAt;
        uint40 settledAt;
        uint32 nodeCount;
        uint64 totalSamples;
        uint128 totalPayout;
        uint128 totalSlashed;
        bytes32 modelHash;
        bytes32 seedCommitment;
        bytes32 seed;
        bytes32 tracesRoot;
        bytes32 settlementHash;
    }

    /// @dev A round settled in parts ({settleRoundPart}): the digest of the awards credited so far
    /// and the last credited node, which the next part's first award must sort after.
    struct RoundPart {
        bytes32 awardsDigest;
        address lastNode;
    }

    /// @notice The reward token: sponsors fund in it, nodes stake and are paid in it.
    /// @dev Must be a plain ERC-20 (no fee on transfer, no rebasing): the books count amounts sent.
    IERC20 public immutable token;

    /// @notice Seconds between {beginUnbonding} and the earliest {withdrawStake}.
    uint40 public immutable unbondingDelay;

    /// @notice Smallest stake {register} accepts.
    uint96 public minStake;

    mapping(address account => NodeAccount) internal _accounts;
    mapping(address account => NodeProfile) internal _profiles;
    mapping(uint64 roundId => Round) internal _rounds;
    mapping(uint64 roundId => mapping(address account => bool)) internal _slashedIn;
    mapping(uint64 roundId => RoundPart) internal _roundParts;

    uint256 internal _funded;
    uint256 internal _slashed;
    uint256 internal _paidOut;
    uint256 internal _claimable;
    uint256 internal _unallocated;
    uint256 internal _staked;

    constructor(IERC20 token_, address admin, address coordinator, uint40 unbondingDelay_, uint96 minStake_) {
        if (address(token_) == address(0) || admin == address(0) || coordinator == address(0)) {
            revert ZeroAddress();
        }
        token = token_;
        unbondingDelay = unbondingDelay_;
        minStake = minStake_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
        emit MinStakeChanged(0, minStake_);
    }
}
