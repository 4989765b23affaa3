"""Rule-based rewards (DeepSeek-R1-Zero style) as pure functions of (task, completion text).

Each component is returned separately in a `RewardBreakdown`, so a verifier that disagrees with
a node's claim can cite which rule gave a different value. Every function here is deterministic
and total over arbitrary text: it never raises on what a model wrote, and its work is bounded
(linear scans, answers capped at `MAX_ANSWER_CHARS`, expressions at `MAX_EXPRESSION_DEPTH`, whole
completions at `RewardConfig.max_completion_chars` in `score_completion`). No `eval`, no regex
with backtracking over model text, and no Unicode database lookups whose answer would depend on
the Python version: script classes come from the fixed tables below.

Components and ranges:
    accuracy  0 or 1   the single <answer> block, outside any <think>, is correct
    format    0 or 1   exactly "<think>...</think>" then "<answer>...</answer>", nothing else
    language  0..1     share of the reasoning's letters in the prompt's script (Latin)
    length    -1..0    DAPO's soft overlong punishment over the completion's token count

Countdown rule (TinyZero's): the equation uses every given number exactly once, with + - * /
and parentheses, evaluated in exact rational arithmetic (non-integer intermediates are allowed,
as in TinyZero; division by zero fails the answer), and equals the target. Integer answers
accept surrounding spaces, a sign and leading zeros ("007" is 7, "-0" is 0); linear answers may
be written "x = 7". Digits must be ASCII: "\u0663" (Arabic-Indic three) is not 3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from fractions import Fraction

from thinkmesh.protocol.rules.errors import ProtocolError, TaskError
from thinkmesh.protocol.rules.tasks import FAMILIES, Task

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
ASCII_WHITESPACE = " \t\n\r\f\v"
MAX_ANSWER_CHARS = 256
MAX_EXPRESSION_DEPTH = 32
DEFAULT_MAX_COMPLETION_CHARS = 65536

# Code point ranges, inclusive. Latin letters count for the prompt's script; neutral characters
# (digits, punctuation, symbols, math, emoji, combining marks) count for nothing; every other
# non-ASCII character counts as a letter of another script (CJK, Cyrillic, Greek, Arabic, ...).
LATIN_RANGES: tuple[tuple[int, int], ...] = (
    (0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x2AF), (0x1D00, 0x1D7F),
    (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF), (0xAB30, 0xAB6F), (0xFB00, 0xFB06),
)
NEUTRAL_RANGES: tuple[tuple[int, int], ...] = (
    (0x00, 0x40), (0x5B, 0x60), (0x7B, 0xBF), (0xD7, 0xD7), (0xF7, 0xF7), (0x2B0, 0x36F),
    (0x2000, 0x2BFF), (0x3000, 0x3003), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0x1D400, 0x1D7FF), (0x1F000, 0x1FAFF),
)


def _character_class(ranges: tuple[tuple[int, int], ...]) -> re.Pattern[str]:
    parts = "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges)
    return re.compile(f"[{parts}]")


_LATIN = _character_class(LATIN_RANGES)
_NEUTRAL = _character_class(NEUTRAL_RANGES)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_LINEAR_ANSWER = re.compile(r"(?:x[ \t]*=[ \t]*)?([+-]?[0-9]+)")


class RewardError(ProtocolError):
    """Reward arguments that are not text but settings: token counts, limits, weights."""


class ExpressionError(RewardError):
    """Text that is not a countdown expression: bad token, unbalanced, too deep, division by 0."""


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the components in `total_reward`, and the completion cap of `score_completion`.

    Both sides of a round must use the same config: it decides totals, hence advantages.
    """

    accuracy_weight: float = 1.0
    format_weight: float = 0.2
    language_weight: float = 0.1
    length_weight: float = 1.0
    max_completion_chars: int = DEFAULT_MAX_COMPLETION_CHARS

    def __post_init__(self) -> None:
        for name in ("accuracy_weight", "format_weight", "language_weight", "length_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise RewardError(f"{name}: expected a finite number, got {value!r}")
        if type(self.max_completion_chars) is not int or self.max_completion_chars <= 0:
            raise RewardError(
                f"max_completion_chars: expected a positive int, got {self.max_completion_chars!r}"
            )


@dataclass(frozen=True)
class RewardBreakdown:
    """The four components of one completion's reward; travels inside `Sample` (floats only)."""

    accuracy: float
    format: float
    language: float
    length: float


def total_reward(breakdown: RewardBreakdown, config: RewardConfig = RewardConfig()) -> float:
    """The scalar a GRPO objective sees: the config-weighted sum of the components."""
    return (
        config.accuracy_weight * breakdown.accuracy
        + config.format_weight * breakdown.format
        + config.language_weight * breakdown.language
        + config.length_weight * breakdown.length
    )


def differing_components(
    claimed: RewardBreakdown, recomputed: RewardBreakdown, tolerance: float = 1e-9
) -> tuple[str, ...]:
    """Names of the components where a claim and a recomputation differ by more than
    `tolerance`, in field order: the evidence a verifier cites for a reward mismatch."""
    return tuple(
        f.name
        for f in fields(RewardBreakdown)
        if not abs(getattr(claimed, f.name) - getattr(recomputed, f.name)) <= tolerance
    )


# --- answer extraction --------------------------------------------------------------------------


def extract_answer(completion: str) -> str | None:
    """The content of the completion's only `<answer>...</answer>` block, stripped of ASCII
    whitespace; None when there is not exactly one such block, when it sits inside reasoning (a
    think tag follows it, or an unclosed `<think>` precedes it), or when it is longer than
    `MAX_ANSWER_CHARS`. Tags are matched exactly and case-sensitively."""
    if completion.count(ANSWER_OPEN) != 1 or completion.count(ANSWER_CLOSE) != 1:
        return None
    start, end = completion.find(ANSWER_OPEN), completion.find(ANSWER_CLOSE)
    if end < start:
        return None
    if completion.find(THINK_OPEN, start) != -1 or completion.find(THINK_CLOSE, start) != -1:
        return None
    if completion.rfind(THINK_OPEN, 0, start) > completion.rfind(THINK_CLOSE, 0, start):
        return None
    content = completion[start + len(ANSWER_OPEN) : end]
    if len(content) > MAX_ANSWER_CHARS:
        return None
    return content.strip(ASCII_WHITESPACE)


def parse_integer(text: str) -> int | None:
    """An optionally signed ASCII decimal integer with nothing else around it, else None."""
    return int(text) if _INTEGER.fullmatch(text) else None


# --- countdown expressions ----------------------------------------------------------------------


def _tokenize(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        char = text[position]
        if char in " \t":
            position += 1
        elif "0" <= char <= "9":
            end = position
            while end < len(text) and "0" <= text[end] <= "9":
                end += 1
            tokens.append(text[position:end])
            position = end
        elif char in "+-*/()":
            tokens.append(char)
            position += 1
        else:
            raise ExpressionError(f"expected a digit, + - * / ( ) or a space, got {char!r}")
    return tokens


class _ExpressionParser:
    """Recursive descent over  expr := term (("+"|"-") term)*,  term := factor (("*"|"/")
    factor)*,  factor := INTEGER | "(" expr ")". No unary minus. Evaluates while parsing."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.position, self.numbers = tokens, 0, []

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("expected more of the expression, got its end")
        self.position += 1
        return token

    def expression(self, depth: int) -> Fraction:
        if depth > MAX_EXPRESSION_DEPTH:
            raise ExpressionError(f"expected at most {MAX_EXPRESSION_DEPTH} nested parentheses")
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value *= self.factor(depth)
            else:
                divisor = self.factor(depth)
                if divisor == 0:
                    raise ExpressionError("division by zero")
                value /= divisor
        return value

    def factor(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            value = self.expression(depth + 1)
            if self.take() != ")":
                raise ExpressionError("expected ')'")
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"expected a number or '(', got {token!r}")


def evaluate_expression(text: str) -> tuple[Fraction, tuple[int, ...]]:
    """The exact value of a countdown expression and the integers it uses, in order of use.

    Raises `ExpressionError` for anything that is not such an expression, or is longer than
    `MAX_ANSWER_CHARS` (which bounds the work: no power operator, so values stay small).
    """
    if len(text) > MAX_ANSWER_CHARS:
        raise ExpressionError(f"expected at most {MAX_ANSWER_CHARS} characters, got {len(text)}")
    parser = _ExpressionParser(_tokenize(text))
    value = parser.expression(depth=0)
    if parser.peek() is not None:
        raise ExpressionError(f"expected the end of the expression, got {parser.peek()!r}")
    return value, tuple(parser.numbers)


def _countdown_correct(task: Task, answer: str) -> bool:
    """`answer` is an equation over the task's numbers, optionally followed by "= target"."""
    left, equals, right = answer.partition("=")
    if equals and parse_integer(right.strip(ASCII_WHITESPACE)) != task.target:
        return False
    try:
        value, used = evaluate_expression(left)
    except ExpressionError:
        return False
    return value == task.target and sorted(used) == sorted(task.numbers)


# --- the four components ------------------------------------------------------------------------


def accuracy_reward(task: Task, completion: str) -> float:
    """1.0 if the extracted answer is correct for `task` (see the module docstring), else 0.0."""
    if task.family not in FAMILIES:
        raise TaskError(f"task family: expected one of {FAMILIES}, got {task.family!r}")
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    if task.family == "countdown":
        return 1.0 if _countdown_correct(task, answer) else 0.0
    if task.family == "linear":
        match = _LINEAR_ANSWER.fullmatch(answer)
        value = int(match.group(1)) if match else None
    else:
        value = parse_integer(answer)
    return 1.0 if value is not None and value == int(task.answer) else 0.0


def format_reward(completion: str) -> float:
    """1.0 iff the completion is `<think>...</think>` then `<answer>...</answer>`: each tag once,
    in that order, with only ASCII whitespace before, between and after the blocks."""
    if any(completion.count(tag) != 1 for tag in TAGS):
        return 0.0
    think_open, think_close = completion.find(THINK_OPEN), completion.find(THINK_CLOSE)
    answer_open, answer_close = completion.find(ANSWER_OPEN), completion.find(ANSWER_CLOSE)
    if not think_open < think_close < answer_open < answer_close:
        return 0.0
    outside = (
        completion[:think_open],
        completion[think_close + len(THINK_CLOSE) : answer_open],
        completion[answer_close + len(ANSWER_CLOSE) :],
    )
    return 1.0 if all(not part.strip(ASCII_WHITESPACE) for part in outside) else 0.0


def reasoning_text(completion: str) -> str:
    """The think block's content when there is exactly one well-ordered pair of think tags,
    else the whole completion (a model that never opens `<think>` still reasons somewhere)."""
    if completion.count(THINK_OPEN) == 1 and completion.count(THINK_CLOSE) == 1:
        start, end = completion.find(THINK_OPEN), completion.find(THINK_CLOSE)
        if start < end:
            return completion[start + len(THINK_OPEN) : end]
    return completion


def language_reward(task: Task, completion: str) -> float:
    """Latin letters / (Latin + other-script letters) in the reasoning; 1.0 with no letters.

    Every task's prompt is ASCII (`protocol/rules/tasks.py` guarantees it), so the prompt's script is
    Latin. A reasoning that drifts into CJK or Cyrillic lowers the share; digits, punctuation,
    math symbols and emoji are neutral.
    """
    del task  # every family's prompt is Latin-script; kept so a non-Latin family can be added
    text = reasoning_text(completion)
    if text.isascii():
        return 1.0
    not_latin = _LATIN.sub("", text)
    latin = len(text) - len(not_latin)
    foreign = len(_NEUTRAL.sub("", not_latin))
    return 1.0 if latin + foreign == 0 else latin / (latin + foreign)


def length_reward(num_tokens: int, max_tokens: int, overlong_buffer: int) -> float:
    """DAPO's soft overlong punishment: 0 up to `max_tokens - overlong_buffer` tokens, then
    linearly down to -1 at `max_tokens`, and -1 beyond. A zero buffer gives a hard cliff."""
    for name, value in (("num_tokens", num_tokens), ("max_tokens", max_tokens),
                        ("overlong_buffer", overlong_buffer)):
        if type(value) is not int or value < 0:
            raise RewardError(f"{name}: expected a non-negative int, got {value!r}")
    if max_tokens == 0 or overlong_buffer > max_tokens:
        raise RewardError(
            f"expected 0 <= overlong_buffer <= max_tokens and max_tokens > 0, got "
            f"overlong_buffer={overlong_buffer}, max_tokens={max_tokens}"
        )
    soft_limit = max_tokens - overlong_buffer
    if num_tokens <= soft_limit:
        return 0.0
    if num_tokens > max_tokens:
        return -1.0
    return (soft_limit - num_tokens) / overlong_buffer


def score_completion(
    task: Task,
    completion: str,
    num_tokens: int,
    max_tokens: int,
    overlong_buffer: int = 0,
    config: RewardConfig = RewardConfig(),
) -> RewardBreakdown:
    """All four components for one completion. A completion longer than
    `config.max_completion_chars` scores 0 on accuracy, format and language without being read:
    that caps a verifier's work per sample whatever a node sends."""
    if not isinstance(completion, str):
        raise RewardError(f"completion: expected str, got {type(completion).__name__}")
    length = length_reward(num_tokens, max_tokens, overlong_buffer)
    if len(completion) > config.max_completion_chars:
        return RewardBreakdown(accuracy=0.0, format=0.0, language=0.0, length=length)
    return RewardBreakdown(
        accuracy=accuracy_reward(task, completion),
        format=format_reward(completion),
        language=language_reward(task, completion),
        length=length,
    )


def reference_completion(task: Task) -> str:
    """A completion that earns full accuracy, format and language: the task's trace and
    solution in R1's format; cold-start SFT data and tests use it."""
    if not task.solution or not task.trace:
        raise TaskError("task has no solution or trace: expected a Task made by generate_task")
    return f"{THINK_OPEN}{task.trace}{THINK_CLOSE} {ANSWER_OPEN}{task.solution}{ANSWER_CLOSE}"
