// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../../src/IThinkMeshLedger.sol";
import {ThinkMeshLedger} from "../../src/ThinkMeshLedger.sol";
import {ThinkMeshToken} from "../../src/ThinkMeshToken.sol";
import {TestBase} from "../utils/TestBase.sol";
import {LedgerHandler} from "./LedgerHandler.sol";

contract LedgerInvariantsTest is TestBase {
    address internal constant COORDINATOR = address(0xC0);
    ThinkMeshToken internal token;
    ThinkMeshLedger internal ledger;
    LedgerHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        token = new ThinkMeshToken(address(this));
        ledger = new ThinkMeshLedger(token, address(this), COORDINATOR, 1 days, 10 ether);
        handler = new LedgerHandler(ledger, token, COORDINATOR);
        token.grantRole(token.MINTER_ROLE(), address(handler));
        targetContract(address(handler));
    }

    /// funded + slashed == paidOut + claimable + unallocated, and the ledger holds exactly what it owes.
    function invariant_poolBooksBalance() public view {
        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.funded + t.slashed, t.paidOut + t.claimable + t.unallocated, "pool books");
        vm.assertEq(token.balanceOf(address(ledger)), t.claimable + t.unallocated + t.staked, "token balance");
        vm.assertEq(t.funded, handler.ghostFunded(), "funded = sponsor deposits");
        vm.assertEq(t.paidOut, handler.ghostPaidOut(), "paid out = claims");
    }

    /// The sum of per-node claimable balances is the pool's claimable total.
    function invariant_claimableTotalMatchesNodes() public view {
        uint256 sum;
        for (uint256 i; i < 6; ++i) {
            sum += ledger.node(handler.nodeAt(i)).claimable;
        }
        vm.assertEq(sum, ledger.poolTotals().claimable, "claimable sum");
    }

    /// A node's stake is what it put in, less what it withdrew after unbonding and what was slashed.
    function invariant_stakeLeavesOnlyByWithdrawalOrSlash() public view {
        uint256 staked;
        uint256 slashed;
        for (uint256 i; i < 6; ++i) {
            address account = handler.nodeAt(i);
            uint256 stake = ledger.node(account).stake;
            vm.assertEq(
                stake,
                handler.ghostStakeIn(account) - handler.ghostStakeWithdrawn(account)
                    - handler.ghostStakeSlashed(account),
                "node stake"
            );
            staked += stake;
            slashed += handler.ghostStakeSlashed(account);
        }
        vm.assertEq(staked, ledger.poolTotals().staked, "staked total");
        vm.assertEq(slashed, ledger.poolTotals().slashed, "slashed total");
        vm.assertEq(handler.ghostEarlyWithdrawals(), 0, "no withdrawal before unbonding ends");
    }

    /// No round ever settles twice.
    function invariant_noRoundSettledTwice() public view {
        vm.assertEq(handler.ghostDoubleSettlements(), 0, "double settlement");
        for (uint256 i; i < handler.settledRoundCount(); ++i) {
            uint64 roundId = handler.settledRounds(i);
            vm.assertEq(handler.ghostSettleSuccesses(roundId), 1, "settled once");
        }
    }

    /// Only the coordinator opens, settles or slashes.
    function invariant_onlyCoordinatorSettlesOrSlashes() public view {
        vm.assertEq(handler.ghostUnauthorizedSuccesses(), 0, "stranger succeeded");
    }
}
