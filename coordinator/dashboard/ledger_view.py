"""What the dashboard shows, computed from the chain's record alone.

`read_snapshot` gathers the ledger's events and views (I/O); `build_summary` turns them into the
leaderboard, rounds, slashing and strategy tables (pure, unit-tested). Nothing here trusts the
coordinator: every figure is recomputable by anyone with an RPC endpoint and the ledger address.

Identity: a node's Ed25519 key (hence its peer id) is what it *claimed* at registration; the chain
does not check the binding signatures. A row is `verified` when its registration's binding holds
and is the earliest one that does for that key (`ledger.bound_nodes`, the rule the coordinator pays
by); any other is shown `unverified`, with the reason, so a copied key never passes for its owner.

Strategy comparison: a round's held-out gain (its accuracy minus the previous round's) is shared
among the strategies in proportion to the verified samples each contributed to that round; a
strategy's figure is its summed share over its total verified samples. It is an attribution, not
a controlled experiment: it says which strategies were present when the model improved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from thinkmesh.protocol.rules.identity import peer_id_from_public_key
from thinkmesh.protocol.chain.ledger import (
    TOKEN_DECIMALS,
    ClaimRecord,
    Compensation,
    NodeRecord,
    NodeRegistration,
    RoundMetricsRecord,
    RoundRecord,
    RoundSettlementRecord,
    SlashReason,
    SlashRecord,
    bound_nodes,
)


@dataclass(frozen=True)
class LedgerSnapshot:
    chain_id: int
    ledger: str
    block: int
    token_symbol: str
    nodes: tuple[NodeRecord, ...]
    rounds: tuple[RoundRecord, ...]
    compensations: tuple[Compensation, ...]
    slashes: tuple[SlashRecord, ...]
    claims: tuple[ClaimRecord, ...]
    settlements: tuple[RoundSettlementRecord, ...]
    settle_gas: dict[int, int]  # round id -> gas used by its settlement transaction
    metrics: tuple[RoundMetricsRecord, ...] = ()
    registrations: tuple[NodeRegistration, ...] = ()  # NodeRegistered events: what the identity check reads


@dataclass(frozen=True)
class NodeRow:
    address: str
    peer_id: str
    strategy: str
    status: str
    stake: float
    verified_samples: int
    earned: float
    claimed: float
    claimable: float
    slashed: float
    identity: str = "unknown"  # "verified", "unverified", or "unknown" (no registration event read)
    identity_note: str = ""  # why a row is not verified


@dataclass(frozen=True)
class RoundRow:
    round_id: int
    status: str
    model_hash: str
    accepted: int | None
    rejected: int | None
    total_samples: int
    mean_reward: float | None
    held_out_accuracy: float | None
    total_payout: float
    total_slashed: float
    settle_gas: int | None
    traces_root: str


@dataclass(frozen=True)
class SlashRow:
    round_id: int
    node: str
    reason: str
    amount: float
    evidence_hash: str


@dataclass(frozen=True)
class StrategyRow:
    strategy: str
    nodes: int
    verified_samples: int
    earned: float
    gain_per_sample: float


@dataclass(frozen=True)
class Totals:
    nodes: int
    rounds_settled: int
    verified_samples: int
    earned: float
    claimed: float
    slashed: float


@dataclass(frozen=True)
class LedgerSummary:
    chain: dict
    token_symbol: str
    totals: Totals
    nodes: tuple[NodeRow, ...]
    rounds: tuple[RoundRow, ...]
    slashes: tuple[SlashRow, ...]
    strategies: tuple[StrategyRow, ...]

    def to_json(self) -> dict:
        return asdict(self)


def _units(amount: int) -> float:
    return amount / 10**TOKEN_DECIMALS


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _peer_id(node: NodeRecord) -> str:
    try:
        return node.peer_id.decode() if node.peer_id[:1].isalnum() else peer_id_from_public_key(node.ed25519_key)
    except (UnicodeDecodeError, ValueError):
        return peer_id_from_public_key(node.ed25519_key)


def _reason_name(code: int) -> str:
    try:
        return SlashReason(code).verdict_reason
    except ValueError:
        return f"code-{code}"


def identity_checks(registrations: Sequence[NodeRegistration]) -> dict[str, tuple[str, str]]:
    """Node address -> (identity, note) from its registration events; see the module docstring."""
    bound = bound_nodes(registrations)
    checks: dict[str, tuple[str, str]] = {}
    for reg in sorted(registrations, key=lambda r: r.block_number):  # a later registration of an address wins
        if not reg.binding_holds:
            checks[reg.node] = ("unverified", "the identity binding's signatures do not verify: the key is only claimed")
        elif bound[reg.ed25519_key].node != reg.node:
            checks[reg.node] = ("unverified", f"this key was bound earlier by {bound[reg.ed25519_key].node}")
        else:
            checks[reg.node] = ("verified", "")
    return checks


def build_summary(snap: LedgerSnapshot) -> LedgerSummary:
    samples: dict[str, int] = defaultdict(int)
    earned: dict[str, int] = defaultdict(int)
    slashed: dict[str, int] = defaultdict(int)
    claimed: dict[str, int] = defaultdict(int)
    for c in snap.compensations:
        samples[c.node] += c.verified_samples
        earned[c.node] += c.payout
    for s in snap.slashes:
        slashed[s.node] += s.amount
    for c in snap.claims:
        claimed[c.node] += c.amount

    identity = identity_checks(snap.registrations)
    nodes = tuple(sorted(
        (NodeRow(
            address=n.address, peer_id=_peer_id(n), strategy=n.strategy, status=n.status.name.lower(),
            stake=_units(n.stake), verified_samples=samples[n.address], earned=_units(earned[n.address]),
            claimed=_units(claimed[n.address]), claimable=_units(n.claimable), slashed=_units(slashed[n.address]),
            identity=identity.get(n.address, ("unknown", ""))[0], identity_note=identity.get(n.address, ("", ""))[1],
        ) for n in snap.nodes),
        key=lambda row: (-row.earned, row.address),
    ))

    metrics = {m.round_id: m for m in snap.metrics}
    rounds = tuple(
        RoundRow(
            round_id=r.round_id, status=r.status.name.lower(), model_hash=_hex(r.model_hash),
            accepted=metrics[r.round_id].accepted if r.round_id in metrics else None,
            rejected=metrics[r.round_id].rejected if r.round_id in metrics else None,
            total_samples=r.total_samples,
            mean_reward=metrics[r.round_id].mean_reward if r.round_id in metrics else None,
            held_out_accuracy=metrics[r.round_id].held_out_accuracy if r.round_id in metrics else None,
            total_payout=_units(r.total_payout), total_slashed=_units(r.total_slashed),
            settle_gas=snap.settle_gas.get(r.round_id), traces_root=_hex(r.traces_root),
        )
        for r in sorted(snap.rounds, key=lambda r: r.round_id)
    )
    slashes = tuple(
        SlashRow(round_id=s.round_id, node=s.node, reason=_reason_name(s.reason), amount=_units(s.amount),
                 evidence_hash=_hex(s.evidence_hash))
        for s in snap.slashes
    )
    totals = Totals(
        nodes=len(snap.nodes), rounds_settled=len(snap.settlements),
        verified_samples=sum(samples.values()), earned=_units(sum(earned.values())),
        claimed=_units(sum(claimed.values())), slashed=_units(sum(slashed.values())),
    )
    return LedgerSummary(
        chain={"chain_id": snap.chain_id, "ledger": snap.ledger, "block": snap.block},
        token_symbol=snap.token_symbol, totals=totals, nodes=nodes, rounds=rounds, slashes=slashes,
        strategies=strategy_comparison(snap.nodes, snap.compensations, snap.metrics),
    )


def strategy_comparison(
    nodes: Sequence[NodeRecord], compensations: Sequence[Compensation], metrics: Sequence[RoundMetricsRecord]
) -> tuple[StrategyRow, ...]:
    strategy_of = {n.address: n.strategy for n in nodes}
    by_round: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    total_samples: dict[str, int] = defaultdict(int)
    earned: dict[str, int] = defaultdict(int)
    members: dict[str, set[str]] = defaultdict(set)
    for c in compensations:
        strategy = strategy_of.get(c.node, "unknown")
        by_round[c.round_id][strategy] += c.verified_samples
        total_samples[strategy] += c.verified_samples
        earned[strategy] += c.payout
        members[strategy].add(c.node)
    gain: dict[str, float] = defaultdict(float)
    previous = None
    for m in sorted(metrics, key=lambda m: m.round_id):
        if previous is not None:
            delta = m.held_out_accuracy - previous
            round_samples = sum(by_round[m.round_id].values())
            for strategy, n in by_round[m.round_id].items():
                gain[strategy] += delta * n / round_samples if round_samples else 0.0
        previous = m.held_out_accuracy
    return tuple(
        StrategyRow(strategy=s, nodes=len(members[s]), verified_samples=total_samples[s], earned=_units(earned[s]),
                    gain_per_sample=gain[s] / total_samples[s] if total_samples[s] else 0.0)
        for s in sorted(total_samples)
    )
