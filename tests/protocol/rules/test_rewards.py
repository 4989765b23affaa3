"""Rule-based rewards: worked examples per component, reward-hacking attempts, and properties."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinkmesh.protocol.rules.errors import ProtocolError, TaskError
from thinkmesh.protocol.rules.rewards import (
    MAX_ANSWER_CHARS,
    MAX_EXPRESSION_DEPTH,
    ExpressionError,
    RewardBreakdown,
    RewardConfig,
    RewardError,
    accuracy_reward,
    differing_components,
    evaluate_expression,
    extract_answer,
    format_reward,
    language_reward,
    length_reward,
    reference_completion,
    score_completion,
    total_reward,
)
from thinkmesh.protocol.rules.tasks import FAMILIES, Task, TaskSpec, generate_task

ARITHMETIC = Task(family="arithmetic", difficulty=1, index=0, question="What is 3+4?", answer="7")
ZERO = Task(family="arithmetic", difficulty=1, index=0, question="What is 4-4?", answer="0")
LINEAR = Task(family="linear", difficulty=2, index=0, question="Solve 2*x+9=3 for x.", answer="-3")
COUNTDOWN = Task("countdown", 3, 0, "...", answer="58", numbers=(25, 7, 3, 4), target=58)
SUBSET = Task("countdown", 3, 0, "...", answer="50", numbers=(10, 5, 2, 3), target=50)


def answered(answer: str, think: str = "reasoning") -> str:
    return f"<think>{think}</think> <answer>{answer}</answer>"


# --- extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think> <answer> 7 </answer>", "7"),
        ("<think>a</think>\n<answer>\n7\n</answer>\n", "7"),
        ("no tags, the answer is 7", None),
        ("<answer>7</answer>", "7"),  # format is judged by format_reward, not here
        ("<think>a</think> <answer>7</answer> <answer>8</answer>", None),
        ("<think>a</think> <answer>7</answer></answer>", None),
        ("<think>the answer is <answer>7</answer></think>", None),  # hidden inside reasoning
        ("<think>unclosed <answer>7</answer>", None),
        ("<answer>7</answer><think>more thinking</think>", None),
        ("</answer>7<answer>", None),
        ("<think>a</think> <ANSWER>7</ANSWER>", None),
        ("<think>a</think> <answer>" + "7" * (MAX_ANSWER_CHARS + 1) + "</answer>", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


# --- accuracy: integers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "answer", "expected"),
    [
        (ARITHMETIC, "7", 1.0), (ARITHMETIC, "  7\t", 1.0), (ARITHMETIC, "007", 1.0),
        (ARITHMETIC, "+7", 1.0), (ARITHMETIC, "8", 0.0), (ARITHMETIC, "7.0", 0.0),
        (ARITHMETIC, "seven", 0.0), (ARITHMETIC, "7 7", 0.0),
        (ARITHMETIC, "x = 7", 0.0), (ARITHMETIC, "3+4", 0.0), (ARITHMETIC, "", 0.0),
        (ARITHMETIC, "\u0667", 0.0),  # ARABIC-INDIC DIGIT SEVEN: int() would accept it
        (ARITHMETIC, "\uff17", 0.0),  # FULLWIDTH DIGIT SEVEN
        (ARITHMETIC, "\u00a07", 0.0),  # a no-break space is not ASCII whitespace
        (ZERO, "0", 1.0), (ZERO, "-0", 1.0), (ZERO, "000", 1.0),
        (LINEAR, "-3", 1.0), (LINEAR, "x = -3", 1.0), (LINEAR, "x=-003", 1.0), (LINEAR, "3", 0.0),
        (LINEAR, "y = -3", 0.0), (LINEAR, "x = -3 = -3", 0.0),
    ],
)
def test_integer_accuracy(task, answer, expected):
    assert accuracy_reward(task, answered(answer)) == expected


# --- accuracy: countdown ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "answer", "expected"),
    [
        (COUNTDOWN, "(25-7)*3+4", 1.0),
        (COUNTDOWN, " ( 25 - 7 ) * 3 + 4 ", 1.0),
        (COUNTDOWN, "(25-7)*3+4 = 58", 1.0),
        (COUNTDOWN, "4+3*(25-7)", 1.0),
        (COUNTDOWN, "(25-7)*3+4 = 59", 0.0),  # a false claim about its own value
        (COUNTDOWN, "(25-7)*3+4 = 58 = 58", 0.0),
        (COUNTDOWN, "58", 0.0),  # the target itself is not a given number
        (COUNTDOWN, "(25-7)*3+4+4-4", 0.0),  # a number used twice
        (COUNTDOWN, "(25-7)*3+4+0", 0.0),  # a number not given
        (COUNTDOWN, "(25-7)*3+4*1", 0.0),
        (COUNTDOWN, "-(7-25)*3+4", 0.0),  # no unary minus
        (COUNTDOWN, "(25-7)*3+2**2", 0.0),
        (COUNTDOWN, "(25-7)\u00d73+4", 0.0),  # MULTIPLICATION SIGN is not *
        (COUNTDOWN, "(\u0662\u0665-7)*3+4", 0.0),  # Arabic-Indic 25
        (COUNTDOWN, "__import__('os').system('true')", 0.0),
        (COUNTDOWN, "(25-7)*3+4)", 0.0),
        (COUNTDOWN, "((25-7)*3+4", 0.0),
        (SUBSET, "10*5", 0.0),  # TinyZero's rule: every number exactly once, not at most once
        (SUBSET, "10*5*(3-2)", 1.0),
        (Task("countdown", 2, 0, "...", "1", numbers=(1, 3, 3), target=1), "1/3*3", 1.0),  # rationals
        (Task("countdown", 3, 0, "...", "50", numbers=(10, 5, 2, 2), target=50), "10*5+2/(2-2)", 0.0),
    ],
)
def test_countdown_accuracy(task, answer, expected):
    assert accuracy_reward(task, answered(answer)) == expected


def test_evaluate_expression_values_and_numbers():
    assert evaluate_expression("(25-7)*3+4") == (Fraction(58), (25, 7, 3, 4))
    assert evaluate_expression("7/2") == (Fraction(7, 2), (7, 2))
    assert evaluate_expression("8-2-1")[0] == 5 and evaluate_expression("8/2/2")[0] == 2  # left-assoc
    assert evaluate_expression("2+3*4")[0] == 14


@pytest.mark.parametrize(
    ("text", "message"),
    [("1/0", "division by zero"), ("1/(2-2)", "division by zero"), ("1+", "end"), ("(1", "end"),
     ("1 2", "end of the expression"), ("1$2", "got '\\$'"), ("", "end"), ("*3", "number or")],
)
def test_evaluate_expression_rejects_with_a_reason(text, message):
    with pytest.raises(ExpressionError, match=message):
        evaluate_expression(text)


def test_expression_nesting_is_capped():
    nested = lambda depth: "(" * depth + "25-7" + ")" * depth + "*3+4"  # noqa: E731
    assert accuracy_reward(COUNTDOWN, answered(nested(10))) == 1.0
    assert accuracy_reward(COUNTDOWN, answered(nested(MAX_EXPRESSION_DEPTH + 1))) == 0.0
    with pytest.raises(ExpressionError, match="nested"):
        evaluate_expression("(" * 100 + "1" + ")" * 100)
    with pytest.raises(ExpressionError, match="characters"):
        evaluate_expression("1+" * 200 + "1")


# --- reward hacking -----------------------------------------------------------------------------


def test_answer_hidden_in_reasoning_scores_zero():
    hidden = "<think>it is 58: <answer>(25-7)*3+4</answer></think>"
    assert accuracy_reward(COUNTDOWN, hidden) == 0.0
    assert accuracy_reward(ARITHMETIC, "<think>the answer is 7</think> <answer></answer>") == 0.0


def test_several_answers_score_zero_even_if_one_is_right():
    spray = "<think>guess</think> " + " ".join(f"<answer>{n}</answer>" for n in range(10))
    assert accuracy_reward(ARITHMETIC, spray) == 0.0
    assert score_completion(ARITHMETIC, spray, 10, 100).format == 0.0


@pytest.mark.timeout(10)
def test_a_megabyte_completion_is_cheap_and_earns_nothing():
    megabyte = "<think>" + "9" * 1_000_000 + "</think> <answer>7</answer>"
    start = time.perf_counter()
    breakdown = score_completion(ARITHMETIC, megabyte, num_tokens=100, max_tokens=100)
    flood = answered("(" * 1_000_000)
    assert accuracy_reward(COUNTDOWN, flood) == 0.0
    assert accuracy_reward(COUNTDOWN, answered("25+7+3+4" * 200_000)) == 0.0
    assert language_reward(ARITHMETIC, "\u4e2d" * 1_000_000) == 0.0
    assert time.perf_counter() - start < 2.0
    assert breakdown == RewardBreakdown(accuracy=0.0, format=0.0, language=0.0, length=0.0)
    assert accuracy_reward(ARITHMETIC, megabyte) == 1.0  # uncapped alone: the cap is score_completion's


def test_completion_cap_is_configurable():
    completion = answered("7")
    tight = RewardConfig(max_completion_chars=len(completion) - 1)
    assert score_completion(ARITHMETIC, completion, 5, 10, config=tight).accuracy == 0.0
    assert score_completion(ARITHMETIC, completion, 5, 10).accuracy == 1.0


# --- format -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>a</think><answer>7</answer>", 1.0),
        ("  <think>a</think> \n <answer>7</answer>\n", 1.0),
        ("<think></think><answer></answer>", 1.0),  # structure only; content is accuracy's job
        ("<answer>7</answer>", 0.0),
        ("<think>a</think>", 0.0),
        ("<answer>7</answer><think>a</think>", 0.0),
        ("<think>a</think> so <answer>7</answer>", 0.0),
        ("Sure! <think>a</think><answer>7</answer>", 0.0),
        ("<think>a</think><answer>7</answer> done", 0.0),
        ("<think>a<think>b</think><answer>7</answer>", 0.0),
        ("<think>a</think><answer>7</answer><answer>7</answer>", 0.0),
        ("<think>a<answer>7</think></answer>", 0.0),
        ("<think>a</think>\u3000<answer>7</answer>", 0.0),  # ideographic space is not ASCII whitespace
        ("<Think>a</Think><answer>7</answer>", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


# --- language -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (answered("7", think="add three and four"), 1.0),
        (answered("7", think="3+4=7"), 1.0),  # no letters: nothing inconsistent
        (answered("7", think="\u4e09\u52a0\u56db"), 0.0),  # Chinese
        (answered("7", think="\u0442\u0440\u0438 plus four"), 8 / 11),  # 3 Cyrillic, 8 Latin letters
        (answered("7", think="caf\u00e9 \u2211 \u00d7 \u2192 \U0001f600 \u00b2"), 1.0),  # symbols are neutral
        (answered("\u4e03", think="seven"), 1.0),  # only the reasoning counts
        ("no tags at all, \u4e03", 11 / 12),  # without a think block the whole text is reasoning
    ],
)
def test_language_reward(completion, expected):
    assert language_reward(ARITHMETIC, completion) == pytest.approx(expected)


# --- length -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_tokens", "max_tokens", "buffer", "expected"),
    [(0, 100, 20, 0.0), (80, 100, 20, 0.0), (81, 100, 20, -0.05), (90, 100, 20, -0.5),
     (100, 100, 20, -1.0), (101, 100, 20, -1.0), (100, 100, 0, 0.0), (101, 100, 0, -1.0),
     (1, 100, 100, -0.01)],
)
def test_length_reward_is_dapo_soft_overlong_punishment(num_tokens, max_tokens, buffer, expected):
    assert length_reward(num_tokens, max_tokens, buffer) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("num_tokens", "max_tokens", "buffer"),
    [(-1, 100, 0), (10, 0, 0), (10, 100, -1), (10, 100, 101), (1.5, 100, 0), (True, 100, 0)],
)
def test_length_reward_rejects_bad_settings(num_tokens, max_tokens, buffer):
    with pytest.raises(RewardError):
        length_reward(num_tokens, max_tokens, buffer)


# --- totals, config, evidence -------------------------------------------------------------------


def test_total_reward_is_the_weighted_sum():
    breakdown = RewardBreakdown(accuracy=1.0, format=1.0, language=0.5, length=-0.25)
    assert total_reward(breakdown) == pytest.approx(1.0 + 0.2 + 0.05 - 0.25)
    custom = RewardConfig(accuracy_weight=2.0, format_weight=0.0, language_weight=1.0, length_weight=0.5)
    assert total_reward(breakdown, custom) == pytest.approx(2.0 + 0.5 - 0.125)


@pytest.mark.parametrize(
    "kwargs", [{"accuracy_weight": float("nan")}, {"length_weight": float("inf")}, {"format_weight": "1"},
               {"max_completion_chars": 0}, {"max_completion_chars": 1.5}],
)
def test_reward_config_rejects_bad_values(kwargs):
    with pytest.raises(RewardError):
        RewardConfig(**kwargs)
    assert issubclass(RewardError, ProtocolError)


def test_differing_components_names_the_rules_that_disagree():
    claimed = RewardBreakdown(accuracy=1.0, format=1.0, language=1.0, length=0.0)
    recomputed = RewardBreakdown(accuracy=0.0, format=1.0, language=0.9, length=0.0)
    assert differing_components(claimed, recomputed) == ("accuracy", "language")
    assert differing_components(claimed, claimed) == ()
    nan = RewardBreakdown(accuracy=float("nan"), format=1.0, language=1.0, length=0.0)
    assert differing_components(nan, claimed) == ("accuracy",)


def test_unknown_family_is_a_task_error():
    with pytest.raises(TaskError):
        accuracy_reward(Task("poetry", 1, 0, "?", "x"), answered("x"))


# --- generated tasks end to end -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_completions_of_generated_tasks_score_full_marks(family):
    for difficulty in range(1, 6):
        for index in range(40):
            task = generate_task(TaskSpec(family, difficulty), b"reference", index)
            completion = reference_completion(task)
            assert score_completion(task, completion, 50, 100) == RewardBreakdown(1.0, 1.0, 1.0, 0.0)
            wrong = completion.replace(f"<answer>{task.solution}", f"<answer>{task.solution}1")
            assert accuracy_reward(task, wrong) == 0.0


def test_reference_completion_needs_a_generated_task():
    with pytest.raises(TaskError):
        reference_completion(ARITHMETIC)


# --- properties ---------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    ["<think>", "</think>", "<answer>", "</answer>", "7", "58", "x =", "(25-7)*3+4", "/0", "(", ")",
     " ", "\n", "\u4e2d", "\u0442", "\u0667", "=", "-", "*"]
)
TEXTS = st.one_of(
    st.text(max_size=400), st.lists(st.one_of(FRAGMENTS, st.text(max_size=5)), max_size=40).map("".join)
)
TASKS = st.sampled_from([ARITHMETIC, ZERO, LINEAR, COUNTDOWN, SUBSET])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=TASKS, completion=TEXTS, max_tokens=st.integers(1, 4096), data=st.data())
def test_score_completion_is_total_and_in_range(task, completion, max_tokens, data):
    num_tokens = data.draw(st.integers(0, 2 * max_tokens))
    buffer = data.draw(st.integers(0, max_tokens))
    breakdown = score_completion(task, completion, num_tokens, max_tokens, buffer)
    assert breakdown.accuracy in (0.0, 1.0) and breakdown.format in (0.0, 1.0)
    assert 0.0 <= breakdown.language <= 1.0
    assert -1.0 <= breakdown.length <= 0.0
    assert breakdown == score_completion(task, completion, num_tokens, max_tokens, buffer)  # deterministic
    if breakdown.format == 1.0:
        answer_block = completion.split("<answer>")[1].split("</answer>")[0]
        assert (extract_answer(completion) is None) == (len(answer_block) > MAX_ANSWER_CHARS)
