// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title IThinkMeshLedger
/// @notice The public record of one thinkmesh training run: a sponsor-funded reward pool, the
/// registry of staked nodes, one settlement per round, slashing with evidence, pull-payment
/// claims, trace provenance, and the bootstrap peers of the p2p network.
/// @dev Types, events and errors live here so that clients (the Python chain client, the
/// dashboard) decode everything from one ABI. All token amounts are in the reward token's
/// smallest unit; all times are unix seconds from `block.timestamp`.
interface IThinkMeshLedger {
    // ---------------------------------------------------------------- types

    /// @notice Life of a node: registered nodes are Active, leave through Unbonding, end Exited.
    enum NodeStatus {
        None,
        Active,
        Unbonding,
        Exited
    }

    /// @notice Life of a round: opened once, settled once.
    enum RoundStatus {
        None,
        Open,
        Settled
    }

    /// @notice One accepted node's line in a round settlement.
    /// @param node the node's address (awards are sorted by strictly ascending address)
    /// @param verifiedSamples samples of this node the coordinator verified and accepted (one accepted
    /// reasoning trace each, under the round's traces root)
    /// @param score the coordinator's score, fixed point with 1e6 = 1.0
    /// @param payout reward credited to the node's claimable balance: per verified prompt (a group of
    /// samples), never per sample, so the group size cannot inflate it
    /// (`rewardPerPrompt * prompts * score / 1e6`, the protocol's payout rule, protocol/payout.py)
    struct Award {
        address node;
        uint32 verifiedSamples;
        uint64 score;
        uint96 payout;
    }

    /// @notice A round's quality figures, published with its settlement (in an event, not stored).
    /// @param accepted contributions that passed verification
    /// @param rejected contributions that failed verification (their nodes are slashed)
    /// @param meanReward mean total reward over the accepted samples, fixed point with 1e6 = 1.0
    /// (signed: length shaping can make rewards negative)
    /// @param heldOutAccuracy held-out accuracy of the model version the round produced, 1e6 = 100%
    struct RoundStats {
        uint32 accepted;
        uint32 rejected;
        int64 meanReward;
        uint32 heldOutAccuracy;
    }

    /// @notice What a round asked of its nodes (protocol/generation.py): a gradient (Training), or
    /// sampled traces only, paid per accepted trace (Generation).
    enum RoundKind {
        Training,
        Generation
    }

    /// @notice One strategy's contribution values in a round: the change in expected reward on the
    /// round's public validation batch from each valued contribution's update alone
    /// (protocol/contribution_value.py), summarised so that readers can pool rounds and compute a
    /// confidence interval.
    /// @param strategy the contributions' objective (their declared, verified loss variant), at most 64 bytes
    /// @param contributions how many contributions of this strategy were valued, > 0
    /// @param meanValue their mean value, fixed point with 1e6 = 1.0 reward unit (signed)
    /// @param valueSd the sample standard deviation (n - 1) of their values, 1e6 = 1.0; 0 for one value
    struct StrategyValue {
        string strategy;
        uint32 contributions;
        int64 meanValue;
        uint64 valueSd;
    }

    /// @notice Facts about a round beyond its awards and quality figures, published by
    /// {settleRoundWithDetails} in events (not stored).
    /// @param kind the round's kind
    /// @param baseModelHash adapter rounds: the frozen base's manifest hash (the round's model version is
    /// this base plus the adapter named by {RoundOpened}'s modelHash); zero for full-model rounds
    /// @param rewardRate the round's pay rate in token units: per verified prompt at score 1.0 in a
    /// Training round, per accepted trace in a Generation round
    /// @param values per-strategy contribution values, at most 16 entries (none when
    /// the coordinator measured none, e.g. in a Generation round)
    struct RoundDetails {
        RoundKind kind;
        bytes32 baseModelHash;
        uint96 rewardRate;
        StrategyValue[] values;
    }

    /// @notice Everything the ledger knows about a node.
    struct NodeView {
        NodeStatus status;
        uint96 stake;
        uint112 claimable;
        uint40 unbondingEnds;
        uint40 registeredAt;
        bytes32 ed25519Key;
        bytes peerId;
        string strategy;
        string endpoint;
    }

    /// @notice Everything the ledger knows about a round.
    struct RoundView {
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

    /// @notice The pool's books. Always: funded + slashed == paidOut + claimable + unallocated,
    /// and the ledger's token balance == claimable + unallocated + staked.
    struct PoolTotals {
        uint256 funded;
        uint256 slashed;
        uint256 paidOut;
        uint256 claimable;
        uint256 unallocated;
        uint256 staked;
    }

    // ---------------------------------------------------------------- errors

    error ZeroAddress();
    error ZeroAmount();
    error StakeBelowMinimum(uint256 stake, uint256 minStake);
    error AmountTooLarge(uint256 amount, uint256 max);
    error InvalidEd25519Key();
    error InvalidPeerId(uint256 length, uint256 maxLength);
    error FieldTooLong(string field, uint256 length, uint256 maxLength);
    error NodeAlreadyRegistered(address node);
    error InvalidBinding(uint256 length, uint256 expectedLength);
    error NodeNotRegistered(address node);
    error NodeNotActive(address node, NodeStatus status);
    error NodeNotUnbonding(address node, NodeStatus status);
    error UnbondingNotFinished(address node, uint256 unbondingEnds, uint256 nowTimestamp);
    error RoundAlreadyExists(uint64 roundId);
    error UnknownRound(uint64 roundId);
    error RoundNotOpen(uint64 roundId, RoundStatus status);
    error RoundAlreadySettled(uint64 roundId, bytes32 settlementHash);
    error SeedMismatch(uint64 roundId, bytes32 seedCommitment, bytes32 seed);
    error AwardsNotSorted(uint256 index, address previous, address node);
    error AwardToUnregisteredNode(uint256 index, address node);
    error PayoutExceedsPool(uint256 payout, uint256 unallocated);
    error ClaimableOverflow(address node, uint256 claimable);
    error SlashReasonUnspecified();
    error SlashExceedsStake(address node, uint256 amount, uint256 stake);
    error AlreadySlashed(uint64 roundId, address node);
    error NothingToClaim(address node);
    error RoundPartOutOfSequence(uint64 roundId, uint32 expectedFirstIndex, uint32 firstIndex);
    error EmptyRoundPart(uint64 roundId);
    error TooManyStrategyValues(uint64 roundId, uint256 count, uint256 maxCount);
    error BootstrapPeerExists(string multiaddr);
    error UnknownBootstrapPeer(string multiaddr);

    // ---------------------------------------------------------------- events

    event PoolFunded(address indexed sponsor, uint256 amount, uint256 unallocated);
    event NodeRegistered(
        address indexed node,
        bytes32 indexed ed25519Key,
        bytes peerId,
        bytes binding,
        uint256 stake,
        string strategy,
        string endpoint
    );
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event NodeMetadataUpdated(address indexed node, string strategy, string endpoint);
    event UnbondingStarted(address indexed node, uint256 stake, uint256 unbondingEnds);
    event StakeWithdrawn(address indexed node, uint256 amount);
    event RoundOpened(uint64 indexed roundId, bytes32 modelHash, bytes32 seedCommitment);
    event NodeCompensated(
        uint64 indexed roundId, address indexed node, uint32 verifiedSamples, uint64 score, uint96 payout
    );
    event RoundSettled(
        uint64 indexed roundId,
        bytes32 settlementHash,
        bytes32 tracesRoot,
        bytes32 seed,
        uint32 nodeCount,
        uint64 totalSamples,
        uint128 totalPayout
    );
    event RoundPartSettled(
        uint64 indexed roundId, uint32 firstIndex, uint32 count, uint256 payout, bytes32 awardsDigest
    );
    event RoundMetrics(
        uint64 indexed roundId, uint32 accepted, uint32 rejected, int64 meanReward, uint32 heldOutAccuracy
    );
    event RoundDescribed(uint64 indexed roundId, RoundKind kind, bytes32 baseModelHash, uint96 rewardRate);
    event StrategyValueRecorded(
        uint64 indexed roundId, string strategy, uint32 contributions, int64 meanValue, uint64 valueSd
    );
    event NodeSlashed(
        uint64 indexed roundId,
        address indexed node,
        uint256 amount,
        uint8 reason,
        bytes32 evidenceHash,
        uint256 remainingStake
    );
    event RewardClaimed(address indexed node, address indexed recipient, uint256 amount);
    event MinStakeChanged(uint256 previous, uint256 current);
    event BootstrapPeerAdded(string multiaddr);
    event BootstrapPeerRemoved(string multiaddr);

    // ---------------------------------------------------------------- pool

    /// @notice Adds `amount` reward tokens from the caller to the unallocated pool.
    /// @dev The caller must have approved the ledger for `amount`.
    /// @param amount tokens to move into the pool, > 0
    function fund(uint256 amount) external;

    /// @notice Sends the caller's whole claimable balance to `recipient`.
    /// @param recipient where the tokens go (may be the caller)
    /// @return amount the tokens sent
    function claim(address recipient) external returns (uint256 amount);

    /// @notice The pool's books; see {PoolTotals}.
    function poolTotals() external view returns (PoolTotals memory);

    // ---------------------------------------------------------------- registry

    /// @notice Registers the caller as a node, pulling `stake` tokens from it.
    /// @dev The EVM has no Ed25519 verifier, so the key is not checked here: `binding` carries the
    /// node's identity binding (Ed25519 signature, 64 bytes, then EVM signature, 65 bytes, over a
    /// statement naming both the key and the caller; see thinkmesh.protocol.identity) into the
    /// {NodeRegistered} event, where the coordinator and any auditor verify it. A registration
    /// whose binding does not verify is ignored off chain. For the same reason keys are not unique
    /// on chain: a squatter could otherwise lock a key out without ever being able to sign for it.
    /// @param ed25519Key the node's Ed25519 public key, non-zero
    /// @param peerId the node's libp2p PeerID bytes (multihash), 1..64 bytes
    /// @param binding Ed25519 signature (64 bytes) followed by EVM signature (65 bytes)
    /// @param stake tokens to stake, at least {minStake}
    /// @param strategy the node's GRPO strategy name, at most 64 bytes
    /// @param endpoint where the node can be reached (a multiaddr or URL), at most 256 bytes
    function register(
        bytes32 ed25519Key,
        bytes calldata peerId,
        bytes calldata binding,
        uint96 stake,
        string calldata strategy,
        string calldata endpoint
    ) external;

    /// @notice Adds `amount` tokens to the caller's stake; the caller must be Active.
    /// @param amount tokens to add, > 0
    function addStake(uint96 amount) external;

    /// @notice Replaces the caller's strategy name and endpoint.
    /// @param strategy the node's GRPO strategy name, at most 64 bytes
    /// @param endpoint where the node can be reached, at most 256 bytes
    function updateMetadata(string calldata strategy, string calldata endpoint) external;

    /// @notice Starts the caller's unbonding: its stake stays slashable for {unbondingDelay}
    /// seconds, then {withdrawStake} returns it. The node takes no further part in rounds.
    function beginUnbonding() external;

    /// @notice Returns the caller's remaining stake once its unbonding delay has passed.
    /// @return amount the tokens returned (may be 0 if the stake was slashed away)
    function withdrawStake() external returns (uint256 amount);

    /// @notice A node's full record (status None for an unknown address).
    function node(address account) external view returns (NodeView memory);

    // ---------------------------------------------------------------- rounds

    /// @notice Opens round `roundId` for the model `modelHash` with a commitment to its seed.
    /// @dev Coordinator only. `seedCommitment` = keccak256(abi.encodePacked(seed)).
    /// @param roundId the round's id, never used before
    /// @param modelHash hash of the model version the round trains from
    /// @param seedCommitment commitment to the round seed, revealed at settlement
    function openRound(uint64 roundId, bytes32 modelHash, bytes32 seedCommitment) external;

    /// @notice Settles round `roundId`: credits every award (or, after {settleRoundPart}, the
    /// remaining ones) to its node's claimable balance, reveals the seed, records the traces Merkle
    /// root, and publishes the round's quality figures in a {RoundMetrics} event.
    /// @dev Coordinator only. A round settles once; a second call reverts with
    /// {RoundAlreadySettled} naming the stored settlement hash, so a retried call is detectable.
    /// A round settled in parts stores the parted hash described at {settleRoundPart} instead.
    /// @param roundId an Open round
    /// @param seed the round seed; keccak256(abi.encodePacked(seed)) must equal the commitment
    /// @param tracesRoot OpenZeppelin StandardMerkleTree root over the accepted traces' hashes
    /// @param awards one line per accepted node, sorted by strictly ascending node address;
    /// the payouts' sum must not exceed the unallocated pool
    /// @param stats the round's quality figures (emitted, not stored; covered by the settlement hash)
    /// @return settlementHash keccak256 of the call's ABI-encoded arguments (one-transaction rounds)
    function settleRound(
        uint64 roundId,
        bytes32 seed,
        bytes32 tracesRoot,
        Award[] calldata awards,
        RoundStats calldata stats
    ) external returns (bytes32 settlementHash);

    /// @notice {settleRound}, and the round's details: its kind, its base model (adapter rounds), its
    /// pay rate and its per-strategy contribution values, published in one {RoundDescribed} event and
    /// one {StrategyValueRecorded} event per strategy, after {RoundSettled} and {RoundMetrics}.
    /// @dev Coordinator only. Everything {settleRound} guarantees holds; the settlement hash covers the
    /// details too: keccak256 of this call's ABI-encoded arguments in one transaction, and
    /// `keccak256(abi.encode(roundId, seed, tracesRoot, awardsDigest, stats, keccak256(abi.encode(details))))`
    /// after {settleRoundPart}. The details cost settlement a fixed amount of gas, not a per-award one:
    /// at most 16 strategies of at most 64 bytes each.
    /// @param details the round's details; see {RoundDetails}
    /// @return settlementHash the stored settlement hash, as described above
    function settleRoundWithDetails(
        uint64 roundId,
        bytes32 seed,
        bytes32 tracesRoot,
        Award[] calldata awards,
        RoundStats calldata stats,
        RoundDetails calldata details
    ) external returns (bytes32 settlementHash);

    /// @notice Credits one part of round `roundId`'s awards ahead of its {settleRound}, for a round
    /// whose awards do not fit one transaction.
    /// @dev Coordinator only. Parts go in order: `firstIndex` must equal the number of awards
    /// credited so far (the round's `nodeCount` while it is Open), so a part that was already
    /// credited (a retry whose receipt was lost) reverts with {RoundPartOutOfSequence} instead of
    /// paying twice. Awards stay sorted across parts. Each part's payout leaves the unallocated pool
    /// at once. Every credited award is folded into the round's awards digest,
    /// `d = keccak256(abi.encode(d, award))` from `d = 0`, whatever the parts' sizes; the final
    /// {settleRound} (with the remaining awards, possibly none) then stores
    /// `keccak256(abi.encode(roundId, seed, tracesRoot, awardsDigest, stats))` as the settlement hash.
    /// @param roundId an Open round
    /// @param firstIndex the position of `awards[0]` among all the round's awards
    /// @param awards the next awards, sorted by strictly ascending node address, at least one
    /// @return awardsDigest the digest of every award credited so far
    function settleRoundPart(uint64 roundId, uint32 firstIndex, Award[] calldata awards)
        external
        returns (bytes32 awardsDigest);

    /// @notice How far a round settled in parts has come: awards credited and their digest.
    /// @dev Zero for a round settled in one transaction.
    function roundParts(uint64 roundId) external view returns (uint32 awardsCredited, bytes32 awardsDigest);

    /// @notice Slashes `amount` of `account`'s stake for round `roundId`; the tokens return to the
    /// unallocated pool.
    /// @dev Coordinator only. At most once per (round, node). Works on Active and Unbonding nodes.
    /// @param roundId an opened round (Open or Settled)
    /// @param account the node
    /// @param amount tokens to slash, 0 < amount <= stake
    /// @param reason non-zero reason code (defined by the protocol's verification rules)
    /// @param evidenceHash hash of the published evidence that any third party can replay
    function slash(uint64 roundId, address account, uint96 amount, uint8 reason, bytes32 evidenceHash) external;

    /// @notice A round's full record (status None for an unknown id).
    function round(uint64 roundId) external view returns (RoundView memory);

    /// @notice Whether `account` was slashed in round `roundId`.
    function isSlashed(uint64 roundId, address account) external view returns (bool);

    /// @notice Whether `traceHash` is a leaf of settled round `roundId`'s traces tree.
    /// @dev Leaf = keccak256(bytes.concat(keccak256(abi.encode(traceHash)))), sorted-pair hashing
    /// (OpenZeppelin StandardMerkleTree over one bytes32 column). False for unsettled rounds.
    /// @param roundId the round
    /// @param traceHash the trace's hash (the tree's item)
    /// @param proof sibling hashes from leaf to root
    function verifyTrace(uint64 roundId, bytes32 traceHash, bytes32[] calldata proof) external view returns (bool);

    // ---------------------------------------------------------------- bootstrap peers

    /// @notice Adds a multiaddr that new peers may dial to join the p2p network.
    /// @dev Coordinator only, not while paused; 1..256 bytes; no duplicates.
    function addBootstrapPeer(string calldata multiaddr) external;

    /// @notice Removes a bootstrap multiaddr.
    /// @dev Coordinator only, not while paused.
    function removeBootstrapPeer(string calldata multiaddr) external;

    /// @notice The current bootstrap multiaddrs (order not significant).
    function bootstrapPeers() external view returns (string[] memory);
}
