"""What the dashboard shows, computed from the chain's record alone.

`read_snapshot` gathers the ledger's events and views (I/O); `build_summary` turns them into the
leaderboard, rounds, slashing and strategy tables (pure, unit-tested). Nothing here trusts the
coordinator: every figure is recomputable by anyone with an RPC endpoint and the ledger address.

Identity: a node's Ed25519 key (hence its peer id) is what it *claimed* at registration; the chain
does not check the binding signatures. A row is `verified` when its registration's binding holds
and is the earliest one that does for that key (`ledger.bound_nodes`, the rule the coordinator pays
by); any other is shown `unverified`, with the reason, so a copied key never passes for its owner.

Rounds and versions: a round's kind (training or generation), its pay rate and an adapter round's
base come from its `RoundDescribed` event (rounds settled before it existed show no kind). A model
version is the model hash a round opened with (`RoundOpened`), with the base hash in adapter rounds
(version = base + adapter); its accepted traces are the verified samples of its settled rounds, each
one a trace under a round's Merkle root. Serving nodes are not on chain: they are shown where a
lookup found them (`build_summary(servers=...)`, the dashboard's `--find-servers`), else marked
unknown.

Strategy comparison: each strategy's contribution values (`StrategyValueRecorded`: count, mean and
sd per round, `protocol/chain/round_details.py`) pooled over every round into one mean with its 95%
normal-approximation interval. Values within a round share a validation batch; the pooled interval
ignores that pairing (and the rounds' differences), so it is on the wide side: overlapping
intervals mean the chain does not tell those strategies apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

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
    SlashRecord,
    bound_nodes,
)
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.chain.round_details import (
    ZERO_HASH,
    RoundDetailsRecord,
    StrategyValueRecord,
)
from thinkmesh.protocol.rules.value_summary import ValueSummary

if TYPE_CHECKING:  # the receipts module pulls torch, which the dashboard does not need
    from thinkmesh.protocol.rules.receipts import ServerAnnouncement


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
    details: tuple[RoundDetailsRecord, ...] = ()  # RoundDescribed events
    strategy_values: tuple[StrategyValueRecord, ...] = ()  # StrategyValueRecorded events


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
    kind: str | None = None  # "training" / "generation"; None: settled without details, or not settled
    base_model_hash: str | None = None  # adapter rounds: the frozen base
    reward_rate: float | None = None  # tokens per verified prompt (training) or per accepted trace (generation)


@dataclass(frozen=True)
class SlashRow:
    round_id: int
    node: str
    reason: str
    amount: float
    evidence_hash: str


@dataclass(frozen=True)
class ServerRow:
    """A `thinkmesh serve` record found for a version: a signed claim, checked when answers are."""

    server_key: str
    url: str
    expires_ms: int


@dataclass(frozen=True)
class VersionRow:
    model_hash: str  # what rounds opened with (the adapter's hash in adapter rounds)
    base_model_hash: str | None  # adapter rounds: the frozen base (version = base + adapter)
    first_round: int
    last_round: int
    training_rounds: int
    generation_rounds: int
    accepted_traces: int  # verified samples of its settled rounds: traces under their Merkle roots
    servers: tuple[ServerRow, ...] | None  # None: not known (not looked up, or not findable)
    servers_note: str = ""


@dataclass(frozen=True)
class StrategyRow:
    """One strategy's contribution values over every round: mean with its 95% interval (reward units)."""

    strategy: str
    rounds: int
    contributions: int
    mean_value: float
    value_sd: float
    ci_low: float | None  # None with a single value: no interval
    ci_high: float | None


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
    versions: tuple[VersionRow, ...] = ()
    serving: str = ""  # how serving nodes were found, or why they are not shown

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


SERVING_UNKNOWN = "not looked up: serving nodes are not on chain (start the dashboard with --find-servers to look them up in the DHT)"
ADAPTER_NOT_SERVED = "not looked up: thinkmesh serve announces whole models, an adapter version has no such hash"


def build_summary(snap: LedgerSnapshot, servers: Mapping[bytes, Sequence[ServerAnnouncement]] | None = None,
                  serving: str = SERVING_UNKNOWN) -> LedgerSummary:
    """The dashboard's tables. `servers`: what a lookup found per model hash (None: no lookup), and
    `serving` says how they were found or why not."""
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
    details = {d.round_id: d for d in snap.details}
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
            kind=details[r.round_id].kind if r.round_id in details else None,
            base_model_hash=_base_hex(details.get(r.round_id)),
            reward_rate=_units(details[r.round_id].reward_rate) if r.round_id in details else None,
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
        strategies=strategy_comparison(snap.strategy_values), versions=model_versions(rounds, servers),
        serving=serving,
    )


def _base_hex(details: RoundDetailsRecord | None) -> str | None:
    return None if details is None or details.base_model_hash == ZERO_HASH else _hex(details.base_model_hash)


def model_versions(rounds: Sequence[RoundRow], servers: Mapping[bytes, Sequence[ServerAnnouncement]] | None
                   ) -> tuple[VersionRow, ...]:
    """One row per (base, model hash) the rounds opened with, in order of first use."""
    grouped: dict[tuple[str | None, str], list[RoundRow]] = {}
    for r in rounds:
        grouped.setdefault((r.base_model_hash, r.model_hash), []).append(r)
    versions = []
    for (base, model), members in grouped.items():
        found: tuple[ServerRow, ...] | None = None
        note = ""
        if base is not None:
            note = ADAPTER_NOT_SERVED
        elif servers is not None:
            found = tuple(ServerRow("0x" + bytes(a.server_key).hex(), a.url, a.expires_ms)
                          for a in servers.get(bytes.fromhex(model[2:]), ()))
        versions.append(VersionRow(
            model_hash=model, base_model_hash=base, first_round=members[0].round_id, last_round=members[-1].round_id,
            training_rounds=sum(1 for r in members if r.kind == "training"),
            generation_rounds=sum(1 for r in members if r.kind == "generation"),
            accepted_traces=sum(r.total_samples for r in members if r.status == "settled"),
            servers=found, servers_note=note,
        ))
    return tuple(versions)


def strategy_comparison(values: Sequence[StrategyValueRecord]) -> tuple[StrategyRow, ...]:
    """Each strategy's values pooled over every round (`ValueSummary.pool`), with a 95% interval."""
    by_strategy: dict[str, list[StrategyValueRecord]] = defaultdict(list)
    for record in values:
        by_strategy[record.strategy].append(record)
    rows = []
    for strategy in sorted(by_strategy):
        records = by_strategy[strategy]
        pooled = ValueSummary.pool(r.summary for r in records)
        half = pooled.half_width() if pooled.count > 1 else None
        rows.append(StrategyRow(
            strategy=strategy, rounds=len({r.round_id for r in records}), contributions=pooled.count,
            mean_value=pooled.mean, value_sd=pooled.sd,
            ci_low=None if half is None else pooled.mean - half, ci_high=None if half is None else pooled.mean + half,
        ))
    return tuple(rows)
