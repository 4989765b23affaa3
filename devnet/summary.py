"""What each devnet node earned, lost and claimed, read back from the chain (never from a daemon).

Per-node facts live in the ledger's events (`NodeCompensated`, `NodeSlashed`, `RewardClaimed`)
and its node records (stake, claimable), so the summary is what any third party replaying the
chain would compute. Amounts are integers in the reward token's smallest unit (18 decimals).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from thinkmesh.devnet.layout import NodeEntry
from thinkmesh.protocol.chain.ledger import TOKEN_DECIMALS


@dataclass(frozen=True)
class NodeSummary:
    name: str
    address: str
    strategy: str
    cheater: str | bool  # False, or the cheat mode
    verified_samples: int
    earned: int
    slashed: int
    claimed: int
    claimable: int
    stake: int

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DevnetSummary:
    """`rounds`: rounds this `up` ran; `settled_rounds`: every round settled on the ledger so far."""

    rounds: int
    settled_rounds: int
    ledger: str
    nodes: tuple[NodeSummary, ...]

    def to_json(self) -> str:
        """One line: the `--json` contract of `devnet up` (and `devnet status --json`'s `chain` part)."""
        return json.dumps({
            "rounds": self.rounds, "settled_rounds": self.settled_rounds, "ledger": self.ledger,
            "token_decimals": TOKEN_DECIMALS, "nodes": [node.as_json() for node in self.nodes],
        }, separators=(",", ":"))  # fmt: skip

    def table(self) -> str:
        """The human summary: one line per node, whole tokens with two decimals."""
        header = f"{'node':<22} {'strategy':<8} {'address':<42} {'samples':>7} {'earned':>10} {'slashed':>10} {'claimed':>10}"
        lines = [header]
        for node in self.nodes:
            label = node.name + (f" (cheats: {node.cheater})" if node.cheater else "")
            lines.append(
                f"{label:<22} {node.strategy:<8} {node.address:<42} {node.verified_samples:>7} "
                f"{format_tokens(node.earned):>10} {format_tokens(node.slashed):>10} {format_tokens(node.claimed):>10}"
            )
        return "\n".join(lines)


def format_tokens(amount: int) -> str:
    return f"{amount / 10**TOKEN_DECIMALS:.2f}"


def read_summary(client, nodes: Sequence[NodeEntry], rounds: int) -> DevnetSummary:
    """Sums each node's events on `client`'s ledger (a `protocol.chain.client.LedgerClient`, read-only is enough)."""
    compensations = client.events.compensations()
    slashes = client.events.slashes()
    claims = reward_claims(client)
    settled = {record.round_id for record in client.events.settlements()}
    summaries = []
    for entry in nodes:
        address = entry.address
        record = client.node(address)
        paid = [c for c in compensations if c.node == address]
        summaries.append(NodeSummary(
            name=entry.name, address=address, strategy=entry.strategy, cheater=entry.cheater or False,
            verified_samples=sum(c.verified_samples for c in paid), earned=sum(c.payout for c in paid),
            slashed=sum(s.amount for s in slashes if s.node == address), claimed=claims.get(address, 0),
            claimable=record.claimable, stake=record.stake,
        ))  # fmt: skip
    return DevnetSummary(rounds=rounds, settled_rounds=len(settled), ledger=client.deployment.ledger,
                         nodes=tuple(summaries))


def reward_claims(client) -> dict[str, int]:
    """Total `RewardClaimed` amount per node address (the claimer, not the recipient)."""
    totals: dict[str, int] = {}
    for claim in client.events.claims():  # a paged scan: public endpoints cap eth_getLogs ranges
        totals[claim.node] = totals.get(claim.node, 0) + claim.amount
    return totals
