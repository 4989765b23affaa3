"""The dashboard's arithmetic, on a hand-made ledger history."""

import dataclasses
import statistics

import pytest

from thinkmesh.coordinator.dashboard.ledger_view import ADAPTER_NOT_SERVED, SERVING_UNKNOWN, LedgerSnapshot, build_summary
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
from thinkmesh.protocol.rules.receipts import ServerAnnouncement
from thinkmesh.protocol.chain.round_details import RoundDetailsRecord, StrategyValueRecord

E18 = 10**18
A, B, C = ("0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40)
KEYS = {addr: NodeIdentity.from_seed(bytes([i + 1]) * 32) for i, addr in enumerate((A, B, C))}


def node(address: str, strategy: str, stake: int, claimable: int = 0) -> NodeRecord:
    key = KEYS[address]
    return NodeRecord(address, NodeStatus.ACTIVE, stake, claimable, 0, 1, key.public_key,
                      key.peer_id.encode(), strategy, "")


def round_record(round_id: int, payout: int, slashed: int = 0, samples: int = 0, model: bytes = b"\x01" * 32,
                 status: RoundStatus = RoundStatus.SETTLED) -> RoundRecord:
    return RoundRecord(round_id, status, 1, 2, 2, samples, payout, slashed, model,
                       b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, b"\x05" * 32)


def value(round_id: int, strategy: str, values: list[float]) -> StrategyValueRecord:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return StrategyValueRecord(round_id, strategy, len(values), statistics.fmean(values), sd, 10 + round_id, b"\x00" * 32)


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


DAPO = {1: [0.02, -0.01, 0.03], 2: [0.01, 0.05]}
GRPO = {1: [-0.02], 2: [0.0, -0.04, 0.01]}
VALUES = (*(value(r, "dapo", v) for r, v in DAPO.items()), *(value(r, "grpo", v) for r, v in GRPO.items()),
          value(2, "gspo", [0.07]))


def test_strategies_show_their_values_pooled_over_rounds_with_a_95_percent_interval():
    rows = {row.strategy: row for row in build_summary(dataclasses.replace(SNAPSHOT, strategy_values=VALUES)).strategies}
    assert list(rows) == ["dapo", "grpo", "gspo"]
    for name, per_round in (("dapo", DAPO), ("grpo", GRPO)):
        every = [v for values in per_round.values() for v in values]
        row = rows[name]
        assert (row.rounds, row.contributions) == (2, len(every))
        assert row.mean_value == pytest.approx(statistics.fmean(every))
        half = 1.96 * statistics.stdev(every) / len(every) ** 0.5
        assert (row.ci_low, row.ci_high) == pytest.approx((row.mean_value - half, row.mean_value + half))
    assert rows["gspo"].contributions == 1 and rows["gspo"].ci_low is None  # one value: no interval
    assert build_summary(SNAPSHOT).strategies == ()  # no values on chain: nothing to compare, nothing invented


def test_rounds_show_their_kind_and_pay_rate_where_the_chain_has_them():
    details = (RoundDetailsRecord(1, "training", b"\x00" * 32, 8 * E18 // 100, 11, b"\x01" * 32),
               RoundDetailsRecord(2, "generation", b"\x00" * 32, 2 * E18 // 100, 12, b"\x02" * 32))
    rounds = build_summary(dataclasses.replace(SNAPSHOT, details=details)).rounds
    assert [(r.kind, r.reward_rate, r.base_model_hash) for r in rounds] == [("training", 0.08, None),
                                                                            ("generation", 0.02, None)]
    assert [r.kind for r in build_summary(SNAPSHOT).rounds] == [None, None]  # settled before details existed


V1, V2, BASE = b"\xa1" * 32, b"\xa2" * 32, b"\xba" * 32


def versioned_snapshot() -> LedgerSnapshot:
    """Rounds 1-2 train on V1, 3 generates on V2, 4 (open) trains on V2; 5 is an adapter round on BASE."""
    rounds = (round_record(1, 0, samples=16, model=V1), round_record(2, 0, samples=8, model=V1),
              round_record(3, 0, samples=5, model=V2), round_record(4, 0, samples=3, model=V2, status=RoundStatus.OPEN),
              round_record(5, 0, samples=7, model=V2))
    kinds = {1: "training", 2: "training", 3: "generation", 5: "training"}
    details = tuple(RoundDetailsRecord(r, kind, BASE if r == 5 else b"\x00" * 32, 1, 10 + r, b"\x00" * 32)
                    for r, kind in kinds.items())
    return dataclasses.replace(SNAPSHOT, rounds=rounds, details=details)


def test_versions_list_their_rounds_and_accepted_traces_and_an_adapter_version_is_base_plus_adapter():
    summary = build_summary(versioned_snapshot())
    rows = [(v.base_model_hash, v.model_hash, v.first_round, v.last_round, v.training_rounds, v.generation_rounds,
             v.accepted_traces) for v in summary.versions]
    assert rows == [
        (None, "0x" + V1.hex(), 1, 2, 2, 0, 24),
        (None, "0x" + V2.hex(), 3, 4, 0, 1, 5),  # round 4 is open: its samples are not accepted yet
        ("0x" + BASE.hex(), "0x" + V2.hex(), 5, 5, 1, 0, 7),  # the same adapter on a base is another version
    ]
    assert all(v.servers is None for v in summary.versions) and summary.serving == SERVING_UNKNOWN


def test_serving_nodes_are_shown_where_a_lookup_found_them():
    record = ServerAnnouncement(b"\x07" * 32, V2, "http://10.0.0.7:8000", 1_900_000_000_000)
    summary = build_summary(versioned_snapshot(), {V1: [], V2: [record]}, "found in the DHT")
    v1, v2, adapter = summary.versions
    assert v1.servers == () and summary.serving == "found in the DHT"
    (server,) = v2.servers
    assert (server.server_key, server.url, server.expires_ms) == ("0x" + "07" * 32, record.url, record.expires_ms)
    assert adapter.servers is None and adapter.servers_note == ADAPTER_NOT_SERVED


def test_summary_serialises_to_plain_json():
    import json

    doc = json.loads(json.dumps(build_summary(dataclasses.replace(SNAPSHOT, strategy_values=VALUES)).to_json()))
    assert set(doc) == {"chain", "token_symbol", "totals", "nodes", "rounds", "slashes", "strategies", "versions",
                        "serving"}
