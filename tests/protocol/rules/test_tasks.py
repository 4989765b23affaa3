"""Task generators: determinism, validity of every family's answers, traces, seeds, prompts."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections import Counter
from fractions import Fraction

import pytest

from thinkmesh.protocol.rules.errors import ProtocolError, TaskError
from thinkmesh.protocol.rules.rewards import evaluate_expression
from thinkmesh.protocol.rules.tasks import (
    ARITHMETIC_LEVELS,
    COUNTDOWN_LEVELS,
    COUNTDOWN_MAX_TARGET,
    FAMILIES,
    MAX_DIFFICULTY,
    MIN_DIFFICULTY,
    TEMPLATES,
    HELDOUT_MODULUS,
    PARTITION_ID,
    DrawStream,
    Task,
    TaskSpec,
    generate_task,
    is_heldout,
    node_task_seed,
    render_prompt,
    solution_trace,
    task_for_node,
    trainable_task,
)

ALL_SPECS = [TaskSpec(f, d) for f in FAMILIES for d in range(MIN_DIFFICULTY, MAX_DIFFICULTY + 1)]
SEED = b"thinkmesh-test-seed"


def tasks_of(spec: TaskSpec, count: int, seed: bytes = SEED) -> list[Task]:
    return [generate_task(spec, seed, index) for index in range(count)]


def safe_eval(expression: str) -> Fraction:
    """Exact value of an ASCII integer expression; eval is safe on this alphabet."""
    assert re.fullmatch(r"[0-9+\-*/() ]+", expression), expression
    with_fractions = re.sub(r"[0-9]+", lambda m: f"Fraction({m.group()})", expression)
    return eval(with_fractions, {"__builtins__": {}, "Fraction": Fraction})  # noqa: S307


def countdown_solvable(numbers: tuple[int, ...], target: int) -> bool:
    """Independent brute force: combine any two values with + - * / until one is left."""
    goal, failed = Fraction(target), set()

    def search(values: tuple[Fraction, ...]) -> bool:
        if len(values) == 1:
            return values[0] == goal
        if values in failed:
            return False
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                a, b = values[i], values[j]
                rest = values[:i] + values[i + 1 : j] + values[j + 1 :]
                results = {a + b, a - b, b - a, a * b}
                results |= ({a / b} if b else set()) | ({b / a} if a else set())
                if any(search(tuple(sorted((*rest, r)))) for r in results):
                    return True
        failed.add(values)
        return False

    return search(tuple(sorted(map(Fraction, numbers))))


# --- specs and arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "difficulty"),
    [("geometry", 1), ("", 1), ("arithmetic", 0), ("arithmetic", 6), ("linear", -1), ("countdown", True),
     ("countdown", "3"), ("countdown", 2.0)],
)
def test_invalid_task_spec_raises_task_error(family, difficulty):
    with pytest.raises(TaskError, match="task (family|difficulty)"):
        TaskSpec(family, difficulty)


def test_task_error_is_a_protocol_error():
    assert issubclass(TaskError, ProtocolError)


@pytest.mark.parametrize("index", [-1, 2**64, 1.0, "0", None])
def test_invalid_index_raises_task_error(index):
    with pytest.raises(TaskError, match="task index"):
        generate_task(TaskSpec("arithmetic", 1), SEED, index)


@pytest.mark.parametrize("seed", ["text", bytearray(b"x"), None, 7])
def test_non_bytes_seed_raises_task_error(seed):
    with pytest.raises(TaskError, match="expected bytes"):
        generate_task(TaskSpec("arithmetic", 1), seed, 0)


def test_forged_spec_is_rejected_at_generation():
    spec = TaskSpec("arithmetic", 1)
    object.__setattr__(spec, "difficulty", 9)
    with pytest.raises(TaskError, match="difficulty"):
        generate_task(spec, SEED, 0)


def test_largest_index_is_accepted():
    assert generate_task(TaskSpec("linear", 1), SEED, 2**64 - 1).index == 2**64 - 1


# --- determinism --------------------------------------------------------------------------------

_CHILD = """
import dataclasses, json, sys
from thinkmesh.protocol.rules.tasks import FAMILIES, TaskSpec, generate_task
out = [dataclasses.astuple(generate_task(TaskSpec(f, d), bytes.fromhex(sys.argv[1]), i))
       for f in FAMILIES for d in range(1, 6) for i in range(8)]
print(json.dumps(out))
"""


@pytest.mark.timeout(60)
def test_generate_task_is_identical_in_another_process():
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, SEED.hex()],
        capture_output=True, text=True, env=env, timeout=50, check=True,
    )
    here = [dataclasses.astuple(t) for spec in ALL_SPECS for t in tasks_of(spec, 8)]
    assert json.loads(child.stdout) == json.loads(json.dumps(here))


def test_golden_vectors_pin_the_generator():
    """Changing these is a protocol change: bump TASK_DOMAIN, do not edit the vectors."""
    seed = b"golden"
    assert generate_task(TaskSpec("arithmetic", 1), seed, 0) == Task(
        family="arithmetic", difficulty=1, index=0, question="What is 44-61?", answer="-17",
        solution="-17", trace="44-61=-(61-44): 11-4=7, 5-4=1, so -17",
    )
    assert generate_task(TaskSpec("countdown", 3), seed, 1) == Task(
        family="countdown", difficulty=3, index=1,
        question="Using the numbers [36, 61, 67, 90], create an equation that equals 254. "
        "Use each number exactly once, with + - * / and parentheses.",
        answer="254", numbers=(36, 61, 67, 90), target=254, solution="61+67+36+90",
        trace="36+90=126, 67+126=193, 61+193=254",
    )
    assert generate_task(TaskSpec("linear", 4), seed, 2) == Task(
        family="linear", difficulty=4, index=2, question="Solve -6*x-28=-3*x+17 for x.", answer="-15",
        solution="-15", trace="-6*x+3*x=17+28, -3*x=45, x=45/(-3)=-15",
    )
    assert node_task_seed(b"r" * 32, b"n" * 32).hex() == (
        "7c8d084c7f14b29b1f982c0ec22d7cf7b599d0d95ba159fc794494e3da894206"
    )


def test_draw_stream_is_uniform_and_keyed():
    draws = DrawStream(b"k" * 32)
    counts = Counter(draws.below(3) for _ in range(3000))
    assert set(counts) == {0, 1, 2}
    assert all(900 <= c <= 1100 for c in counts.values()), counts
    assert [DrawStream(b"a").below(2**40) for _ in range(2)] == [DrawStream(b"a").below(2**40)] * 2
    assert DrawStream(b"a").below(2**40) != DrawStream(b"b").below(2**40)
    assert all(5 <= draws.between(5, 7) <= 7 for _ in range(100))
    with pytest.raises(TaskError):
        draws.below(0)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_indices_give_varied_tasks(spec):
    questions = [t.question for t in tasks_of(spec, 100)]
    assert len(set(questions)) >= 80


def test_spec_and_seed_both_change_the_task():
    spec = TaskSpec("countdown", 3)
    base = [t.question for t in tasks_of(spec, 20)]
    assert base != [t.question for t in tasks_of(spec, 20, seed=SEED + b"!")]
    assert base != [t.question for t in tasks_of(TaskSpec("countdown", 4), 20)]


# --- node seeds ---------------------------------------------------------------------------------


def test_node_task_seed_is_domain_separated_and_unambiguous():
    round_seed = b"\x01" * 32
    a, b = node_task_seed(round_seed, b"node-a"), node_task_seed(round_seed, b"node-b")
    assert len(a) == 32 and a != b
    assert node_task_seed(b"ab", b"c") != node_task_seed(b"a", b"bc")
    assert node_task_seed(round_seed, b"node-a") != node_task_seed(b"\x02" * 32, b"node-a")
    assert a not in (round_seed, b"node-a")


def test_task_for_node_is_the_trainable_task_under_the_node_seed():
    spec, round_seed = TaskSpec("linear", 2), b"\x07" * 32
    for index in range(5):
        got = task_for_node(spec, round_seed, b"node", index)
        assert got == trainable_task(spec, node_task_seed(round_seed, b"node"), index)
    assert task_for_node(spec, round_seed, b"node", 0) != task_for_node(spec, round_seed, b"other", 0)


# --- the held-out partition ---------------------------------------------------------------------


def _all_problems(spec: TaskSpec, size: int) -> dict[str, Task]:
    problems, index = {}, 0
    while len(problems) < size:
        task = generate_task(spec, b"enumerate", index)
        problems.setdefault(task.question, task)
        index += 1
    return problems


def test_heldout_is_sha256_of_the_question_mod_k():
    import hashlib

    task = generate_task(TaskSpec("linear", 1), SEED, 0)
    digest = hashlib.sha256(b"thinkmesh/heldout-partition/v1" + len(task.question).to_bytes(4, "big")
                            + task.question.encode()).digest()
    assert is_heldout(task) == (int.from_bytes(digest, "big") % HELDOUT_MODULUS == 0)
    assert str(HELDOUT_MODULUS) in PARTITION_ID
    # A property of the problem, not of where it came from: the same question is held out from any seed.
    same = dataclasses.replace(task, index=99, difficulty=2)
    assert is_heldout(same) == is_heldout(task)


def test_linear_1_partition_leaves_enough_problems_on_both_sides():
    """linear-1 has 8 x 10 x 9 = 720 problems: the held-out side must carry a 128-task evaluation
    and the trainable side most of the space (150 and 570 under the current rule)."""
    problems = _all_problems(TaskSpec("linear", 1), 720)
    held = sum(is_heldout(task) for task in problems.values())
    assert (held, len(problems) - held) == (150, 570)
    assert held >= 128 and len(problems) - held >= 0.75 * len(problems)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_heldout_share_is_about_one_in_k_in_every_family(spec):
    held = sum(is_heldout(task) for task in tasks_of(spec, 400))
    assert 0.5 / HELDOUT_MODULUS < held / 400 < 1.6 / HELDOUT_MODULUS


@pytest.mark.parametrize("spec", [TaskSpec("linear", 1), TaskSpec("arithmetic", 1), TaskSpec("countdown", 2)], ids=str)
def test_trainable_task_is_never_heldout_and_keeps_first_draws_that_are_not(spec):
    redrawn = 0
    for index in range(300):
        task = trainable_task(spec, SEED, index)
        assert not is_heldout(task) and task.index == index
        assert task == trainable_task(spec, SEED, index)
        first = generate_task(spec, SEED, index)
        if is_heldout(first):
            redrawn += 1
        else:
            assert task == first
    assert redrawn > 0, "the rule must have had something to redraw"


# --- the families' answers are right ------------------------------------------------------------


@pytest.mark.parametrize("difficulty", range(1, 6))
def test_arithmetic_answer_is_the_expression_value(difficulty):
    operands, digits, operators = ARITHMETIC_LEVELS[difficulty - 1]
    for task in tasks_of(TaskSpec("arithmetic", difficulty), 100):
        expression = re.fullmatch(r"What is ([0-9+\-*]+)\?", task.question).group(1)
        assert safe_eval(expression) == int(task.answer)
        values = re.findall(r"[0-9]+", expression)
        assert len(values) == operands
        assert set(re.findall(r"[+\-*]", expression)) <= set(operators)
        assert values[0][0] != "0" and len(values[0]) == digits


@pytest.mark.parametrize("difficulty", range(1, 6))
def test_linear_answer_solves_the_equation(difficulty):
    for task in tasks_of(TaskSpec("linear", difficulty), 100):
        equation = re.fullmatch(r"Solve (.+) for x\.", task.question).group(1)
        assert ("x" in equation.split("=")[1]) == (difficulty >= 4)
        left, right = equation.replace("x", f"({task.answer})").split("=")
        assert safe_eval(left) == safe_eval(right), task.question


@pytest.mark.parametrize("difficulty", range(1, 6))
def test_countdown_solution_uses_every_number_once_and_hits_the_target(difficulty):
    count, largest = COUNTDOWN_LEVELS[difficulty - 1]
    for task in tasks_of(TaskSpec("countdown", difficulty), 200):
        assert len(task.numbers) == count == difficulty + 1
        assert all(1 <= n <= largest for n in task.numbers)
        assert 1 <= task.target <= COUNTDOWN_MAX_TARGET and task.answer == str(task.target)
        value, used = evaluate_expression(task.solution)
        assert value == task.target and sorted(used) == sorted(task.numbers)
        assert f"[{', '.join(map(str, task.numbers))}]" in task.question


@pytest.mark.parametrize(("difficulty", "count"), [(1, 40), (2, 40), (3, 20), (4, 4)])
def test_countdown_instances_are_solvable_by_brute_force(difficulty, count):
    for task in tasks_of(TaskSpec("countdown", difficulty), count, seed=b"brute-force"):
        assert countdown_solvable(task.numbers, task.target), task.question


def test_brute_force_solver_finds_unsolvable_instances():
    assert countdown_solvable((3, 4), 12) and countdown_solvable((1, 3, 3), 1)
    assert not countdown_solvable((1, 1), 5)
    assert not countdown_solvable((2, 3, 5), 200)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_everything_generated_is_ascii(spec):
    for task in tasks_of(spec, 50):
        for text in (task.question, task.answer, task.solution, task.trace):
            assert text and text.isascii(), text
    assert all(template.isascii() for template in TEMPLATES.values())


# --- traces -------------------------------------------------------------------------------------


def trace_claims_hold(task: Task) -> bool:
    """Every clause of the trace that states an equality is arithmetically true."""
    text = task.trace.replace("x", f"({task.answer})") if task.family == "linear" else task.trace
    for clause in re.split(r", |: ", text):
        clause = clause.removeprefix("so ")
        if "=" in clause:
            sides = [safe_eval(side) for side in clause.split("=")]
            if len(set(sides)) != 1:
                return False
    return True


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_solution_trace_is_correct_and_ends_at_the_answer(spec):
    for task in tasks_of(spec, 100):
        trace = solution_trace(task)
        assert trace_claims_hold(task), trace
        if spec.family == "countdown":
            assert trace.endswith(f"={task.answer}")
        else:
            assert trace.endswith(task.answer)
            assert re.search(rf"(so |=){re.escape(task.answer)}$", trace)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.difficulty <= 2], ids=str)
def test_solution_trace_is_short_at_low_difficulty(spec):
    assert max(len(solution_trace(t)) for t in tasks_of(spec, 300)) < 80


def test_trace_checker_catches_a_wrong_step():
    task = generate_task(TaskSpec("arithmetic", 1), SEED, 0)
    assert trace_claims_hold(task)
    broken = dataclasses.replace(task, trace=task.trace.replace("=", "=1", 1))
    assert not trace_claims_hold(broken)


def test_solution_trace_of_a_hand_made_task_raises():
    task = Task(family="arithmetic", difficulty=1, index=0, question="What is 1+1?", answer="2")
    with pytest.raises(TaskError, match="no trace"):
        solution_trace(task)


def test_worked_trace_examples():
    """Column addition with carries, borrows, and partial products, as the SFT data shows them."""
    from thinkmesh.protocol.rules.tasks import _two_operand_trace

    assert _two_operand_trace(58, "+", 67) == "58+67: 8+7=15, 5+6+1=12, so 125"
    assert _two_operand_trace(72, "-", 38) == "72-38: 12-8=4, 6-3=3, so 34"
    assert _two_operand_trace(38, "-", 72) == "38-72=-(72-38): 12-8=4, 6-3=3, so -34"
    assert _two_operand_trace(347, "*", 86) == (
        "347*86: 347*6=2082, 347*80=27760, 2082+27760=29842, so 29842"
    )
    assert _two_operand_trace(347, "*", 80) == "347*80: 347*80=27760, so 27760"


# --- prompts ------------------------------------------------------------------------------------


def test_render_prompt_templates():
    task = generate_task(TaskSpec("arithmetic", 1), SEED, 3)
    r1 = render_prompt(task)
    assert r1.startswith("A conversation between User and Assistant.")
    assert "<think> </think> and <answer> </answer> tags" in r1
    assert r1.endswith(f"User: {task.question} Assistant:")
    assert render_prompt(task, "r1-compact") == f"User: {task.question}\nAssistant:"
    with pytest.raises(TaskError, match="prompt template"):
        render_prompt(task, "chatml")
