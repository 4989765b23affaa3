// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../src/IThinkMeshLedger.sol";
import {LedgerFixture} from "./utils/LedgerFixture.sol";

contract BootstrapPeersTest is LedgerFixture {
    string internal constant A = "/ip4/127.0.0.1/tcp/31337/p2p/QmA";
    string internal constant B = "/ip4/127.0.0.1/tcp/31338/p2p/QmB";
    string internal constant C = "/ip4/127.0.0.1/tcp/31339/p2p/QmC";

    function _add(string memory multiaddr) internal {
        vm.prank(coordinator);
        ledger.addBootstrapPeer(multiaddr);
    }

    function test_addBootstrapPeer_listsPeer() public {
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.BootstrapPeerAdded(A);
        _add(A);
        string[] memory peers = ledger.bootstrapPeers();
        vm.assertEq(peers.length, 1, "one peer");
        vm.assertEq(peers[0], A, "the peer");
    }

    function test_addBootstrapPeer_revertsOnDuplicate() public {
        _add(A);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.BootstrapPeerExists.selector, A));
        _add(A);
    }

    function test_addBootstrapPeer_revertsOnEmptyOrLong() public {
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.FieldTooLong.selector, "multiaddr", 0, 256));
        _add("");
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.FieldTooLong.selector, "multiaddr", 257, 256));
        _add(string(new bytes(257)));
    }

    function test_addBootstrapPeer_onlyCoordinator() public {
        vm.expectRevert(accessDenied(stranger, keccak256("COORDINATOR_ROLE")));
        vm.prank(stranger);
        ledger.addBootstrapPeer(A);
    }

    function test_removeBootstrapPeer_keepsOthers() public {
        _add(A);
        _add(B);
        _add(C);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.BootstrapPeerRemoved(A);
        vm.prank(coordinator);
        ledger.removeBootstrapPeer(A);
        string[] memory peers = ledger.bootstrapPeers();
        vm.assertEq(peers.length, 2, "two left");
        vm.assertEq(peers[0], C, "last moved into the hole");
        vm.assertEq(peers[1], B, "B kept");
        // The moved entry's index was updated: removing it and re-adding A works.
        vm.prank(coordinator);
        ledger.removeBootstrapPeer(C);
        _add(A);
        vm.assertEq(ledger.bootstrapPeers().length, 2, "re-added");
    }

    function test_removeBootstrapPeer_revertsForUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.UnknownBootstrapPeer.selector, A));
        vm.prank(coordinator);
        ledger.removeBootstrapPeer(A);
    }

    function test_removeBootstrapPeer_onlyCoordinator() public {
        _add(A);
        vm.expectRevert(accessDenied(admin, keccak256("COORDINATOR_ROLE")));
        vm.prank(admin);
        ledger.removeBootstrapPeer(A);
    }

    function test_bootstrapPeers_curationStopsWhilePaused() public {
        _add(A);
        vm.prank(admin);
        ledger.pause();
        bytes4 paused = bytes4(keccak256("EnforcedPause()"));
        vm.expectRevert(paused);
        _add(B);
        vm.expectRevert(paused);
        vm.prank(coordinator);
        ledger.removeBootstrapPeer(A);
        vm.assertEq(ledger.bootstrapPeers().length, 1, "the list is as it was");
        vm.prank(admin);
        ledger.unpause();
        _add(B);
        vm.assertEq(ledger.bootstrapPeers().length, 2, "curation works again");
    }
}
