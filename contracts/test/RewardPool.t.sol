// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

import {IThinkMeshLedger} from "../src/IThinkMeshLedger.sol";
import {ThinkMeshLedger} from "../src/ThinkMeshLedger.sol";
import {LedgerFixture} from "./utils/LedgerFixture.sol";

/// @dev A token that re-enters the ledger's `claim` from inside `transfer`, as a hostile token
/// (or a token with receive hooks) could.
contract ReenteringToken is ERC20 {
    ThinkMeshLedger public target;
    bool public reentered;

    constructor() ERC20("Hostile", "HST") {}

    function setTarget(ThinkMeshLedger target_) external {
        target = target_;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function transfer(address to, uint256 amount) public override returns (bool) {
        if (address(target) != address(0) && !reentered) {
            reentered = true;
            target.claim(to);
        }
        return super.transfer(to, amount);
    }
}

contract RewardPoolTest is LedgerFixture {
    function test_fund_addsToUnallocated() public {
        mint(stranger, 10 ether);
        vm.startPrank(stranger);
        token.approve(address(ledger), 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.PoolFunded(stranger, 10 ether, POOL + 10 ether);
        ledger.fund(10 ether);
        vm.stopPrank();
        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.funded, POOL + 10 ether, "funded");
        vm.assertEq(t.unallocated, POOL + 10 ether, "unallocated");
        assertBooksBalance();
    }

    function test_fund_revertsOnZero() public {
        vm.expectRevert(IThinkMeshLedger.ZeroAmount.selector);
        vm.prank(sponsor);
        ledger.fund(0);
    }

    function test_claim_paysWholeBalanceOnce() public {
        address[] memory nodes = registerNodes(2);
        openRound(1);
        settle(1, bytes32(0), awardsFor(nodes, 7 ether));

        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RewardClaimed(nodes[0], nodes[0], 7 ether);
        vm.prank(nodes[0]);
        uint256 paid = ledger.claim(nodes[0]);
        vm.assertEq(paid, 7 ether, "paid");
        vm.assertEq(token.balanceOf(nodes[0]), 7 ether, "balance");
        vm.assertEq(ledger.node(nodes[0]).claimable, 0, "claimable cleared");

        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.NothingToClaim.selector, nodes[0]));
        vm.prank(nodes[0]);
        ledger.claim(nodes[0]);

        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.paidOut, 7 ether, "paid out");
        vm.assertEq(t.claimable, 7 ether, "other node still claimable");
        assertBooksBalance();
    }

    function test_claim_sendsToRecipient() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        settle(1, bytes32(0), awardsFor(nodes, 3 ether));
        vm.prank(nodes[0]);
        ledger.claim(stranger);
        vm.assertEq(token.balanceOf(stranger), 3 ether, "recipient paid");
    }

    function test_claim_revertsToZeroAddress() public {
        vm.expectRevert(IThinkMeshLedger.ZeroAddress.selector);
        vm.prank(stranger);
        ledger.claim(address(0));
    }

    function test_claim_revertsWithNothingToClaim() public {
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.NothingToClaim.selector, stranger));
        vm.prank(stranger);
        ledger.claim(stranger);
    }

    function test_claim_blocksReentrancy() public {
        ReenteringToken hostile = new ReenteringToken();
        ThinkMeshLedger hostileLedger = new ThinkMeshLedger(hostile, admin, coordinator, UNBONDING_DELAY, 1);
        address node = nodeAddress(0);
        hostile.mint(sponsor, 100);
        hostile.mint(node, 1);
        vm.startPrank(sponsor);
        hostile.approve(address(hostileLedger), 100);
        hostileLedger.fund(100);
        vm.stopPrank();
        vm.startPrank(node);
        hostile.approve(address(hostileLedger), 1);
        hostileLedger.register(keccak256("k"), hex"01", new bytes(129), 1, "grpo", "");
        vm.stopPrank();
        vm.prank(coordinator);
        hostileLedger.openRound(1, MODEL_HASH, commitment(SEED));
        address[] memory nodes = new address[](1);
        nodes[0] = node;
        vm.prank(coordinator);
        hostileLedger.settleRound(1, SEED, bytes32(0), awardsFor(nodes, 50), stats());

        hostile.setTarget(hostileLedger);
        vm.expectRevert(abi.encodeWithSignature("ReentrancyGuardReentrantCall()"));
        vm.prank(node);
        hostileLedger.claim(node);
        vm.assertEq(hostileLedger.node(node).claimable, 50, "claim rolled back");
    }

    function test_poolTotals_startFunded() public view {
        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.funded, POOL, "funded");
        vm.assertEq(t.unallocated, POOL, "unallocated");
        vm.assertEq(t.claimable + t.paidOut + t.slashed + t.staked, 0, "rest empty");
    }
}
