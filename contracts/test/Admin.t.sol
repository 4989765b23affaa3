// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../src/IThinkMeshLedger.sol";
import {ThinkMeshLedger} from "../src/ThinkMeshLedger.sol";
import {ThinkMeshToken} from "../src/ThinkMeshToken.sol";
import {LedgerFixture} from "./utils/LedgerFixture.sol";

contract AdminTest is LedgerFixture {
    bytes32 internal constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    bytes32 internal constant ADMIN_ROLE = 0x00;

    function test_constructor_grantsRolesAndSetsParameters() public view {
        vm.assertTrue(ledger.hasRole(ADMIN_ROLE, admin), "admin");
        vm.assertTrue(ledger.hasRole(COORDINATOR_ROLE, coordinator), "coordinator");
        vm.assertFalse(ledger.hasRole(COORDINATOR_ROLE, admin), "admin is not coordinator");
        vm.assertEq(ledger.COORDINATOR_ROLE(), COORDINATOR_ROLE, "role id");
        vm.assertEq(address(ledger.token()), address(token), "token");
        vm.assertEq(ledger.unbondingDelay(), UNBONDING_DELAY, "delay");
        vm.assertEq(ledger.minStake(), MIN_STAKE, "min stake");
    }

    function test_constructor_revertsOnZeroAddresses() public {
        vm.expectRevert(IThinkMeshLedger.ZeroAddress.selector);
        new ThinkMeshLedger(ThinkMeshToken(address(0)), admin, coordinator, 1, 1);
        vm.expectRevert(IThinkMeshLedger.ZeroAddress.selector);
        new ThinkMeshLedger(token, address(0), coordinator, 1, 1);
        vm.expectRevert(IThinkMeshLedger.ZeroAddress.selector);
        new ThinkMeshLedger(token, admin, address(0), 1, 1);
    }

    function test_setMinStake_changesMinimum() public {
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.MinStakeChanged(MIN_STAKE, 5 ether);
        vm.prank(admin);
        ledger.setMinStake(5 ether);
        vm.assertEq(ledger.minStake(), 5 ether, "min stake");
    }

    function test_setMinStake_onlyAdmin() public {
        vm.expectRevert(accessDenied(coordinator, ADMIN_ROLE));
        vm.prank(coordinator);
        ledger.setMinStake(5 ether);
    }

    function test_pause_onlyAdmin() public {
        vm.expectRevert(accessDenied(coordinator, ADMIN_ROLE));
        vm.prank(coordinator);
        ledger.pause();
    }

    function test_pause_stopsStateChangesUntilUnpaused() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        settle(1, bytes32(0), awardsFor(nodes, 1 ether));
        vm.prank(admin);
        ledger.pause();
        bytes4 paused = bytes4(keccak256("EnforcedPause()"));

        vm.expectRevert(paused);
        vm.prank(nodes[0]);
        ledger.claim(nodes[0]);
        vm.expectRevert(paused);
        vm.prank(coordinator);
        ledger.openRound(2, MODEL_HASH, commitment(SEED));
        vm.expectRevert(paused);
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 1, 1, bytes32(0));
        vm.expectRevert(paused);
        vm.prank(sponsor);
        ledger.fund(1);
        vm.expectRevert(paused);
        vm.prank(nodes[0]);
        ledger.beginUnbonding();

        vm.prank(admin);
        ledger.unpause();
        vm.prank(nodes[0]);
        vm.assertEq(ledger.claim(nodes[0]), 1 ether, "claim works again");
    }

    function test_unpause_onlyAdmin() public {
        vm.prank(admin);
        ledger.pause();
        vm.expectRevert(accessDenied(stranger, ADMIN_ROLE));
        vm.prank(stranger);
        ledger.unpause();
    }

    function test_grantRole_addsASecondCoordinator() public {
        vm.prank(admin);
        ledger.grantRole(COORDINATOR_ROLE, stranger);
        vm.prank(stranger);
        ledger.openRound(5, MODEL_HASH, commitment(SEED));
        vm.assertEq(uint256(ledger.round(5).status), uint256(IThinkMeshLedger.RoundStatus.Open), "opened");
    }
}
