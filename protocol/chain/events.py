"""Typed readers for the ledger's event log: the public record a dashboard or auditor replays.

Per-node, per-round facts (what each node earned, who was slashed and why) live only in events,
by design of the contract (it keeps settlement gas per node low), so these readers are the way
to see them. Each returns records in chain order.

Scans are paged: public RPC endpoints refuse an `eth_getLogs` over too many blocks (commonly 10,000,
some 2,000 or fewer) or with too many results, so a scan asks for at most `max_block_range` blocks
at a time, from the deployment block to the head read when the scan began, and halves the page
whenever the endpoint refuses one as too large (down to a single block, then the refusal is raised).
"""

from __future__ import annotations

import logging
from typing import Any

from eth_utils import to_checksum_address
from web3.exceptions import Web3RPCError

from thinkmesh.protocol.chain.errors import ChainError
from thinkmesh.protocol.chain.transactions import rpc_errors
from thinkmesh.protocol.chain.ledger import (
    ClaimRecord,
    Compensation,
    NodeRegistration,
    RoundMetricsRecord,
    RoundOpening,
    RoundSettlementRecord,
    SlashRecord,
    checksum_address,
)
from thinkmesh.protocol.rules.payout import SCORE_SCALE
from thinkmesh.protocol.chain.round_details import RoundDetailsRecord, StrategyValueRecord, kind_name

logger = logging.getLogger(__name__)

MAX_BLOCK_RANGE = 10_000  # blocks per eth_getLogs: the common public-RPC cap
# How endpoints word "this eth_getLogs asks for too much" (geth, erigon, Alchemy, Infura, QuickNode,
# Ankr, public nodes): a page that gets one of these is split, not raised.
_RANGE_REFUSALS = ("block range", "range is too", "range too", "too wide", "exceed maximum", "exceeds limit",
                   "exceeds the range", "query returned more than", "limited to", "response size", "range limit",
                   "max range", "maximum range")  # not "rate limit": a busy endpoint is not a range refusal


class LedgerEvents:
    """Event queries on one ledger contract, from its deployment block unless told otherwise."""

    def __init__(self, ledger: Any, rpc_url: str, *, from_block: int = 0, max_block_range: int = MAX_BLOCK_RANGE) -> None:
        if max_block_range < 1:
            raise ValueError(f"expected max_block_range >= 1, got {max_block_range}")
        self._ledger = ledger
        self._rpc_url = rpc_url
        self._from_block = from_block
        self.max_block_range = max_block_range

    def compensations(
        self, *, round_id: int | None = None, node: str | None = None, from_block: int | None = None
    ) -> list[Compensation]:
        """`NodeCompensated` events, filtered by round and/or node."""
        filters = _filters(round_id=round_id, node=node)
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
        filters = _filters(round_id=round_id, node=node)
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
        filters = _filters(round_id=round_id)
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
        filters = _filters(round_id=round_id)
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
        filters = _filters(round_id=round_id)
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

    def round_details(self, *, round_id: int | None = None, from_block: int | None = None) -> list[RoundDetailsRecord]:
        """`RoundDescribed` events (rounds settled with `settleRoundWithDetails`): kind, base model, pay rate."""
        filters = _filters(round_id=round_id)
        return [
            RoundDetailsRecord(
                round_id=args["roundId"],
                kind=kind_name(args["kind"]),
                base_model_hash=bytes(args["baseModelHash"]),
                reward_rate=args["rewardRate"],
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("RoundDescribed", filters, from_block)
        ]

    def strategy_values(
        self, *, round_id: int | None = None, from_block: int | None = None
    ) -> list[StrategyValueRecord]:
        """`StrategyValueRecorded` events: each round's contribution values per strategy, as floats."""
        filters = _filters(round_id=round_id)
        return [
            StrategyValueRecord(
                round_id=args["roundId"],
                strategy=args["strategy"],
                contributions=args["contributions"],
                mean_value=args["meanValue"] / SCORE_SCALE,
                value_sd=args["valueSd"] / SCORE_SCALE,
                block_number=block,
                tx_hash=tx_hash,
            )
            for args, block, tx_hash in self._logs("StrategyValueRecorded", filters, from_block)
        ]

    def claims(self, *, node: str | None = None, from_block: int | None = None) -> list[ClaimRecord]:
        """`RewardClaimed` events, optionally of one node."""
        filters = _filters(node=node)
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
            head = self._ledger.w3.eth.block_number
        logs: list[Any] = []
        page = self.max_block_range
        while start <= head:
            end = min(start + page - 1, head)
            try:
                with rpc_errors(self._rpc_url):
                    logs += self._ledger.events[event]().get_logs(
                        argument_filters=filters or None, from_block=start, to_block=end
                    )
            except Web3RPCError as exc:
                message = str(exc)
                if end == start or not any(marker in message.lower() for marker in _RANGE_REFUSALS):
                    raise ChainError(
                        f"expected the {event} logs of blocks {start}..{end} from {self._rpc_url}, "
                        f"the endpoint refused: {message[:300]}"
                    ) from exc
                page = max(1, (end - start + 1) // 2)
                logger.debug("%s refused %d blocks of %s logs; asking for %d at a time", self._rpc_url,
                             end - start + 1, event, page)
                continue
            start = end + 1
        ordered = sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))
        return [(log["args"], log["blockNumber"], bytes(log["transactionHash"])) for log in ordered]


def _filters(*, round_id: int | None = None, node: str | None = None) -> dict[str, Any]:
    """An event query's indexed-argument filters: the round and/or the node (checksummed), where given."""
    filters: dict[str, Any] = {}
    if round_id is not None:
        filters["roundId"] = round_id
    if node is not None:
        filters["node"] = checksum_address(node)
    return filters
