// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "./IThinkMeshLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";

/// @title BootstrapPeers
/// @notice The multiaddrs a new peer dials to join the run's p2p network, curated by the
/// coordinator role, so a node needs only the chain (RPC + ledger address) to find the swarm.
/// Like every state change but the admin's, curating it stops while the ledger is paused.
/// @dev An unordered set: removal swaps the last entry into the hole.
abstract contract BootstrapPeers is LedgerStorage {
    string[] private _bootstrapPeers;
    mapping(bytes32 multiaddrHash => uint256 indexPlusOne) private _bootstrapIndex;

    /// @inheritdoc IThinkMeshLedger
    function addBootstrapPeer(string calldata multiaddr) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        uint256 length = bytes(multiaddr).length;
        if (length == 0 || length > MAX_MULTIADDR_BYTES) {
            revert FieldTooLong("multiaddr", length, MAX_MULTIADDR_BYTES);
        }
        bytes32 key = keccak256(bytes(multiaddr));
        if (_bootstrapIndex[key] != 0) revert BootstrapPeerExists(multiaddr);
        _bootstrapPeers.push(multiaddr);
        _bootstrapIndex[key] = _bootstrapPeers.length;
        emit BootstrapPeerAdded(multiaddr);
    }

    /// @inheritdoc IThinkMeshLedger
    function removeBootstrapPeer(string calldata multiaddr) external onlyRole(COORDINATOR_ROLE) whenNotPaused {
        bytes32 key = keccak256(bytes(multiaddr));
        uint256 indexPlusOne = _bootstrapIndex[key];
        if (indexPlusOne == 0) revert UnknownBootstrapPeer(multiaddr);
        uint256 last = _bootstrapPeers.length - 1;
        if (indexPlusOne - 1 != last) {
            string memory moved = _bootstrapPeers[last];
            _bootstrapPeers[indexPlusOne - 1] = moved;
            _bootstrapIndex[keccak256(bytes(moved))] = indexPlusOne;
        }
        _bootstrapPeers.pop();
        delete _bootstrapIndex[key];
        emit BootstrapPeerRemoved(multiaddr);
    }

    /// @inheritdoc IThinkMeshLedger
    function bootstrapPeers() external view returns (string[] memory) {
        return _bootstrapPeers;
    }
}
