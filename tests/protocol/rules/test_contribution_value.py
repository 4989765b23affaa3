"""The contribution value's rules that need no model: its batch, baseline, estimate and interval."""

from __future__ import annotations

import math

import pytest

from thinkmesh.protocol.rules.contribution_value import (
    ContributionValueError,
    ValidationBatch,
    ValueSettings,
    leave_one_out,
    mean_and_interval,
    validation_tasks,
    valued_indices,
    value_of_logprobs,
)
from thinkmesh.protocol.rules.tasks import TaskSpec, is_heldout

LINEAR_1 = TaskSpec("linear", 1)
SEED = bytes(range(32))


def test_validation_batch_is_public_per_round_and_never_held_out():
    tasks = validation_tasks(LINEAR_1, SEED, 40)
    assert tasks == validation_tasks(LINEAR_1, SEED, 40)
    assert not any(is_heldout(task) for task in tasks)
    assert validation_tasks(LINEAR_1, SEED, 10) == tasks[:10]
    assert [t.question for t in validation_tasks(LINEAR_1, bytes(32), 10)] != [t.question for t in tasks[:10]]


def test_leave_one_out_baseline_worked_example():
    # group [1, 0, 0, 1]: each sample's baseline is the mean of the other three
    assert leave_one_out([1.0, 0.0, 0.0, 1.0], 4) == pytest.approx([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])
    assert leave_one_out([2.0, 2.0, 0.0, 1.0], 2) == pytest.approx([0.0, 0.0, -1.0, 1.0])


def _batch(advantages, logprobs):
    n = len(advantages)
    return ValidationBatch(((1,),) * n, ((2,),) * n, tuple(advantages), tuple(logprobs), 0.0)


def test_value_is_zero_for_an_unchanged_policy_and_signed_by_what_gains_mass():
    batch = _batch([0.5, -0.5], [-2.0, -3.0])
    assert value_of_logprobs(batch, [-2.0, -3.0]) == 0.0
    # the good sample gains a factor e, the bad one keeps its mass: (0.5 * (e - 1) + 0) / 2
    assert value_of_logprobs(batch, [-1.0, -3.0]) == pytest.approx(0.25 * (math.e - 1))
    assert value_of_logprobs(batch, [-2.0, -2.0]) == pytest.approx(-0.25 * (math.e - 1))
    with pytest.raises(ContributionValueError, match="expected 2 sequence logprobs, got 1"):
        value_of_logprobs(batch, [-1.0])


def test_settings_refuse_what_the_rule_cannot_compute():
    with pytest.raises(ContributionValueError, match="group"):
        ValueSettings(group=1)
    with pytest.raises(ContributionValueError, match="step"):
        ValueSettings(step=0.0)
    with pytest.raises(ContributionValueError, match="prompts"):
        ValueSettings(prompts=0)


def test_mean_and_interval():
    assert mean_and_interval([1.0]) == (1.0, 0.0)
    mean, half = mean_and_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(1.96 * statistics_sd([1.0, 2.0, 3.0, 4.0]) / 2)
    with pytest.raises(ContributionValueError):
        mean_and_interval([])


def test_valued_contributions_are_a_public_draw_bounded_by_the_limit():
    keys = [bytes([i]) * 32 for i in range(40)]
    chosen = valued_indices(SEED, keys, 16)
    assert len(chosen) == 16 and chosen == sorted(chosen) and chosen == valued_indices(SEED, keys, 16)
    assert valued_indices(SEED, keys[:5], 16) == [0, 1, 2, 3, 4]  # under the limit: every one
    assert valued_indices(bytes(32), keys, 16) != chosen  # another round, another draw
    shuffled = keys[::-1]  # the draw follows the keys, not the order of arrival
    assert sorted(shuffled[i] for i in valued_indices(SEED, shuffled, 16)) == sorted(keys[i] for i in chosen)
    with pytest.raises(ContributionValueError, match="limit"):
        valued_indices(SEED, keys, 0)


def statistics_sd(values):
    import statistics

    return statistics.stdev(values)
