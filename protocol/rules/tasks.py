"""Task generators: a prompt and its answer are a pure function of (spec, seed, index).

Why: a node must not cherry-pick easy prompts, and a verifier must regenerate exactly the prompts a
node was given. Every random choice below comes from `DrawStream`, a SHA-256 counter stream keyed
by domain-separated, length-prefixed inputs with rejection sampling for uniform integers. There is
no Python `hash()`, no `random` module and no global state, so a task is identical across
processes, platforms and Python versions. Questions, answers and traces are ASCII.

Difficulty levels (1 easiest .. 5):

    arithmetic  operands x digits, ops:   1: 2x2 (+ -)   2: 2x3 (+ - *)   3: 3x3 (+ - *)
                4: 3x4 (+ - *)   5: 4x4 (+ - *). The factor right of a `*` has one digit fewer.
                Usual precedence (* before + -); the answer may be negative.
    countdown   how many numbers (difficulty + 1) and how large:   1: 2 numbers in 1..30
                2: 3 in 1..50   3: 4 in 1..99   4: 5 in 1..99   5: 6 in 1..99.
                Reach the target (1..999) using every number exactly once with + - * / and
                parentheses. Instances are built from a solution, so every one is solvable.
    linear      solve for integer x:   1: a*x+b=c, a in 2..9, x in 0..9, b in 1..9
                2: negatives allowed, |a|<=9, |x|<=9, |b|<=20   3: |a|<=19, |x|<=20, |b|<=99
                4: x on both sides a*x+b=c*x+d, |a|,|c|<=9, |x|<=20, |b|<=50 (d follows)
                5: both sides, |a|,|c|<=30, |x|<=99, |b|<=999.

Held-out partition: a problem is held out iff sha256(HELDOUT_DOMAIN, question) mod
HELDOUT_MODULUS == 0 (`is_heldout`), a public rule over the question text alone, so one problem
is held out (or not) whatever family, difficulty, seed or index produced it. Every training source
draws through `trainable_task` (round prompts via `task_for_node`, the cold start, `train local`)
and the held-out evaluation (`protocol.rules.evaluation`) draws only held-out problems: no seed
bookkeeping can let an evaluation problem into training, even in a small space (linear-1 has 720
problems: 150 held out, 570 trainable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from thinkmesh.protocol.rules.errors import TaskError

FAMILIES: tuple[str, ...] = ("arithmetic", "countdown", "linear")
MIN_DIFFICULTY = 1
MAX_DIFFICULTY = 5
MAX_INDEX = 2**64 - 1
TASK_DOMAIN = b"thinkmesh/task/v1"
NODE_TASK_SEED_DOMAIN = b"thinkmesh/node-task-seed/v1"
HELDOUT_DOMAIN = b"thinkmesh/heldout-partition/v1"
HELDOUT_MODULUS = 5  # one problem in five is held out
TRAINABLE_REDRAW_DOMAIN = b"thinkmesh/trainable-redraw/v1"
MAX_TRAINABLE_REDRAWS = 64  # a held-out draw is redrawn; 64 held-out draws in a row: p = 5**-64
# Names the partition wherever a result depends on it (cold-start caches): change the rule, change this.
PARTITION_ID = f"sha256({HELDOUT_DOMAIN.decode()}, question) mod {HELDOUT_MODULUS} == 0"

# Indexed by difficulty - 1.
ARITHMETIC_LEVELS: tuple[tuple[int, int, str], ...] = (  # (operands, digits, operators)
    (2, 2, "+-"), (2, 3, "+-*"), (3, 3, "+-*"), (3, 4, "+-*"), (4, 4, "+-*"),
)
COUNTDOWN_LEVELS: tuple[tuple[int, int], ...] = ((2, 30), (3, 50), (4, 99), (5, 99), (6, 99))
COUNTDOWN_MAX_TARGET = 999
COUNTDOWN_TREE_ATTEMPTS = 64
# (both sides, max |coefficient|, min x, max x, max |constant|, negative coefficients/constants)
LINEAR_LEVELS: tuple[tuple[bool, int, int, int, int, bool], ...] = (
    (False, 9, 0, 9, 9, False),
    (False, 9, -9, 9, 20, True),
    (False, 19, -20, 20, 99, True),
    (True, 9, -20, 20, 50, True),
    (True, 30, -99, 99, 999, True),
)

TEMPLATES: dict[str, str] = {
    "r1": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then "
        "provides the user with the answer. The reasoning process and answer are enclosed within "
        "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
        "process here </think> <answer> answer here </answer>. User: {question} Assistant:"
    ),
    "r1-compact": "User: {question}\nAssistant:",
}

T = TypeVar("T")


@dataclass(frozen=True)
class TaskSpec:
    """Which tasks a round asks for; travels inside `RoundAnnouncement` (str/int fields only).

    Validated on construction, so a decoded announcement never carries an impossible spec.
    """

    family: str
    difficulty: int

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise TaskError(f"task family: expected one of {FAMILIES}, got {self.family!r}")
        if type(self.difficulty) is not int or not MIN_DIFFICULTY <= self.difficulty <= MAX_DIFFICULTY:
            raise TaskError(
                f"task difficulty: expected an int in {MIN_DIFFICULTY}..{MAX_DIFFICULTY}, "
                f"got {self.difficulty!r}"
            )


@dataclass(frozen=True)
class Task:
    """One generated problem and everything needed to check or demonstrate its answer.

    `answer` is the canonical answer ("42"; countdown: the target). `solution` is text that earns
    full accuracy inside `<answer></answer>` (countdown: an equation; otherwise `answer`), and
    `trace` a short correct chain of thought, both filled in by `generate_task`.
    """

    family: str
    difficulty: int
    index: int
    question: str
    answer: str
    numbers: tuple[int, ...] = ()
    target: int | None = None
    solution: str = ""
    trace: str = ""


class DrawStream:
    """Uniform integers from SHA-256(key || counter), 64 bits per block, by rejection sampling.

    Identical on every platform and Python version; not for secrets (the key is public anyway).
    """

    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def below(self, n: int) -> int:
        """A uniform integer in 0..n-1."""
        if n <= 0:
            raise TaskError(f"draw range: expected a positive size, got {n}")
        limit = (1 << 64) - (1 << 64) % n
        while True:
            block = hashlib.sha256(self._key + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            word = int.from_bytes(block[:8], "big")
            if word < limit:
                return word % n

    def between(self, low: int, high: int) -> int:
        """A uniform integer in low..high, both included."""
        return low + self.below(high - low + 1)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise TaskError(f"{name}: expected bytes, got {type(value).__name__}")
    return value


def node_task_seed(round_seed: bytes, node_id: bytes) -> bytes:
    """The 32-byte seed of one node's prompts in one round: SHA-256 over a domain tag and both
    inputs, length-prefixed so no two (round_seed, node_id) pairs share an encoding."""
    round_seed = _check_bytes("round_seed", round_seed)
    node_id = _check_bytes("node_id", node_id)
    return hashlib.sha256(
        NODE_TASK_SEED_DOMAIN + _length_prefixed(round_seed) + _length_prefixed(node_id)
    ).digest()


def task_draws(spec: TaskSpec, seed: bytes, index: int) -> DrawStream:
    """The draw stream of task `index`: independent per (family, difficulty, seed, index)."""
    seed = _check_bytes("task seed", seed)
    if type(index) is not int or not 0 <= index <= MAX_INDEX:
        raise TaskError(f"task index: expected an int in 0..2**64-1, got {index!r}")
    key = hashlib.sha256(
        TASK_DOMAIN
        + _length_prefixed(spec.family.encode("ascii"))
        + spec.difficulty.to_bytes(1, "big")
        + _length_prefixed(seed)
        + index.to_bytes(8, "big")
    ).digest()
    return DrawStream(key)


def generate_task(spec: TaskSpec, seed: bytes, index: int) -> Task:
    """Task `index` of `spec` under `seed`; a pure function of its arguments."""
    if not isinstance(spec, TaskSpec):
        raise TaskError(f"task spec: expected a TaskSpec, got {type(spec).__name__}")
    TaskSpec(spec.family, spec.difficulty)  # re-validate: a frozen record can still be forged
    draws = task_draws(spec, seed, index)
    if spec.family == "arithmetic":
        return _arithmetic_task(spec.difficulty, index, draws)
    if spec.family == "countdown":
        return _countdown_task(spec.difficulty, index, draws)
    return _linear_task(spec.difficulty, index, draws)


def is_heldout(task: Task) -> bool:
    """True iff `task`'s problem belongs to the held-out side of the public partition: SHA-256
    over the domain tag and the length-prefixed ASCII question, as an integer, is 0 mod
    `HELDOUT_MODULUS`. Held-out problems are for evaluation only; no training source draws one."""
    digest = hashlib.sha256(HELDOUT_DOMAIN + _length_prefixed(task.question.encode("ascii"))).digest()
    return int.from_bytes(digest, "big") % HELDOUT_MODULUS == 0


def trainable_task(spec: TaskSpec, seed: bytes, index: int) -> Task:
    """Task `index` of `spec` under `seed` if it is not held out, else the first redraw that is
    not: redraw k uses the seed SHA-256(TRAINABLE_REDRAW_DOMAIN, seed, k) at the same index.
    A pure function of its arguments, like `generate_task`; the task keeps `index`."""
    task = generate_task(spec, seed, index)
    for attempt in range(1, MAX_TRAINABLE_REDRAWS + 1):
        if not is_heldout(task):
            return task
        redraw_seed = hashlib.sha256(
            TRAINABLE_REDRAW_DOMAIN + _length_prefixed(_check_bytes("task seed", seed)) + attempt.to_bytes(4, "big")
        ).digest()
        task = generate_task(spec, redraw_seed, index)
    if not is_heldout(task):
        return task
    raise TaskError(f"{spec.family}-{spec.difficulty}: expected a trainable task within {MAX_TRAINABLE_REDRAWS} "
                    f"redraws of index {index}, got only held-out ones")


def task_for_node(spec: TaskSpec, round_seed: bytes, node_id: bytes, index: int) -> Task:
    """The `index`-th prompt a node must answer in a round (never a held-out problem); a verifier
    calls the same."""
    return trainable_task(spec, node_task_seed(round_seed, node_id), index)


def render_prompt(task: Task, template: str = "r1") -> str:
    """The model's prompt; the completion is expected to start with `<think>`."""
    if template not in TEMPLATES:
        raise TaskError(f"prompt template: expected one of {tuple(TEMPLATES)}, got {template!r}")
    return TEMPLATES[template].replace("{question}", task.question)


def solution_trace(task: Task) -> str:
    """A short correct chain of thought for `task` (under ~80 characters at difficulty 1-2),
    e.g. "47+38: 7+8=15, 4+3+1=8, so 85"; cold-start SFT wraps it as
    "<think>{trace}</think> <answer>{solution}</answer>"."""
    if not task.trace:
        raise TaskError("task has no trace: expected a Task made by generate_task")
    return task.trace


# --- arithmetic -------------------------------------------------------------------------------


def _arithmetic_task(difficulty: int, index: int, draws: DrawStream) -> Task:
    operands, digits, operators = ARITHMETIC_LEVELS[difficulty - 1]
    ops = [draws.choice(operators) for _ in range(operands - 1)]
    values = []
    for position in range(operands):
        width = max(1, digits - 1) if position > 0 and ops[position - 1] == "*" else digits
        values.append(draws.between(10 ** (width - 1), 10**width - 1))
    expression = str(values[0]) + "".join(f"{op}{v}" for op, v in zip(ops, values[1:]))
    result, steps = _evaluate_with_steps(values, ops)
    if operands == 2:
        trace = _two_operand_trace(values[0], ops[0], values[1])
    else:
        trace = ", ".join(steps) + f", so {result}"
    return Task(
        family="arithmetic", difficulty=difficulty, index=index,
        question=f"What is {expression}?", answer=str(result), solution=str(result), trace=trace,
    )


def _evaluate_with_steps(values: list[int], ops: list[str]) -> tuple[int, list[str]]:
    """Products first (left to right), then sums and differences, one step per operation."""
    values, ops, steps = list(values), list(ops), []
    position = 0
    while position < len(ops):
        if ops[position] == "*":
            product = values[position] * values[position + 1]
            steps.append(f"{values[position]}*{values[position + 1]}={product}")
            values[position : position + 2] = [product]
            del ops[position]
        else:
            position += 1
    total = values[0]
    for op, value in zip(ops, values[1:]):
        new_total = total + value if op == "+" else total - value
        steps.append(f"{total}{op}{value}={new_total}")
        total = new_total
    return total, steps


def _digits_low_first(value: int) -> list[int]:
    return [int(d) for d in reversed(str(value))]


def _two_operand_trace(left: int, op: str, right: int) -> str:
    """Column addition, column subtraction with borrows, or partial products."""
    if op == "+":
        steps, carry = [], 0
        a, b = _digits_low_first(left), _digits_low_first(right)
        for column in range(max(len(a), len(b))):
            x = a[column] if column < len(a) else 0
            y = b[column] if column < len(b) else 0
            total = x + y + carry
            steps.append(f"{x}+{y}+{carry}={total}" if carry else f"{x}+{y}={total}")
            carry = total // 10
        return f"{left}+{right}: " + ", ".join(steps) + f", so {left + right}"
    if op == "-":
        if left < right:
            head = f"{left}-{right}=-({right}-{left}): "
            return head + _column_subtraction(right, left) + f", so {left - right}"
        return f"{left}-{right}: " + _column_subtraction(left, right) + f", so {left - right}"
    partials = [
        (left * digit * 10**power, f"{left}*{digit * 10**power}")
        for power, digit in enumerate(_digits_low_first(right))
        if digit
    ]
    steps = [f"{text}={value}" for value, text in partials]
    if len(partials) > 1:
        steps.append("+".join(str(value) for value, _ in partials) + f"={left * right}")
    return f"{left}*{right}: " + ", ".join(steps) + f", so {left * right}"


def _column_subtraction(top: int, bottom: int) -> str:
    """Steps for top-bottom with top >= bottom; a borrowed column shows its digit plus ten."""
    steps, borrow = [], 0
    a, b = _digits_low_first(top), _digits_low_first(bottom)
    for column in range(len(a)):
        x = a[column] - borrow
        y = b[column] if column < len(b) else 0
        borrow = 1 if x < y else 0
        x += 10 * borrow
        steps.append(f"{x}-{y}={x - y}")
    return ", ".join(steps)


# --- countdown --------------------------------------------------------------------------------

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _combine(left: tuple[int, str, int], op: str, right: tuple[int, str, int]) -> tuple[int, str, int]:
    """(value, text, precedence) of `left op right`, with the fewest parentheses that keep it
    exact: a right operand of equal precedence is bracketed only after `-` or `/`."""
    (lv, lt, lp), (rv, rt, rp), prec = left, right, _PRECEDENCE[op]
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv // rv}[op]  # "/" only when exact
    left_text = lt if lp >= prec else f"({lt})"
    right_text = rt if rp > prec or (rp == prec and op in "+*") else f"({rt})"
    return value, f"{left_text}{op}{right_text}", prec


def _random_solution(numbers: list[int], draws: DrawStream) -> tuple[int, str, list[str]]:
    """Combine random pairs until one expression remains. Intermediates stay positive integers
    (classic Countdown), so the solution is valid under any reading of the rules."""
    pool = [(n, str(n), _ATOM) for n in numbers]
    steps = []
    while len(pool) > 1:
        i = draws.below(len(pool))
        j = draws.below(len(pool) - 1)
        if j >= i:
            j += 1
        left, right = pool[i], pool[j]
        ops = ["+", "*"]
        if left[0] > right[0]:
            ops.append("-")
        if left[0] % right[0] == 0:
            ops.append("/")
        op = draws.choice(ops)
        combined = _combine(left, op, right)
        steps.append(f"{left[0]}{op}{right[0]}={combined[0]}")
        pool = [item for k, item in enumerate(pool) if k not in (i, j)] + [combined]
    return pool[0][0], pool[0][1], steps


def _countdown_task(difficulty: int, index: int, draws: DrawStream) -> Task:
    count, largest = COUNTDOWN_LEVELS[difficulty - 1]
    numbers = [draws.between(1, largest) for _ in range(count)]
    for _ in range(COUNTDOWN_TREE_ATTEMPTS):
        target, solution, steps = _random_solution(numbers, draws)
        if 1 <= target <= COUNTDOWN_MAX_TARGET:
            break
    else:  # the sum always fits: at most 6 * 99
        pool = [(n, str(n), _ATOM) for n in numbers]
        steps, acc = [], pool[0]
        for item in pool[1:]:
            new = _combine(acc, "+", item)
            steps.append(f"{acc[0]}+{item[0]}={new[0]}")
            acc = new
        target, solution = acc[0], acc[1]
    shown = ", ".join(str(n) for n in numbers)
    question = (
        f"Using the numbers [{shown}], create an equation that equals {target}. "
        f"Use each number exactly once, with + - * / and parentheses."
    )
    return Task(
        family="countdown", difficulty=difficulty, index=index, question=question,
        answer=str(target), numbers=tuple(numbers), target=target, solution=solution,
        trace=", ".join(steps),
    )


# --- linear equations -------------------------------------------------------------------------


def _signed_term(value: int) -> str:
    return f"+{value}" if value >= 0 else str(value)


def _linear_task(difficulty: int, index: int, draws: DrawStream) -> Task:
    both_sides, max_coef, min_x, max_x, max_const, negatives = LINEAR_LEVELS[difficulty - 1]
    coefficients = [c for c in range(-max_coef, max_coef + 1) if abs(c) >= 2 and (negatives or c > 0)]
    constants = [c for c in range(-max_const, max_const + 1) if c != 0 and (negatives or c > 0)]
    a = draws.choice(coefficients)
    x = draws.between(min_x, max_x)
    b = draws.choice(constants)
    if both_sides:
        c = draws.choice([k for k in coefficients if k != a])
        d = (a - c) * x + b
        equation = f"{a}*x{_signed_term(b)}={c}*x" + (_signed_term(d) if d else "")
        k, r = a - c, d - b
        trace = f"{a}*x{_signed_term(-c)}*x={d}{_signed_term(-b)}, {k}*x={r}, x={r}/{_paren(k)}={x}"
    else:
        rhs = a * x + b
        equation = f"{a}*x{_signed_term(b)}={rhs}"
        trace = f"{a}*x={rhs}{_signed_term(-b)}={rhs - b}, x={rhs - b}/{_paren(a)}={x}"
    return Task(
        family="linear", difficulty=difficulty, index=index,
        question=f"Solve {equation} for x.", answer=str(x), solution=str(x), trace=trace,
    )


def _paren(value: int) -> str:
    return f"({value})" if value < 0 else str(value)
