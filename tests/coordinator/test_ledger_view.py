"""The dashboard's arithmetic, on a hand-made ledger history."""

from thinkmesh.coordinator.dashboard.ledger_view import LedgerSnapshot, build_summary
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.chain.ledger import (
    ClaimRecord,
    Compensation,
    NodeRecord,
    NodeStatus,
    RoundMetricsRecord,
    RoundRecord,
    RoundSettlementRecord,
    RoundStatus,
    SlashRecord,
)

E18 = 10**18
A, B, C = ("0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40)
KEYS = {addr: NodeIdentity.from_seed(bytes([i + 1]) * 32) for i, addr in enumerate((A, B, C))}


def node(address: str, strategy: str, stake: int, claimable: int = 0) -> NodeRecord:
    key = KEYS[address]
    return NodeRecord(address, NodeStatus.ACTIVE, stake, claimable, 0, 1, key.public_key,
                      key.peer_id.encode(), strategy, "")


def round_record(round_id: int, payout: int, slashed: int = 0) -> RoundRecord:
    return RoundRecord(round_id, RoundStatus.SETTLED, 1, 2, 2, 0, payout, slashed, b"\x01" * 32,
                       b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, b"\x05" * 32)


def comp(round_id: int, who: str, samples: int, payout: int) -> Compensation:
    return Compensation(round_id, who, samples, 0, payout, 10 + round_id, b"\x00" * 32)


SNAPSHOT = LedgerSnapshot(
    chain_id=31337, ledger="0x" + "1" * 40, block=99, token_symbol="THINK",
    nodes=(node(A, "dapo", 100 * E18, claimable=5 * E18), node(B, "grpo", 100 * E18), node(C, "gspo", 50 * E18)),
    rounds=(round_record(1, 10 * E18), round_record(2, 10 * E18, slashed=50 * E18)),
    compensations=(comp(1, A, 30, 6 * E18), comp(1, B, 20, 4 * E18), comp(2, A, 10, 5 * E18), comp(2, B, 10, 5 * E18)),
    slashes=(SlashRecord(2, C, 50 * E18, 9, b"\xee" * 32, 0, 12, b"\x00" * 32),),
    claims=(ClaimRecord(A, A, 6 * E18, 13, b"\x00" * 32),),
    settlements=(RoundSettlementRecord(1, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, 2, 50, 10 * E18, 11, b"\x01" * 32),
                 RoundSettlementRecord(2, b"\x00" * 32, b"\x00" * 32, b"\x00" * 32, 2, 20, 10 * E18, 12, b"\x02" * 32)),
    settle_gas={1: 120_000, 2: 118_000},
    metrics=(RoundMetricsRecord(1, 2, 0, 0.4, 0.30, 11, b"\x01" * 32), RoundMetricsRecord(2, 2, 1, 0.5, 0.40, 12, b"\x02" * 32)),
)


def test_leaderboard_sums_each_nodes_events_and_sorts_by_earnings():
    summary = build_summary(SNAPSHOT)
    rows = {row.address: row for row in summary.nodes}
    assert [row.address for row in summary.nodes] == [A, B, C]
    assert (rows[A].verified_samples, rows[A].earned, rows[A].claimed, rows[A].claimable) == (40, 11.0, 6.0, 5.0)
    assert (rows[B].earned, rows[B].claimed, rows[B].slashed) == (9.0, 0.0, 0.0)
    assert (rows[C].earned, rows[C].slashed) == (0.0, 50.0)
    assert rows[A].peer_id == KEYS[A].peer_id


def test_totals_rounds_and_slashes():
    summary = build_summary(SNAPSHOT)
    assert summary.totals.rounds_settled == 2
    assert (summary.totals.earned, summary.totals.claimed, summary.totals.slashed) == (20.0, 6.0, 50.0)
    assert summary.totals.verified_samples == 70
    r2 = summary.rounds[1]
    assert (r2.round_id, r2.accepted, r2.rejected, r2.held_out_accuracy, r2.settle_gas) == (2, 2, 1, 0.40, 118_000)
    assert summary.slashes[0].reason != "" and summary.slashes[0].evidence_hash == "0x" + "ee" * 32


def test_strategy_gain_is_shared_by_verified_samples_in_the_round_that_improved():
    strategies = {row.strategy: row for row in build_summary(SNAPSHOT).strategies}
    # round 2 improved held-out accuracy by 0.10; A (dapo) and B (grpo) gave 10 samples each
    assert abs(strategies["dapo"].gain_per_sample - 0.05 / 40) < 1e-12
    assert abs(strategies["grpo"].gain_per_sample - 0.05 / 30) < 1e-12
    assert "gspo" not in strategies  # a node that was never paid contributed no verified samples


def test_summary_serialises_to_plain_json():
    import json

    doc = json.loads(json.dumps(build_summary(SNAPSHOT).to_json()))
    assert set(doc) == {"chain", "token_symbol", "totals", "nodes", "rounds", "slashes", "strategies"}
