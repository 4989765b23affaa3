"""A round's details as the chain carries them: per-strategy value summaries that pool exactly, and
the interval the dashboard draws from them."""

from __future__ import annotations

import random
import statistics

import pytest

from thinkmesh.protocol.chain.errors import LedgerRecordError
from thinkmesh.protocol.rules.contribution_value import mean_and_interval
from thinkmesh.protocol.chain.round_details import RoundDetails, kind_name, strategy_values
from thinkmesh.protocol.rules.value_summary import ValueSummary, ValueSummaryError


def test_summaries_of_rounds_pool_to_the_summary_of_all_their_values():
    rng = random.Random(7)
    rounds = [[rng.gauss(0.01, 0.05) for _ in range(rng.randint(1, 6))] for _ in range(20)]
    pooled = ValueSummary.pool(ValueSummary.of(values) for values in rounds)
    every = [v for values in rounds for v in values]
    assert pooled.count == len(every)
    assert pooled.mean == pytest.approx(statistics.fmean(every), abs=1e-12)
    assert pooled.sd == pytest.approx(statistics.stdev(every), rel=1e-9)
    assert (pooled.mean, pooled.half_width()) == pytest.approx(mean_and_interval(every))


def test_fixed_point_summaries_pool_to_within_the_grid():
    rng = random.Random(8)
    rounds = [[rng.gauss(0.0, 0.05) for _ in range(4)] for _ in range(25)]
    on_chain = [strategy_values(("dapo", v) for v in values)[0] for values in rounds]
    pooled = ValueSummary.pool(v.summary for v in on_chain)
    every = [v for values in rounds for v in values]
    assert pooled.mean == pytest.approx(statistics.fmean(every), abs=1e-6)
    assert pooled.sd == pytest.approx(statistics.stdev(every), abs=1e-5)


def test_one_value_has_no_interval_and_no_values_no_summary():
    assert ValueSummary.of([0.25]) == ValueSummary(1, 0.25, 0.0) and ValueSummary.of([0.25]).half_width() == 0.0
    with pytest.raises(ValueSummaryError):
        ValueSummary.pool([])


def test_strategy_values_group_by_strategy_in_name_order():
    values = strategy_values([("grpo", 0.5), ("dapo", 0.1), ("grpo", -0.5)])
    assert [(v.strategy, v.contributions, v.mean_value, v.value_sd) for v in values] == [
        ("dapo", 1, 100_000, 0), ("grpo", 2, 0, round(statistics.stdev([0.5, -0.5]) * 1_000_000))]
    assert strategy_values([]) == ()


def test_round_details_refuse_what_the_contract_would():
    assert kind_name(0) == "training" and kind_name(1) == "generation"
    with pytest.raises(LedgerRecordError):
        kind_name(2)
    with pytest.raises(LedgerRecordError, match="round kind"):
        RoundDetails(kind="inference")
    with pytest.raises(LedgerRecordError, match="base model hash"):
        RoundDetails(base_model_hash=b"\x01")
    twice = strategy_values([("grpo", 0.1)]) * 2
    with pytest.raises(LedgerRecordError, match="twice"):
        RoundDetails(values=twice)
