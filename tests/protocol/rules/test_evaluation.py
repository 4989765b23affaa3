"""The held-out evaluation's rules that need no model: its set, its streams, its settings."""

from __future__ import annotations

import pytest

from thinkmesh.protocol.rules.errors import TaskError
from thinkmesh.protocol.rules.evaluation import (
    EVAL_STREAM_KEY,
    HELDOUT_SEED_TEXT,
    EvalSettings,
    heldout_seed,
    heldout_tasks,
    sample_keys,
)
from thinkmesh.protocol.rules.sampling import row_key
from thinkmesh.protocol.rules.tasks import TaskSpec, generate_task, is_heldout

LINEAR_1 = TaskSpec("linear", 1)


def test_heldout_set_is_the_first_distinct_heldout_problems_under_the_seed():
    tasks = heldout_tasks(LINEAR_1, 40)
    assert tasks == heldout_tasks(LINEAR_1, 40)
    assert all(is_heldout(task) for task in tasks)
    assert len({task.question for task in tasks}) == 40
    expected, seen, index = [], set(), 0
    while len(expected) < 40:
        task = generate_task(LINEAR_1, heldout_seed(HELDOUT_SEED_TEXT), index)
        index += 1
        if is_heldout(task) and task.question not in seen:
            seen.add(task.question)
            expected.append(task)
    assert tasks == expected
    assert heldout_tasks(LINEAR_1, 10) == tasks[:10], "a smaller set is a prefix of a larger one"
    assert [t.question for t in heldout_tasks(LINEAR_1, 10, "other seed")] != [t.question for t in tasks[:10]]


def test_heldout_set_larger_than_the_heldout_side_is_refused():
    assert len(heldout_tasks(LINEAR_1, 150)) == 150  # all of linear-1's held-out problems
    with pytest.raises(TaskError, match="expected 151 distinct held-out problems, found 150"):
        heldout_tasks(LINEAR_1, 151)


def test_sampled_rows_draw_from_public_streams_of_the_heldout_seed():
    keys = sample_keys(HELDOUT_SEED_TEXT, 3, 2)
    seed = heldout_seed(HELDOUT_SEED_TEXT)
    assert keys == [row_key(seed, EVAL_STREAM_KEY, task, row) for task in range(3) for row in range(2)]
    assert len(set(keys)) == 6


@pytest.mark.parametrize("field, value", [("tasks", 0), ("max_new_tokens", 0), ("samples", -1), ("template", "chat")])
def test_settings_name_the_bad_field(field, value):
    with pytest.raises(TaskError, match=f"evaluation {field}"):
        EvalSettings(**{field: value})
