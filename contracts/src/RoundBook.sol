// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {IThinkMeshLedger} from "./IThinkMeshLedger.sol";
import {LedgerStorage} from "./LedgerStorage.sol";

/// @title RoundBook
/// @notice The coordinator opens each round with a model hash and a seed commitment, then
/// settles it once, crediting every accepted node: in one transaction, or, when the awards do not
/// fit one block, in parts ({settleRoundPart}) closed by {settleRound} or {settleRoundWithDetails}
/// (which also publishes the round's kind, base model, pay rate and strategy values); it slashes
/// cheaters with a reason code and an evidence hash.
/// @dev Settlement cost per node: calldata, one event, one cold read and one warm write of the
/// node's packed account slot. Aggregates are written once per round (once per part when parted).
abstract contract RoundBook is LedgerStorage {
    /// @inheritdoc IThinkMeshLedger
    function openRound(uint64 roundId, bytes32 modelHash, bytes32 seedCommitment)
        external
        onlyRole(COORDINATOR_ROLE)
        whenNotPaused
    {
        Round storage r = _rounds[roundId];
        if (r.status != RoundStatus.None) revert RoundAlreadyExists(roundId);
        r.status = RoundStatus.Open;
        r.openedAt = uint40(block.timestamp);
        r.modelHash = modelHash;
        r.seedCommitment = seedCommitment;
        emit RoundOpened(roundId, modelHash, seedCommitment);
    }

    /// @inheritdoc IThinkMeshLedger
    function settleRound(
        uint64 roundId,
        bytes32 seed,
        bytes32 tracesRoot,
        Award[] calldata awards,
        RoundStats calldata stats
    ) external onlyRole(COORDINATOR_ROLE) whenNotPaused returns (bytes32 settlementHash) {
        return _settle(roundId, seed, tracesRoot, awards, stats, bytes32(0));
    }

    /// @inheritdoc IThinkMeshLedger
    function settleRoundWithDetails(
        uint64 roundId,
        bytes32 seed,
        bytes32 tracesRoot,
        Award[] calldata awards,
        RoundStats calldata stats,
        RoundDetails calldata details
    ) external onlyRole(COORDINATOR_ROLE) whenNotPaused returns (bytes32 settlementHash) {
        uint256 count = details.values.length;
        if (count > MAX_STRATEGY_VALUES) revert TooManyStrategyValues(roundId, count, MAX_STRATEGY_VALUES);
        settlementHash = _settle(roundId, seed, tracesRoot, awards, stats, keccak256(abi.encode(details)));
        emit RoundDescribed(roundId, details.kind, details.baseModelHash, details.rewardRate);
        for (uint256 i; i < count;) {
            StrategyValue calldata value = details.values[i];
            uint256 length = bytes(value.strategy).length;
            if (length > MAX_STRATEGY_BYTES) revert FieldTooLong("strategy", length, MAX_STRATEGY_BYTES);
            emit StrategyValueRecorded(roundId, value.strategy, value.contributions, value.meanValue, value.valueSd);
            unchecked {
                ++i;
            }
        }
    }

    /// @dev Settles an Open round (see {settleRound}). `detailsHash` is zero for {settleRound}, else the
    /// hash of the {RoundDetails} that a parted settlement hash then covers.
    function _settle(
        uint64 roundId,
        bytes32 seed,
        bytes32 tracesRoot,
        Award[] calldata awards,
        RoundStats calldata stats,
        bytes32 detailsHash
    ) private returns (bytes32 settlementHash) {
        Round storage r = _rounds[roundId];
        _requireOpen(roundId, r);
        if (keccak256(abi.encodePacked(seed)) != r.seedCommitment) {
            revert SeedMismatch(roundId, r.seedCommitment, seed);
        }

        uint256 credited = r.nodeCount; // > 0 only when earlier parts were credited
        uint256 totalPayout;
        uint256 totalSamples;
        if (credited == 0) {
            (totalPayout, totalSamples) = _creditAll(roundId, awards);
            _allocate(totalPayout);
            settlementHash = keccak256(msg.data[4:]);
        } else {
            bytes32 digest;
            (totalPayout, totalSamples, digest) = _creditPart(roundId, credited, awards);
            totalPayout += r.totalPayout;
            totalSamples += r.totalSamples;
            settlementHash = detailsHash == bytes32(0)
                ? keccak256(abi.encode(roundId, seed, tracesRoot, digest, stats))
                : keccak256(abi.encode(roundId, seed, tracesRoot, digest, stats, detailsHash));
        }

        // The casts below cannot truncate: the award count < 2**32 (calldata is bounded by the block
        // gas limit, parts by the uint32 index), each award adds < 2**32 samples and < 2**96 payout,
        // so the sums stay below 2**64 and 2**128.
        uint256 nodeCount = credited + awards.length;
        r.status = RoundStatus.Settled;
        r.settledAt = uint40(block.timestamp);
        // forge-lint: disable-next-line(unsafe-typecast)
        r.nodeCount = uint32(nodeCount);
        // forge-lint: disable-next-line(unsafe-typecast)
        r.totalSamples = uint64(totalSamples);
        // forge-lint: disable-next-line(unsafe-typecast)
        r.totalPayout = uint128(totalPayout);
        r.seed = seed;
        r.tracesRoot = tracesRoot;
        r.settlementHash = settlementHash;
        // forge-lint: disable-start(unsafe-typecast)
        emit RoundSettled(
            roundId, settlementHash, tracesRoot, seed, uint32(nodeCount), uint64(totalSamples), uint128(totalPayout)
        );
        // forge-lint: disable-end(unsafe-typecast)
        emit RoundMetrics(roundId, stats.accepted, stats.rejected, stats.meanReward, stats.heldOutAccuracy);
    }

    /// @inheritdoc IThinkMeshLedger
    function settleRoundPart(uint64 roundId, uint32 firstIndex, Award[] calldata awards)
        external
        onlyRole(COORDINATOR_ROLE)
        whenNotPaused
        returns (bytes32 awardsDigest)
    {
        Round storage r = _rounds[roundId];
        _requireOpen(roundId, r);
        uint32 credited = r.nodeCount;
        if (firstIndex != credited) revert RoundPartOutOfSequence(roundId, credited, firstIndex);
        if (awards.length == 0) revert EmptyRoundPart(roundId);

        uint256 payout;
        uint256 samples;
        (payout, samples, awardsDigest) = _creditPart(roundId, credited, awards);
        // Checked arithmetic: a sum past its field's width reverts the part (see settleRound's casts).
        // forge-lint: disable-next-line(unsafe-typecast)
        uint32 count = uint32(awards.length); // < 2**32: calldata is bounded by the block gas limit
        r.nodeCount = credited + count;
        r.totalSamples += SafeCast.toUint64(samples);
        r.totalPayout += SafeCast.toUint128(payout);
        emit RoundPartSettled(roundId, firstIndex, count, payout, awardsDigest);
    }

    /// @inheritdoc IThinkMeshLedger
    function roundParts(uint64 roundId) external view returns (uint32 awardsCredited, bytes32 awardsDigest) {
        Round storage r = _rounds[roundId];
        RoundPart storage part = _roundParts[roundId];
        return (part.lastNode == address(0) ? 0 : r.nodeCount, part.awardsDigest);
    }

    /// @dev Reverts unless round `roundId` is Open, naming a settled round's stored hash.
    function _requireOpen(uint64 roundId, Round storage r) private view {
        RoundStatus status = r.status;
        if (status == RoundStatus.Settled) revert RoundAlreadySettled(roundId, r.settlementHash);
        if (status != RoundStatus.Open) revert RoundNotOpen(roundId, status);
    }

    /// @dev Moves `payout` from the unallocated pool to the claimable total, or reverts.
    function _allocate(uint256 payout) private {
        uint256 unallocated = _unallocated;
        if (payout > unallocated) revert PayoutExceedsPool(payout, unallocated);
        _unallocated = unallocated - payout;
        _claimable += payout;
    }

    /// @dev Credits every award. Each failed check reverts the whole settlement, so crediting
    /// before the pool bound is checked (by the caller, once the sum is known) is safe.
    function _creditAll(uint64 roundId, Award[] calldata awards)
        private
        returns (uint256 totalPayout, uint256 totalSamples)
    {
        address previous;
        uint256 count = awards.length;
        for (uint256 i; i < count;) {
            Award calldata award = awards[i];
            previous = _credit(roundId, i, previous, award);
            totalPayout += award.payout;
            totalSamples += award.verifiedSamples;
            unchecked {
                ++i;
            }
        }
    }

    /// @dev Credits the awards at positions `firstIndex`.. of a round settled in parts: they must
    /// sort after the last credited node; each is folded into the awards digest. Moves their payout
    /// out of the pool and records the new digest and last node.
    function _creditPart(uint64 roundId, uint256 firstIndex, Award[] calldata awards)
        private
        returns (uint256 payout, uint256 samples, bytes32 digest)
    {
        RoundPart storage part = _roundParts[roundId];
        address previous = part.lastNode;
        digest = part.awardsDigest;
        uint256 count = awards.length;
        for (uint256 i; i < count;) {
            Award calldata award = awards[i];
            previous = _credit(roundId, firstIndex + i, previous, award);
            digest = keccak256(abi.encode(digest, award));
            payout += award.payout;
            samples += award.verifiedSamples;
            unchecked {
                ++i;
            }
        }
        _allocate(payout);
        part.awardsDigest = digest;
        part.lastNode = previous;
    }

    /// @dev Credits one award to its node's claimable balance (one packed slot) and logs it.
    /// Returns the award's node, which the next award's node must exceed (sorted, no duplicates).
    function _credit(uint64 roundId, uint256 index, address previous, Award calldata award)
        private
        returns (address account)
    {
        account = award.node;
        if (account <= previous) revert AwardsNotSorted(index, previous, account);
        NodeAccount storage acct = _accounts[account];
        if (acct.status == NodeStatus.None) revert AwardToUnregisteredNode(index, account);
        uint256 claimable = uint256(acct.claimable) + award.payout;
        if (claimable > type(uint112).max) revert ClaimableOverflow(account, claimable);
        // forge-lint: disable-next-line(unsafe-typecast)
        acct.claimable = uint112(claimable); // bounded by the check above
        emit NodeCompensated(roundId, account, award.verifiedSamples, award.score, award.payout);
    }

    /// @inheritdoc IThinkMeshLedger
    function slash(uint64 roundId, address account, uint96 amount, uint8 reason, bytes32 evidenceHash)
        external
        onlyRole(COORDINATOR_ROLE)
        whenNotPaused
    {
        Round storage r = _rounds[roundId];
        if (r.status == RoundStatus.None) revert UnknownRound(roundId);
        if (reason == 0) revert SlashReasonUnspecified();
        if (amount == 0) revert ZeroAmount();
        NodeAccount storage acct = _accounts[account];
        if (acct.status == NodeStatus.None) revert NodeNotRegistered(account);
        if (_slashedIn[roundId][account]) revert AlreadySlashed(roundId, account);
        uint96 stake = acct.stake;
        if (amount > stake) revert SlashExceedsStake(account, amount, stake);

        _slashedIn[roundId][account] = true;
        acct.stake = stake - amount;
        _staked -= amount;
        _slashed += amount;
        _unallocated += amount;
        r.totalSlashed += amount;
        emit NodeSlashed(roundId, account, amount, reason, evidenceHash, stake - amount);
    }

    /// @inheritdoc IThinkMeshLedger
    function round(uint64 roundId) external view returns (RoundView memory) {
        Round storage r = _rounds[roundId];
        return RoundView({
            status: r.status,
            openedAt: r.openedAt,
            settledAt: r.settledAt,
            nodeCount: r.nodeCount,
            totalSamples: r.totalSamples,
            totalPayout: r.totalPayout,
            totalSlashed: r.totalSlashed,
            modelHash: r.modelHash,
            seedCommitment: r.seedCommitment,
            seed: r.seed,
            tracesRoot: r.tracesRoot,
            settlementHash: r.settlementHash
        });
    }

    /// @inheritdoc IThinkMeshLedger
    function isSlashed(uint64 roundId, address account) external view returns (bool) {
        return _slashedIn[roundId][account];
    }

    /// @inheritdoc IThinkMeshLedger
    function verifyTrace(uint64 roundId, bytes32 traceHash, bytes32[] calldata proof) external view returns (bool) {
        Round storage r = _rounds[roundId];
        if (r.status != RoundStatus.Settled) return false;
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(traceHash))));
        return MerkleProof.verifyCalldata(proof, r.tracesRoot, leaf);
    }
}
