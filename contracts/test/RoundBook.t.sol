// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../src/IThinkMeshLedger.sol";
import {LedgerFixture} from "./utils/LedgerFixture.sol";

contract RoundBookTest is LedgerFixture {
    bytes32 internal constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    bytes32 internal constant EVIDENCE = keccak256("evidence");

    // ------------------------------------------------------------ openRound

    function test_openRound_recordsModelAndCommitment() public {
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundOpened(7, MODEL_HASH, commitment(SEED));
        openRound(7);
        IThinkMeshLedger.RoundView memory r = ledger.round(7);
        vm.assertEq(uint256(r.status), uint256(IThinkMeshLedger.RoundStatus.Open), "status");
        vm.assertEq(r.modelHash, MODEL_HASH, "model");
        vm.assertEq(r.seedCommitment, commitment(SEED), "commitment");
        vm.assertEq(r.openedAt, block.timestamp, "openedAt");
    }

    function test_openRound_revertsForExistingId() public {
        openRound(7);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundAlreadyExists.selector, 7));
        openRound(7);
    }

    function test_openRound_onlyCoordinator() public {
        vm.expectRevert(accessDenied(stranger, COORDINATOR_ROLE));
        vm.prank(stranger);
        ledger.openRound(1, MODEL_HASH, commitment(SEED));
    }

    // ------------------------------------------------------------ settleRound

    function test_settleRound_creditsEveryAwardAndRecordsRound() public {
        address[] memory nodes = registerNodes(3);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 10 ether);
        bytes32 root = keccak256("traces");
        bytes32 expectedHash = keccak256(abi.encode(uint64(1), SEED, root, awards, stats()));

        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeCompensated(1, nodes[0], 8, 500_000, 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeCompensated(1, nodes[1], 9, 500_001, 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeCompensated(1, nodes[2], 10, 500_002, 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundSettled(1, expectedHash, root, SEED, 3, 27, 30 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundMetrics(1, 3, 1, -250_000, 625_000);
        bytes32 settlementHash = settle(1, root, awards);

        vm.assertEq(settlementHash, expectedHash, "settlement hash = keccak of the ABI-encoded args");
        IThinkMeshLedger.RoundView memory r = ledger.round(1);
        vm.assertEq(uint256(r.status), uint256(IThinkMeshLedger.RoundStatus.Settled), "status");
        vm.assertEq(r.nodeCount, 3, "nodes");
        vm.assertEq(r.totalSamples, 27, "samples");
        vm.assertEq(r.totalPayout, 30 ether, "payout");
        vm.assertEq(r.tracesRoot, root, "root");
        vm.assertEq(r.seed, SEED, "seed revealed");
        vm.assertEq(r.settlementHash, expectedHash, "stored hash");
        for (uint256 i; i < 3; ++i) {
            vm.assertEq(ledger.node(nodes[i]).claimable, 10 ether, "claimable");
        }
        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.unallocated, POOL - 30 ether, "unallocated");
        vm.assertEq(t.claimable, 30 ether, "claimable total");
        assertBooksBalance();
    }

    function test_settleRound_acceptsEmptyAwards() public {
        openRound(1);
        settle(1, bytes32(0), new IThinkMeshLedger.Award[](0));
        vm.assertEq(uint256(ledger.round(1).status), uint256(IThinkMeshLedger.RoundStatus.Settled), "status");
        vm.assertEq(ledger.poolTotals().unallocated, POOL, "nothing allocated");
    }

    function test_settleRound_revertsOnSecondSettlementNamingStoredHash() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        bytes32 settlementHash = settle(1, bytes32(0), awardsFor(nodes, 1 ether));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundAlreadySettled.selector, 1, settlementHash));
        settle(1, bytes32(0), awardsFor(nodes, 1 ether));
        vm.assertEq(ledger.node(nodes[0]).claimable, 1 ether, "paid once");
    }

    function test_settleRound_revertsForUnopenedRound() public {
        vm.expectRevert(
            abi.encodeWithSelector(IThinkMeshLedger.RoundNotOpen.selector, 9, IThinkMeshLedger.RoundStatus.None)
        );
        settle(9, bytes32(0), new IThinkMeshLedger.Award[](0));
    }

    function test_settleRound_revertsOnWrongSeed() public {
        openRound(1);
        bytes32 wrong = keccak256("not the seed");
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.SeedMismatch.selector, 1, commitment(SEED), wrong));
        vm.prank(coordinator);
        ledger.settleRound(1, wrong, bytes32(0), new IThinkMeshLedger.Award[](0), stats());
    }

    function test_settleRound_revertsOnUnsortedAwards() public {
        address[] memory nodes = registerNodes(2);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        (awards[0], awards[1]) = (awards[1], awards[0]);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AwardsNotSorted.selector, 1, nodes[1], nodes[0]));
        settle(1, bytes32(0), awards);
    }

    function test_settleRound_revertsOnDuplicateNode() public {
        address[] memory nodes = registerNodes(1);
        address[] memory twice = new address[](2);
        twice[0] = nodes[0];
        twice[1] = nodes[0];
        openRound(1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AwardsNotSorted.selector, 1, nodes[0], nodes[0]));
        settle(1, bytes32(0), awardsFor(twice, 1 ether));
    }

    function test_settleRound_revertsOnUnregisteredNode() public {
        address[] memory nodes = new address[](1);
        nodes[0] = stranger;
        openRound(1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AwardToUnregisteredNode.selector, 0, stranger));
        settle(1, bytes32(0), awardsFor(nodes, 1 ether));
    }

    function test_settleRound_revertsWhenPayoutsExceedPool() public {
        address[] memory nodes = registerNodes(2);
        openRound(1);
        uint96 each = uint96(POOL / 2 + 1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.PayoutExceedsPool.selector, 2 * uint256(each), POOL));
        settle(1, bytes32(0), awardsFor(nodes, each));
    }

    function test_settleRound_onlyCoordinator() public {
        openRound(1);
        vm.expectRevert(accessDenied(admin, COORDINATOR_ROLE));
        vm.prank(admin);
        ledger.settleRound(1, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), stats());
    }

    function test_settleRound_paysUnbondingNodesForPastWork() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.prank(nodes[0]);
        ledger.beginUnbonding();
        settle(1, bytes32(0), awardsFor(nodes, 2 ether));
        vm.assertEq(ledger.node(nodes[0]).claimable, 2 ether, "claimable");
    }

    /// Fuzz: any payouts within the pool settle and land exactly; any over the pool revert.
    function testFuzz_settleRound_payoutsNeverExceedPool(uint96[5] memory payouts) public {
        address[] memory nodes = registerNodes(5);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 0);
        uint256 total;
        for (uint256 i; i < 5; ++i) {
            awards[i].payout = uint96(bound(payouts[i], 0, POOL / 2));
            total += awards[i].payout;
        }
        if (total > POOL) {
            vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.PayoutExceedsPool.selector, total, POOL));
            settle(1, bytes32(0), awards);
            return;
        }
        settle(1, bytes32(0), awards);
        for (uint256 i; i < 5; ++i) {
            vm.assertEq(ledger.node(nodes[i]).claimable, awards[i].payout, "credited");
        }
        vm.assertEq(ledger.poolTotals().unallocated, POOL - total, "unallocated");
        vm.assertEq(ledger.round(1).totalPayout, total, "round total");
        assertBooksBalance();
    }

    function testFuzz_settleRound_publishesStatsAndHashesThem(uint32 accepted, uint32 rejected, int64 meanReward)
        public
    {
        openRound(1);
        IThinkMeshLedger.RoundStats memory figures = IThinkMeshLedger.RoundStats({
            accepted: accepted, rejected: rejected, meanReward: meanReward, heldOutAccuracy: 1_000_000
        });
        IThinkMeshLedger.Award[] memory none = new IThinkMeshLedger.Award[](0);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundMetrics(1, accepted, rejected, meanReward, 1_000_000);
        vm.prank(coordinator);
        bytes32 settlementHash = ledger.settleRound(1, SEED, bytes32(0), none, figures);
        vm.assertEq(settlementHash, keccak256(abi.encode(uint64(1), SEED, bytes32(0), none, figures)), "hash covers stats");
    }

    function test_settleRound_retryWithOtherStatsRevertsNamingStoredHash() public {
        openRound(1);
        bytes32 settlementHash = settle(1, bytes32(0), new IThinkMeshLedger.Award[](0));
        IThinkMeshLedger.RoundStats memory other = stats();
        other.rejected += 1;
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundAlreadySettled.selector, 1, settlementHash));
        vm.prank(coordinator);
        ledger.settleRound(1, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), other);
    }

    // ------------------------------------------------------------ settleRoundWithDetails

    function test_settleRoundWithDetails_publishesKindRateAndValuesAfterTheMetrics() public {
        address[] memory nodes = registerNodes(2);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        bytes32 root = keccak256("traces");
        IThinkMeshLedger.RoundDetails memory d = details();
        bytes32 expectedHash = keccak256(abi.encode(uint64(1), SEED, root, awards, stats(), d));

        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundSettled(1, expectedHash, root, SEED, 2, 17, 2 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundMetrics(1, 3, 1, -250_000, 625_000);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundDescribed(1, IThinkMeshLedger.RoundKind.Generation, keccak256("base-v0"), 0.02 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.StrategyValueRecorded(1, "dapo", 3, -7_000, 52_000);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.StrategyValueRecorded(1, "grpo", 1, 20_000, 0);
        vm.assertEq(settleDetailed(1, root, awards), expectedHash, "hash = keccak of the ABI-encoded args, details included");
        vm.assertEq(ledger.round(1).settlementHash, expectedHash, "stored hash");
        vm.assertEq(ledger.node(nodes[1]).claimable, 1 ether, "awards credited as by settleRound");
        assertBooksBalance();
    }

    function test_settleRoundWithDetails_retryWithOtherDetailsRevertsNamingStoredHash() public {
        openRound(1);
        bytes32 settlementHash = settleDetailed(1, bytes32(0), new IThinkMeshLedger.Award[](0));
        IThinkMeshLedger.RoundDetails memory other = details();
        other.values[1].meanValue += 1;
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundAlreadySettled.selector, 1, settlementHash));
        vm.prank(coordinator);
        ledger.settleRoundWithDetails(1, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), stats(), other);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundAlreadySettled.selector, 1, settlementHash));
        settle(1, bytes32(0), new IThinkMeshLedger.Award[](0));
    }

    function test_settleRoundWithDetails_closesAPartedRoundWithAHashCoveringTheDetails() public {
        address[] memory nodes = registerNodes(3);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        settlePart(1, 0, slice(awards, 0, 2));
        bytes32 expected = keccak256(
            abi.encode(uint64(1), SEED, bytes32(0), digestOf(awards), stats(), keccak256(abi.encode(details())))
        );
        vm.assertEq(settleDetailed(1, bytes32(0), slice(awards, 2, 3)), expected, "parted hash with details");
        vm.assertTrue(
            expected != keccak256(abi.encode(uint64(1), SEED, bytes32(0), digestOf(awards), stats())),
            "differs from settleRound's parted hash"
        );
        vm.assertEq(ledger.round(1).nodeCount, 3, "all credited");
    }

    function test_settleRoundWithDetails_boundsTheValues() public {
        openRound(1);
        IThinkMeshLedger.RoundDetails memory d = details();
        d.values = new IThinkMeshLedger.StrategyValue[](17);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.TooManyStrategyValues.selector, 1, 17, 16));
        vm.prank(coordinator);
        ledger.settleRoundWithDetails(1, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), stats(), d);

        d = details();
        d.values[0].strategy = string(new bytes(65));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.FieldTooLong.selector, "strategy", 65, 64));
        vm.prank(coordinator);
        ledger.settleRoundWithDetails(1, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), stats(), d);
        vm.assertEq(uint256(ledger.round(1).status), uint256(IThinkMeshLedger.RoundStatus.Open), "nothing settled");
    }

    function test_settleRoundWithDetails_onlyCoordinatorAndNotWhilePaused() public {
        openRound(1);
        IThinkMeshLedger.Award[] memory none = new IThinkMeshLedger.Award[](0);
        vm.expectRevert(accessDenied(stranger, COORDINATOR_ROLE));
        vm.prank(stranger);
        ledger.settleRoundWithDetails(1, SEED, bytes32(0), none, stats(), details());
        vm.prank(admin);
        ledger.pause();
        vm.expectRevert(abi.encodeWithSignature("EnforcedPause()"));
        settleDetailed(1, bytes32(0), none);
    }

    // ------------------------------------------------------------ settleRoundPart

    function slice(IThinkMeshLedger.Award[] memory awards, uint256 from, uint256 to)
        internal
        pure
        returns (IThinkMeshLedger.Award[] memory part)
    {
        part = new IThinkMeshLedger.Award[](to - from);
        for (uint256 i = from; i < to; ++i) {
            part[i - from] = awards[i];
        }
    }

    function digestOf(IThinkMeshLedger.Award[] memory awards) internal pure returns (bytes32 digest) {
        for (uint256 i; i < awards.length; ++i) {
            digest = keccak256(abi.encode(digest, awards[i]));
        }
    }

    function settlePart(uint64 roundId, uint32 firstIndex, IThinkMeshLedger.Award[] memory awards)
        internal
        returns (bytes32)
    {
        vm.prank(coordinator);
        return ledger.settleRoundPart(roundId, firstIndex, awards);
    }

    function test_settleRoundPart_creditsInPartsAndSettleStoresThePartedHash() public {
        address[] memory nodes = registerNodes(5);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 10 ether);
        bytes32 root = keccak256("traces");

        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeCompensated(1, nodes[0], 8, 500_000, 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeCompensated(1, nodes[1], 9, 500_001, 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundPartSettled(1, 0, 2, 20 ether, digestOf(slice(awards, 0, 2)));
        vm.assertEq(settlePart(1, 0, slice(awards, 0, 2)), digestOf(slice(awards, 0, 2)), "digest of part 1");
        IThinkMeshLedger.RoundView memory open = ledger.round(1);
        vm.assertEq(uint256(open.status), uint256(IThinkMeshLedger.RoundStatus.Open), "still open");
        vm.assertEq(open.nodeCount, 2, "credited so far");
        vm.assertEq(ledger.node(nodes[1]).claimable, 10 ether, "part 1 paid");
        vm.assertEq(ledger.poolTotals().unallocated, POOL - 20 ether, "part 1 left the pool");
        assertBooksBalance();

        settlePart(1, 2, slice(awards, 2, 4));
        (uint32 credited, bytes32 digest) = ledger.roundParts(1);
        vm.assertEq(credited, 4, "roundParts counts");
        vm.assertEq(digest, digestOf(slice(awards, 0, 4)), "roundParts digest");

        bytes32 expected = keccak256(abi.encode(uint64(1), SEED, root, digestOf(awards), stats()));
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeCompensated(1, nodes[4], 12, 500_004, 10 ether);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.RoundSettled(1, expected, root, SEED, 5, 50, 50 ether);
        vm.assertEq(settle(1, root, slice(awards, 4, 5)), expected, "parted settlement hash");
        IThinkMeshLedger.RoundView memory r = ledger.round(1);
        vm.assertEq(uint256(r.status), uint256(IThinkMeshLedger.RoundStatus.Settled), "settled");
        vm.assertEq(r.nodeCount, 5, "nodes");
        vm.assertEq(r.totalSamples, 50, "samples");
        vm.assertEq(r.totalPayout, 50 ether, "payout");
        vm.assertEq(r.settlementHash, expected, "stored hash");
        for (uint256 i; i < 5; ++i) {
            vm.assertEq(ledger.node(nodes[i]).claimable, 10 ether, "each paid once");
        }
        vm.assertEq(ledger.poolTotals().unallocated, POOL - 50 ether, "unallocated");
        assertBooksBalance();
    }

    /// Fuzz: the settlement hash of a parted round depends on the awards, not on where they were cut.
    function testFuzz_settleRoundPart_hashIsIndependentOfTheCuts(uint256 cutA, uint256 cutB) public {
        address[] memory nodes = registerNodes(6);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        uint256 a = bound(cutA, 1, 5);
        uint256 b = bound(cutB, a, 6);
        openRound(1);
        settlePart(1, 0, slice(awards, 0, a));
        if (b > a) settlePart(1, uint32(a), slice(awards, a, b));
        bytes32 settled = settle(1, bytes32(0), slice(awards, b, 6));
        vm.assertEq(settled, keccak256(abi.encode(uint64(1), SEED, bytes32(0), digestOf(awards), stats())), "hash");
    }

    function test_settleRoundPart_retryOfACreditedPartRevertsAndPaysNothing() public {
        address[] memory nodes = registerNodes(3);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        settlePart(1, 0, slice(awards, 0, 2));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundPartOutOfSequence.selector, 1, 2, 0));
        settlePart(1, 0, slice(awards, 0, 2));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundPartOutOfSequence.selector, 1, 2, 3));
        settlePart(1, 3, slice(awards, 2, 3));
        vm.assertEq(ledger.node(nodes[0]).claimable, 1 ether, "paid once");
    }

    function test_settleRoundPart_awardsStaySortedAcrossParts() public {
        address[] memory nodes = registerNodes(3);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        settlePart(1, 0, slice(awards, 0, 2));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AwardsNotSorted.selector, 2, nodes[1], nodes[1]));
        settlePart(1, 2, slice(awards, 1, 2));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AwardsNotSorted.selector, 2, nodes[1], nodes[0]));
        settle(1, bytes32(0), slice(awards, 0, 1));
    }

    function test_settleRoundPart_revertsWhenThePartExceedsThePool() public {
        address[] memory nodes = registerNodes(2);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, uint96(POOL / 2 + 1));
        settlePart(1, 0, slice(awards, 0, 1));
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.PayoutExceedsPool.selector, POOL / 2 + 1, POOL / 2 - 1));
        settlePart(1, 1, slice(awards, 1, 2));
        fundPool(2);
        settlePart(1, 1, slice(awards, 1, 2)); // a sponsor topped the pool up: the same part goes through
        vm.assertEq(ledger.node(nodes[1]).claimable, POOL / 2 + 1, "paid after the top-up");
        assertBooksBalance();
    }

    function test_settleRoundPart_revertsOnEmptyPart() public {
        openRound(1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.EmptyRoundPart.selector, 1));
        settlePart(1, 0, new IThinkMeshLedger.Award[](0));
    }

    function test_settleRoundPart_revertsUnlessOpen() public {
        address[] memory nodes = registerNodes(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IThinkMeshLedger.RoundNotOpen.selector, 1, IThinkMeshLedger.RoundStatus.None)
        );
        settlePart(1, 0, awards);
        openRound(1);
        bytes32 settlementHash = settle(1, bytes32(0), awards);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.RoundAlreadySettled.selector, 1, settlementHash));
        settlePart(1, 1, awards);
        (uint32 credited,) = ledger.roundParts(1);
        vm.assertEq(credited, 0, "a one-transaction round has no parts");
    }

    function test_settleRoundPart_onlyCoordinatorAndNotWhilePaused() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        IThinkMeshLedger.Award[] memory awards = awardsFor(nodes, 1 ether);
        vm.expectRevert(accessDenied(admin, COORDINATOR_ROLE));
        vm.prank(admin);
        ledger.settleRoundPart(1, 0, awards);
        vm.prank(admin);
        ledger.pause();
        vm.expectRevert(bytes4(keccak256("EnforcedPause()")));
        settlePart(1, 0, awards);
    }

    // ------------------------------------------------------------ slash

    function test_slash_movesStakeToPool() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.expectEmit(address(ledger));
        emit IThinkMeshLedger.NodeSlashed(1, nodes[0], 40 ether, 2, EVIDENCE, MIN_STAKE - 40 ether);
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 40 ether, 2, EVIDENCE);

        vm.assertEq(ledger.node(nodes[0]).stake, MIN_STAKE - 40 ether, "stake");
        vm.assertTrue(ledger.isSlashed(1, nodes[0]), "marked");
        vm.assertEq(ledger.round(1).totalSlashed, 40 ether, "round slashed");
        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.slashed, 40 ether, "slashed total");
        vm.assertEq(t.unallocated, POOL + 40 ether, "back in pool");
        assertBooksBalance();
    }

    function test_slash_revertsTwiceInOneRound() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 1 ether, 1, EVIDENCE);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.AlreadySlashed.selector, 1, nodes[0]));
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 1 ether, 1, EVIDENCE);
    }

    function test_slash_revertsForUnknownRound() public {
        address[] memory nodes = registerNodes(1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.UnknownRound.selector, 4));
        vm.prank(coordinator);
        ledger.slash(4, nodes[0], 1 ether, 1, EVIDENCE);
    }

    function test_slash_revertsWithoutReason() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.expectRevert(IThinkMeshLedger.SlashReasonUnspecified.selector);
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 1 ether, 0, EVIDENCE);
    }

    function test_slash_revertsOnZeroAmount() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.expectRevert(IThinkMeshLedger.ZeroAmount.selector);
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 0, 1, EVIDENCE);
    }

    function test_slash_revertsForUnregisteredNode() public {
        openRound(1);
        vm.expectRevert(abi.encodeWithSelector(IThinkMeshLedger.NodeNotRegistered.selector, stranger));
        vm.prank(coordinator);
        ledger.slash(1, stranger, 1 ether, 1, EVIDENCE);
    }

    function test_slash_revertsAboveStake() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.expectRevert(
            abi.encodeWithSelector(IThinkMeshLedger.SlashExceedsStake.selector, nodes[0], MIN_STAKE + 1, MIN_STAKE)
        );
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], MIN_STAKE + 1, 1, EVIDENCE);
    }

    function test_slash_onlyCoordinator() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.expectRevert(accessDenied(nodes[0], COORDINATOR_ROLE));
        vm.prank(nodes[0]);
        ledger.slash(1, nodes[0], 1 ether, 1, EVIDENCE);
    }

    function test_slash_reachesUnbondingStakeAndWithdrawReturnsTheRest() public {
        address[] memory nodes = registerNodes(1);
        openRound(1);
        vm.prank(nodes[0]);
        ledger.beginUnbonding();
        vm.prank(coordinator);
        ledger.slash(1, nodes[0], 30 ether, 3, EVIDENCE);
        vm.warp(block.timestamp + UNBONDING_DELAY);
        vm.prank(nodes[0]);
        vm.assertEq(ledger.withdrawStake(), MIN_STAKE - 30 ether, "remaining stake returned");
        assertBooksBalance();
    }

    // ------------------------------------------------------------ verifyTrace

    function test_verifyTrace_falseBeforeSettlement() public {
        openRound(1);
        vm.assertFalse(ledger.verifyTrace(1, keccak256("t"), new bytes32[](0)), "open round proves nothing");
    }

    /// Fuzz: a two-leaf tree built here proves both leaves and rejects any other item.
    function testFuzz_verifyTrace_twoLeafTree(bytes32 a, bytes32 b, bytes32 other) public {
        vm.assume(a != b && other != a && other != b);
        bytes32 leafA = keccak256(bytes.concat(keccak256(abi.encode(a))));
        bytes32 leafB = keccak256(bytes.concat(keccak256(abi.encode(b))));
        bytes32 root = leafA < leafB ? keccak256(abi.encode(leafA, leafB)) : keccak256(abi.encode(leafB, leafA));
        openRound(1);
        settle(1, root, new IThinkMeshLedger.Award[](0));
        bytes32[] memory proofA = new bytes32[](1);
        proofA[0] = leafB;
        bytes32[] memory proofB = new bytes32[](1);
        proofB[0] = leafA;
        vm.assertTrue(ledger.verifyTrace(1, a, proofA), "a proves");
        vm.assertTrue(ledger.verifyTrace(1, b, proofB), "b proves");
        vm.assertFalse(ledger.verifyTrace(1, other, proofA), "other fails");
        vm.assertFalse(ledger.verifyTrace(2, a, proofA), "unknown round fails");
    }

    // ------------------------------------------------------------ round view

    function test_round_unknownIdHasStatusNone() public view {
        vm.assertEq(uint256(ledger.round(42).status), uint256(IThinkMeshLedger.RoundStatus.None), "status");
    }
}
