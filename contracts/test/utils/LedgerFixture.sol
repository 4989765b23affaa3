// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IThinkMeshLedger} from "../../src/IThinkMeshLedger.sol";
import {ThinkMeshLedger} from "../../src/ThinkMeshLedger.sol";
import {ThinkMeshToken} from "../../src/ThinkMeshToken.sol";
import {TestBase} from "./TestBase.sol";

/// @title LedgerFixture
/// @notice A deployed token + ledger with named actors, and helpers that drive the ledger the
/// way the coordinator and nodes do.
abstract contract LedgerFixture is TestBase {
    uint40 internal constant UNBONDING_DELAY = 3 days;
    uint96 internal constant MIN_STAKE = 100 ether;
    uint256 internal constant POOL = 1_000_000 ether;
    bytes32 internal constant MODEL_HASH = keccak256("model-v0");
    bytes32 internal constant SEED = keccak256("seed-of-round");


    /// @dev The quality figures every fixture settlement publishes: 3 accepted, 1 rejected,
    /// mean reward -0.25 (signed fixed point), held-out accuracy 62.5%.
    function stats() internal pure returns (IThinkMeshLedger.RoundStats memory) {
        return IThinkMeshLedger.RoundStats({accepted: 3, rejected: 1, meanReward: -250_000, heldOutAccuracy: 625_000});
    }

    /// @dev The details every detailed fixture settlement publishes: a generation round on an adapter
    /// base, 0.02 tokens per accepted trace, values of two strategies.
    function details() internal pure returns (IThinkMeshLedger.RoundDetails memory d) {
        d.kind = IThinkMeshLedger.RoundKind.Generation;
        d.baseModelHash = keccak256("base-v0");
        d.rewardRate = 0.02 ether;
        d.values = new IThinkMeshLedger.StrategyValue[](2);
        d.values[0] = IThinkMeshLedger.StrategyValue({strategy: "dapo", contributions: 3, meanValue: -7_000, valueSd: 52_000});
        d.values[1] = IThinkMeshLedger.StrategyValue({strategy: "grpo", contributions: 1, meanValue: 20_000, valueSd: 0});
    }

    address internal admin = address(0xAD);
    address internal coordinator = address(0xC0);
    address internal sponsor = address(0x5B);
    address internal stranger = address(0xBAD);

    ThinkMeshToken internal token;
    ThinkMeshLedger internal ledger;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        token = new ThinkMeshToken(admin);
        ledger = new ThinkMeshLedger(token, admin, coordinator, UNBONDING_DELAY, MIN_STAKE);
        vm.label(address(ledger), "ledger");
        vm.label(address(token), "token");
        fundPool(POOL);
    }

    function mint(address to, uint256 amount) internal {
        vm.prank(admin);
        token.mint(to, amount);
    }

    function fundPool(uint256 amount) internal {
        mint(sponsor, amount);
        vm.startPrank(sponsor);
        token.approve(address(ledger), amount);
        ledger.fund(amount);
        vm.stopPrank();
    }

    /// @dev The n-th test node: addresses ascend with n, so awards built in n order are sorted.
    function nodeAddress(uint256 n) internal pure returns (address) {
        return address(uint160(0x1000 + n));
    }

    function ed25519KeyOf(address account) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked("ed25519", account));
    }

    function peerIdOf(address account) internal pure returns (bytes memory) {
        return abi.encodePacked(hex"0024080112", keccak256(abi.encodePacked(account)));
    }

    /// @dev Stands in for an identity binding: the ledger checks only its length (129 bytes).
    function bindingOf(address account) internal pure returns (bytes memory) {
        return abi.encodePacked(keccak256(abi.encode(account)), keccak256(abi.encode(account, 1)), new bytes(65));
    }

    function registerNode(address account, uint96 stake) internal {
        mint(account, stake);
        vm.startPrank(account);
        token.approve(address(ledger), stake);
        ledger.register(
            ed25519KeyOf(account), peerIdOf(account), bindingOf(account), stake, "grpo", "/ip4/127.0.0.1/tcp/4001"
        );
        vm.stopPrank();
    }

    function registerNodes(uint256 count) internal returns (address[] memory accounts) {
        accounts = new address[](count);
        for (uint256 i; i < count; ++i) {
            accounts[i] = nodeAddress(i);
            registerNode(accounts[i], MIN_STAKE);
        }
    }

    function commitment(bytes32 seed) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(seed));
    }

    function openRound(uint64 roundId) internal {
        vm.prank(coordinator);
        ledger.openRound(roundId, MODEL_HASH, commitment(SEED));
    }

    function awardsFor(address[] memory accounts, uint96 payout)
        internal
        pure
        returns (IThinkMeshLedger.Award[] memory awards)
    {
        awards = new IThinkMeshLedger.Award[](accounts.length);
        for (uint256 i; i < accounts.length; ++i) {
            awards[i] = IThinkMeshLedger.Award({
                node: accounts[i], verifiedSamples: uint32(8 + i), score: uint64(500_000 + i), payout: payout
            });
        }
    }

    function settle(uint64 roundId, bytes32 tracesRoot, IThinkMeshLedger.Award[] memory awards)
        internal
        returns (bytes32)
    {
        vm.prank(coordinator);
        return ledger.settleRound(roundId, SEED, tracesRoot, awards, stats());
    }

    function settleDetailed(uint64 roundId, bytes32 tracesRoot, IThinkMeshLedger.Award[] memory awards)
        internal
        returns (bytes32)
    {
        vm.prank(coordinator);
        return ledger.settleRoundWithDetails(roundId, SEED, tracesRoot, awards, stats(), details());
    }

    function accessDenied(address account, bytes32 role) internal pure returns (bytes memory) {
        return abi.encodeWithSignature("AccessControlUnauthorizedAccount(address,bytes32)", account, role);
    }

    function assertBooksBalance() internal view {
        IThinkMeshLedger.PoolTotals memory t = ledger.poolTotals();
        vm.assertEq(t.funded + t.slashed, t.paidOut + t.claimable + t.unallocated, "pool books");
        vm.assertEq(token.balanceOf(address(ledger)), t.claimable + t.unallocated + t.staked, "token balance");
    }
}
