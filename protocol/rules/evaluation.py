"""Held-out evaluation: the one rule that scores a model version, on chain and off.

The coordinator's figure (`RoundMetrics.heldOutAccuracy`, the dashboard), `train local`'s curve, the
devnet and every bench call `evaluate` below, so a figure means the same thing wherever it is quoted
and anyone can recompute it from the weights and `protocol/` alone.

1. **Set.** `heldout_tasks(spec, count, seed_text)`: the first `count` distinct held-out problems
   (`tasks.is_heldout`, the public partition no training source draws from) in the order of
   `generate_task(spec, heldout_seed(seed_text), 0, 1, ...)`. A family whose held-out side has
   fewer problems than asked for raises `TaskError` (linear-1 has 150).
2. **Prompt.** `render_prompt(task, template)`, encoded by `scoring.prompt_token_ids`, as in a round.
3. **Generation.** The rollout engine (`protocol.rules.rollout.generate`) with the engine's stop rule
   (`sampling.stop_rule_for`: EOS or `</answer>`) and `max_new_tokens`.
4. **Greedy** (temperature 0): `accuracy` (the on-chain figure), `format`, `mean_reward`
   (`rewards.total_reward`) and `mean_tokens` over the set.
5. **Sampled** (`samples` = k > 0): k completions per task at temperature 1, top_p 1; row r of task
   i draws from the public stream `sampling.row_key(heldout_seed, EVAL_STREAM_KEY, i, r)`.
   `sampled_accuracy` is the mean accuracy over all k * count samples, `pass_at_k` the share of
   tasks with at least one correct sample.
6. **Scoring.** `scoring.completion_text` then `rewards.score_completion(task, text, tokens,
   max_new_tokens)`: the rules a round's rewards use.

Determinism: the result is a pure function of (weights, tokenizer, spec, settings) on one device and
dtype; how rows are batched changes only float-order noise in the logits (`protocol.rules.rollout`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch

from thinkmesh.protocol.rules.errors import TaskError
from thinkmesh.protocol.rules.rewards import score_completion, total_reward
from thinkmesh.protocol.rules.rollout import SamplingSettings, generate
from thinkmesh.protocol.rules.sampling import row_key, stop_rule_for
from thinkmesh.protocol.rules.scoring import completion_text, prompt_token_ids
from thinkmesh.protocol.rules.tasks import HELDOUT_MODULUS, TEMPLATES, Task, TaskSpec, generate_task, is_heldout, render_prompt

HELDOUT_SEED_DOMAIN = b"thinkmesh/heldout/v1"
HELDOUT_SEED_TEXT = "thinkmesh-heldout"  # the coordinator's default `[eval] seed` (coordinator/config.py)
EVAL_STREAM_KEY = b"thinkmesh/eval-sampling/v1"  # the "node key" of the evaluation's sampling streams
EVAL_SAMPLE_TEMPERATURE = 1.0
EVAL_SAMPLES = 4  # k of sampled accuracy and pass@k unless a caller asks otherwise
EVAL_BATCH_ROWS = 64  # rows per generate call: bounds memory, changes no figure beyond float noise
HELDOUT_DRAWS_PER_TASK = 64 * HELDOUT_MODULUS  # draws allowed per asked-for task before the set is declared short


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation asks: `tasks` held-out problems, answered in `template` within
    `max_new_tokens`, greedily and (when `samples` > 0) `samples` times each at temperature 1."""

    tasks: int = 128
    max_new_tokens: int = 48
    template: str = "r1"
    samples: int = EVAL_SAMPLES
    seed_text: str = HELDOUT_SEED_TEXT

    def __post_init__(self) -> None:
        if type(self.tasks) is not int or self.tasks < 1:
            raise TaskError(f"evaluation tasks: expected a positive int, got {self.tasks!r}")
        if type(self.max_new_tokens) is not int or self.max_new_tokens < 1:
            raise TaskError(f"evaluation max_new_tokens: expected a positive int, got {self.max_new_tokens!r}")
        if type(self.samples) is not int or self.samples < 0:
            raise TaskError(f"evaluation samples: expected an int >= 0, got {self.samples!r}")
        if self.template not in TEMPLATES:
            raise TaskError(f"evaluation template: expected one of {tuple(TEMPLATES)}, got {self.template!r}")


@dataclass(frozen=True)
class EvalResult:
    """Fractions in [0, 1] over `tasks` held-out problems. `accuracy`, `format`, `mean_reward`
    and `mean_tokens` are greedy; `sampled_accuracy` and `pass_at_k` (k = `samples`) are None
    when no samples were drawn."""

    tasks: int
    accuracy: float
    format: float
    mean_reward: float
    mean_tokens: float
    samples: int
    sampled_accuracy: float | None
    pass_at_k: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def heldout_seed(seed_text: str = HELDOUT_SEED_TEXT) -> bytes:
    """The 32-byte seed the held-out set is drawn under (and its sampling streams keyed by)."""
    return hashlib.sha256(HELDOUT_SEED_DOMAIN + seed_text.encode()).digest()


def heldout_tasks(spec: TaskSpec, count: int, seed_text: str = HELDOUT_SEED_TEXT) -> list[Task]:
    """The evaluation set: the first `count` distinct held-out problems under the seed (rule 1)."""
    seed = heldout_seed(seed_text)
    tasks: list[Task] = []
    seen: set[str] = set()
    limit = HELDOUT_DRAWS_PER_TASK * max(count, 1)
    index = 0
    while len(tasks) < count:
        if index >= limit:
            raise TaskError(f"{spec.family}-{spec.difficulty}: expected {count} distinct held-out problems, found "
                            f"{len(tasks)} in {limit} draws: its held-out side is smaller, ask for fewer")
        task = generate_task(spec, seed, index)
        index += 1
        if is_heldout(task) and task.question not in seen:
            seen.add(task.question)
            tasks.append(task)
    return tasks


def sample_keys(seed_text: str, count: int, samples: int) -> list[bytes]:
    """Stream keys of the sampled rows in order: task 0 rows 0..k-1, task 1, ... (rule 5)."""
    seed = heldout_seed(seed_text)
    return [row_key(seed, EVAL_STREAM_KEY, task, row) for task in range(count) for row in range(samples)]


@torch.no_grad()
def evaluate(model, tokenizer, spec: TaskSpec, settings: EvalSettings = EvalSettings(), *,
             batch_size: int = EVAL_BATCH_ROWS) -> EvalResult:
    """Scores `model` on the held-out set (rules 1-6); `batch_size` bounds rows per forward."""
    tasks = heldout_tasks(spec, settings.tasks, settings.seed_text)
    prompts = [tuple(prompt_token_ids(tokenizer, render_prompt(task, settings.template))) for task in tasks]
    stop = stop_rule_for(tokenizer)

    def run(rows, temperature: float, keys) -> list:
        sampling = SamplingSettings(temperature, 1.0, settings.max_new_tokens)
        return generate(model, rows, sampling, stop, tokenizer.pad_token_id, tokenizer=tokenizer,
                        batch_size=batch_size, keys=keys)

    def score(task: Task, completion):
        text = completion_text(tokenizer, completion.token_ids)
        return score_completion(task, text, len(completion.token_ids), settings.max_new_tokens)

    greedy = run(prompts, 0.0, [b""] * len(prompts))
    breakdowns = [score(task, completion) for task, completion in zip(tasks, greedy)]
    n = len(tasks)
    sampled_accuracy = pass_at_k = None
    if settings.samples:
        k = settings.samples
        rows = [prompt for prompt in prompts for _ in range(k)]
        sampled = run(rows, EVAL_SAMPLE_TEMPERATURE, sample_keys(settings.seed_text, n, k))
        correct = [score(tasks[i // k], completion).accuracy for i, completion in enumerate(sampled)]
        sampled_accuracy = sum(correct) / len(correct)
        pass_at_k = sum(max(correct[i * k:(i + 1) * k]) >= 1.0 for i in range(n)) / n
    return EvalResult(
        tasks=n,
        accuracy=sum(b.accuracy for b in breakdowns) / n,
        format=sum(b.format for b in breakdowns) / n,
        mean_reward=sum(total_reward(b) for b in breakdowns) / n,
        mean_tokens=sum(len(c.token_ids) for c in greedy) / n,
        samples=settings.samples,
        sampled_accuracy=sampled_accuracy,
        pass_at_k=pass_at_k,
    )
