"""Typed readers for the ledger's event log: the public record a dashboard or auditor replays.

Per-node, per-round facts (what each node earned, who was slashed and why) live only in events,
by design of the contract (it keeps settlement gas per node low), so these readers are the way
to see them. Each returns records in chain order.
"""

from __future__ import annotations

from typing import Any

from eth_utils import to_checksum_address

from thinkmesh.protocol.chain_tx import rpc_errors
from thinkmesh.protocol.ledger import (
    SCORE_SCALE,
    ClaimRecord,
    Compensation,
    NodeRegistration,
    RoundMetricsRecord,
    RoundOpening,
    RoundSettlementRecord,
    SlashRecord,
    checksum_address,
)


class LedgerEvents:
    """Event queries on one ledger contract, from its deployment block unless told otherwise."""

    def __init__(self, ledger: Any, rpc_url: str, *, from_block: int = 0) -> None:
        self._ledger = ledger
        self._rpc_url = rpc_url
        self._from_block = from_block

    def compensations(
        self, *, round_id: int | None = None, node: str | None = None, from_block: int | None = None
    ) -> list[Compensation]:
        """`NodeCompensated` events, filtered by round and/or node."""
        filters: dict[str, Any] = {}
        if round_id is not None:
            filters["roundId"] = round_id
        if node is not None:
            filters["node"] = checksum_address(node)
        return [
            Compensation(
                round_id=args["roundId"],
                node=to_checksum_address(args["node"]),
                verified_samples=args["verifiedSamples"],
                score=args["score"],
                payout=args["payout"],
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("NodeCompensated", filters, from_block)
        ]

    def slashes(
        self, *, round_id: int | None = None, node: str | None = None, from_block: int | None = None
    ) -> list[SlashRecord]:
        """`NodeSlashed` events, filtered by round and/or node."""
        filters: dict[str, Any] = {}
        if round_id is not None:
            filters["roundId"] = round_id
        if node is not None:
            filters["node"] = checksum_address(node)
        return [
            SlashRecord(
                round_id=args["roundId"],
                node=to_checksum_address(args["node"]),
                amount=args["amount"],
                reason=args["reason"],
                evidence_hash=bytes(args["evidenceHash"]),
                remaining_stake=args["remainingStake"],
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("NodeSlashed", filters, from_block)
        ]

    def settlements(self, *, round_id: int | None = None, from_block: int | None = None) -> list[RoundSettlementRecord]:
        """`RoundSettled` events."""
        filters = {"roundId": round_id} if round_id is not None else {}
        return [
            RoundSettlementRecord(
                round_id=args["roundId"],
                settlement_hash=bytes(args["settlementHash"]),
                traces_root=bytes(args["tracesRoot"]),
                seed=bytes(args["seed"]),
                node_count=args["nodeCount"],
                total_samples=args["totalSamples"],
                total_payout=args["totalPayout"],
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("RoundSettled", filters, from_block)
        ]

    def round_openings(self, *, round_id: int | None = None, from_block: int | None = None) -> list[RoundOpening]:
        """`RoundOpened` events: every round the coordinator opened, with its model and seed commitment."""
        filters = {"roundId": round_id} if round_id is not None else {}
        return [
            RoundOpening(
                round_id=args["roundId"],
                model_hash=bytes(args["modelHash"]),
                seed_commitment=bytes(args["seedCommitment"]),
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("RoundOpened", filters, from_block)
        ]

    def round_metrics(self, *, round_id: int | None = None, from_block: int | None = None) -> list[RoundMetricsRecord]:
        """`RoundMetrics` events (one per settled round), fixed-point figures as floats."""
        filters = {"roundId": round_id} if round_id is not None else {}
        return [
            RoundMetricsRecord(
                round_id=args["roundId"],
                accepted=args["accepted"],
                rejected=args["rejected"],
                mean_reward=args["meanReward"] / SCORE_SCALE,
                held_out_accuracy=args["heldOutAccuracy"] / SCORE_SCALE,
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("RoundMetrics", filters, from_block)
        ]

    def claims(self, *, node: str | None = None, from_block: int | None = None) -> list[ClaimRecord]:
        """`RewardClaimed` events, optionally of one node."""
        filters = {"node": checksum_address(node)} if node is not None else {}
        return [
            ClaimRecord(
                node=to_checksum_address(args["node"]),
                recipient=to_checksum_address(args["recipient"]),
                amount=args["amount"],
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("RewardClaimed", filters, from_block)
        ]

    def registrations(self, *, from_block: int | None = None) -> list[NodeRegistration]:
        """`NodeRegistered` events: every node that ever joined, with the metadata it joined with."""
        return [
            NodeRegistration(
                node=to_checksum_address(args["node"]),
                ed25519_key=bytes(args["ed25519Key"]),
                peer_id=bytes(args["peerId"]),
                binding=bytes(args["binding"]),
                stake=args["stake"],
                strategy=args["strategy"],
                endpoint=args["endpoint"],
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("NodeRegistered", {}, from_block)
        ]

    def _logs(self, event: str, filters: dict[str, Any], from_block: int | None) -> list[tuple[Any, int, bytes]]:
        start = self._from_block if from_block is None else from_block
        with rpc_errors(self._rpc_url):
            logs = self._ledger.events[event]().get_logs(
                argument_filters=filters or None, from_block=start, to_block="latest"
            )
        ordered = sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))
        return [(log["args"], log["blockNumber"], bytes(log["transactionHash"])) for log in ordered]
