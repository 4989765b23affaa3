// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../../src/IThinkMeshLedger.sol";
import {ThinkMeshLedger} from "../../src/ThinkMeshLedger.sol";
import {ThinkMeshToken} from "../../src/ThinkMeshToken.sol";
import {Vm} from "../utils/Vm.sol";

/// @title LedgerHandler
/// @notice Drives the ledger through random but well-formed sequences of every role's actions,
/// and keeps ghost books the invariants compare against the ledger's own.
/// @dev Each action bounds its inputs so that its call must succeed (the suite runs with
/// fail_on_revert, so runs go deep and a wrongly refused call fails the test). What must never
/// succeed (a second settlement, a stranger opening, settling or slashing, an early withdrawal)
/// is tried inside try/catch and counted in a ghost that the invariants require to stay zero.
contract LedgerHandler {
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);
    uint256 internal constant NODE_COUNT = 6;
    bytes32 internal constant SEED = keccak256("invariant seed");

    ThinkMeshLedger public immutable ledger;
    ThinkMeshToken public immutable token;
    address public immutable coordinator;
    address internal constant SPONSOR = address(0x5B0);

    address[NODE_COUNT] public nodes;
    uint64 public nextRoundId = 1;
    uint64[] public openRounds;
    uint64[] public settledRounds;

    // ghost books
    uint256 public ghostFunded;
    uint256 public ghostPaidOut;
    mapping(address => uint256) public ghostStakeIn;
    mapping(address => uint256) public ghostStakeWithdrawn;
    mapping(address => uint256) public ghostStakeSlashed;
    mapping(uint64 => uint256) public ghostSettleSuccesses;
    uint256 public ghostDoubleSettlements;
    uint256 public ghostUnauthorizedSuccesses;
    uint256 public ghostEarlyWithdrawals;
    uint256 public settlements;
    uint256 public slashes;
    uint256 public claims;

    constructor(ThinkMeshLedger ledger_, ThinkMeshToken token_, address coordinator_) {
        ledger = ledger_;
        token = token_;
        coordinator = coordinator_;
        for (uint256 i; i < NODE_COUNT; ++i) {
            nodes[i] = address(uint160(0x2000 + i)); // ascending, so subsets in index order are sorted
        }
    }

    function nodeAt(uint256 i) external view returns (address) {
        return nodes[i];
    }

    function settledRoundCount() external view returns (uint256) {
        return settledRounds.length;
    }

    function _bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return hi <= lo ? lo : lo + (x % (hi - lo + 1));
    }

    function _mintAndApprove(address account, uint256 amount) internal {
        token.mint(account, amount);
        vm.prank(account);
        token.approve(address(ledger), amount);
    }

    /// The first node from index `who` on (cyclically) with a claimable balance, or with stake.
    function _firstNodeFrom(uint256 who, bool withClaimable) internal view returns (address) {
        for (uint256 k; k < NODE_COUNT; ++k) {
            address account = nodes[(who % NODE_COUNT + k) % NODE_COUNT];
            IThinkMeshLedger.NodeView memory n = ledger.node(account);
            if (withClaimable ? n.claimable > 0 : n.stake > 0) return account;
        }
        return address(0);
    }

    // ------------------------------------------------------------ sponsor

    function fund(uint256 amount) external {
        amount = _bound(amount, 1, 1_000 ether);
        _mintAndApprove(SPONSOR, amount);
        vm.prank(SPONSOR);
        ledger.fund(amount);
        ghostFunded += amount;
    }

    // ------------------------------------------------------------ nodes

    function register(uint256 who, uint256 stake) external {
        address account = nodes[who % NODE_COUNT];
        if (ledger.node(account).status != IThinkMeshLedger.NodeStatus.None) return;
        uint96 amount = uint96(_bound(stake, ledger.minStake(), 500 ether));
        _mintAndApprove(account, amount);
        vm.prank(account);
        ledger.register(keccak256(abi.encode(account)), abi.encodePacked(account), new bytes(129), amount, "grpo", "");
        ghostStakeIn[account] += amount;
    }

    function addStake(uint256 who, uint256 amount) external {
        address account = nodes[who % NODE_COUNT];
        if (ledger.node(account).status != IThinkMeshLedger.NodeStatus.Active) return;
        uint96 add = uint96(_bound(amount, 1, 100 ether));
        _mintAndApprove(account, add);
        vm.prank(account);
        ledger.addStake(add);
        ghostStakeIn[account] += add;
    }

    function beginUnbonding(uint256 who) external {
        address account = nodes[who % NODE_COUNT];
        if (ledger.node(account).status != IThinkMeshLedger.NodeStatus.Active) return;
        vm.prank(account);
        ledger.beginUnbonding();
    }

    function warp(uint256 secondsAhead) external {
        vm.warp(block.timestamp + _bound(secondsAhead, 1, 2 days));
    }

    function withdrawStake(uint256 who) external {
        address account = nodes[who % NODE_COUNT];
        IThinkMeshLedger.NodeView memory before = ledger.node(account);
        vm.prank(account);
        try ledger.withdrawStake() returns (uint256 amount) {
            if (block.timestamp < before.unbondingEnds) ghostEarlyWithdrawals++;
            ghostStakeWithdrawn[account] += amount;
        } catch {}
    }

    function claim(uint256 who) external {
        address account = _firstNodeFrom(who, true);
        if (account == address(0)) return;
        vm.prank(account);
        ghostPaidOut += ledger.claim(account);
        claims++;
    }

    // ------------------------------------------------------------ coordinator

    function openRound() external {
        uint64 roundId = nextRoundId++;
        vm.prank(coordinator);
        ledger.openRound(roundId, keccak256(abi.encode(roundId)), keccak256(abi.encodePacked(SEED)));
        openRounds.push(roundId);
    }

    /// Settles the newest open round, paying a random subset of registered nodes within the pool.
    function settleRound(uint256 subsetMask, uint256 payoutSeed) external {
        if (openRounds.length == 0) return;
        uint64 roundId = openRounds[openRounds.length - 1];
        openRounds.pop();
        IThinkMeshLedger.Award[] memory awards = _awards(subsetMask, payoutSeed);
        _close(roundId, awards, payoutSeed);
        _settled(roundId);
    }

    /// Settles the newest open round in two transactions: the awards before `split` as a part,
    /// the rest with settleRound. Re-sending the credited part must fail (it would pay twice).
    function settleRoundInParts(uint256 subsetMask, uint256 payoutSeed, uint256 split) external {
        if (openRounds.length == 0) return;
        IThinkMeshLedger.Award[] memory awards = _awards(subsetMask, payoutSeed);
        if (awards.length == 0) return;
        uint64 roundId = openRounds[openRounds.length - 1];
        openRounds.pop();
        uint256 head = _bound(split, 1, awards.length);
        IThinkMeshLedger.Award[] memory first = new IThinkMeshLedger.Award[](head);
        IThinkMeshLedger.Award[] memory rest = new IThinkMeshLedger.Award[](awards.length - head);
        for (uint256 i; i < awards.length; ++i) {
            if (i < head) first[i] = awards[i];
            else rest[i - head] = awards[i];
        }
        vm.prank(coordinator);
        ledger.settleRoundPart(roundId, 0, first);
        vm.prank(coordinator);
        try ledger.settleRoundPart(roundId, 0, first) {
            ghostDoubleSettlements++;
        } catch {}
        _close(roundId, rest, payoutSeed);
        _settled(roundId);
    }

    /// The closing settlement: settleRound, or settleRoundWithDetails when `seed` is odd.
    function _close(uint64 roundId, IThinkMeshLedger.Award[] memory awards, uint256 seed) internal {
        bytes32 root = keccak256(abi.encode("traces", roundId));
        vm.prank(coordinator);
        if (seed % 2 == 0) {
            ledger.settleRound(roundId, SEED, root, awards, _stats());
            return;
        }
        IThinkMeshLedger.StrategyValue[] memory values = new IThinkMeshLedger.StrategyValue[](1);
        values[0] = IThinkMeshLedger.StrategyValue({strategy: "grpo", contributions: 2, meanValue: -5, valueSd: 7});
        IThinkMeshLedger.RoundDetails memory details = IThinkMeshLedger.RoundDetails({
            kind: IThinkMeshLedger.RoundKind(seed % 4 / 2), baseModelHash: bytes32(seed), rewardRate: 1e16, values: values
        });
        ledger.settleRoundWithDetails(roundId, SEED, root, awards, _stats(), details);
    }

    /// A random subset of the registered nodes, in address order, whose payouts fit the pool.
    function _awards(uint256 subsetMask, uint256 payoutSeed) internal view returns (IThinkMeshLedger.Award[] memory awards) {
        uint256 budget = ledger.poolTotals().unallocated;
        awards = new IThinkMeshLedger.Award[](NODE_COUNT);
        uint256 count;
        for (uint256 i; i < NODE_COUNT; ++i) {
            address account = nodes[i];
            if ((subsetMask >> i) & 1 == 0) continue;
            if (ledger.node(account).status == IThinkMeshLedger.NodeStatus.None) continue;
            uint96 payout = uint96(_bound(uint256(keccak256(abi.encode(payoutSeed, i))), 0, budget / NODE_COUNT));
            awards[count++] = IThinkMeshLedger.Award({node: account, verifiedSamples: 4, score: 1e6, payout: payout});
        }
        assembly {
            mstore(awards, count)
        }
    }

    function _settled(uint64 roundId) internal {
        ghostSettleSuccesses[roundId]++;
        settledRounds.push(roundId);
        settlements++;
    }

    /// Tries to settle an already settled round again; success would be a double payment.
    function resettleRound(uint256 which) external {
        if (settledRounds.length == 0) return;
        uint64 roundId = settledRounds[which % settledRounds.length];
        vm.prank(coordinator);
        try ledger.settleRound(roundId, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), _stats()) {
            ghostSettleSuccesses[roundId]++;
            ghostDoubleSettlements++;
        } catch {}
    }

    function slash(uint256 which, uint256 who, uint256 amount, uint8 reason) external {
        if (settledRounds.length == 0) return;
        uint64 roundId = settledRounds[which % settledRounds.length];
        address account = _firstNodeFrom(who, false);
        if (account == address(0)) return;
        uint256 stake = ledger.node(account).stake;
        if (ledger.isSlashed(roundId, account)) return;
        uint96 cut = uint96(_bound(amount, 1, stake));
        vm.prank(coordinator);
        ledger.slash(roundId, account, cut, uint8(_bound(reason, 1, 255)), keccak256("evidence"));
        ghostStakeSlashed[account] += cut;
        slashes++;
    }

    function _stats() internal view returns (IThinkMeshLedger.RoundStats memory) {
        return IThinkMeshLedger.RoundStats({
            accepted: uint32(openRounds.length), rejected: 0, meanReward: 0, heldOutAccuracy: 0
        });
    }

    /// A non-coordinator (a node, the sponsor, or the handler itself) tries every coordinator action.
    function strangerActs(uint256 who, uint256 amount) external {
        address caller = who % 3 == 0 ? SPONSOR : (who % 3 == 1 ? address(this) : nodes[who % NODE_COUNT]);
        uint64 roundId = openRounds.length > 0 ? openRounds[0] : nextRoundId;
        vm.prank(caller);
        try ledger.openRound(nextRoundId, bytes32(0), bytes32(0)) {
            ghostUnauthorizedSuccesses++;
        } catch {}
        vm.prank(caller);
        try ledger.settleRound(roundId, SEED, bytes32(0), new IThinkMeshLedger.Award[](0), _stats()) {
            ghostUnauthorizedSuccesses++;
        } catch {}
        vm.prank(caller);
        try ledger.slash(roundId, nodes[amount % NODE_COUNT], 1, 1, bytes32(0)) {
            ghostUnauthorizedSuccesses++;
        } catch {}
    }
}
