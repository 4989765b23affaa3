"""Contribution value: what one contribution's update, applied alone, does to the model.

A contribution's pay follows its verified prompts (`payout.py`); this rule measures what its
gradient is worth, in the spirit of Templar's Gauntlet (a peer scored by a loss before and after its
update), on a validation batch that is public once the round's seed is revealed and the same for
every contributor of the round, so values within a round are a paired comparison.

1. **Batch.** `validation_tasks(spec, round_seed, prompts)`: task i is
   `tasks.trainable_task(spec, sha256(VALUE_SEED_DOMAIN, round_seed), i)`: trainable-side problems
   (the held-out evaluation's problems stay unseen by every stage, this one included).
2. **Rollouts.** `group` completions per prompt from the round's model θ at temperature 1, top_p 1,
   row r of prompt i drawing from the public stream `sampling.row_key(value_seed, VALUE_STREAM_KEY,
   i, r)`; rewards `rewards.total_reward(score_completion(...))`; logprobs under θ by
   `scoring.token_logprobs` (the same function as step 4, so a zero step has value exactly 0).
3. **The update alone.** θ_i = θ - step * sign(g_i) on the trainable parameters: the step a fresh
   Adam takes on g_i alone (its first update is lr * sign(g)). Scaling a gradient does not change
   it, so a node cannot buy value with norm.
4. **Value.** The importance-sampled change in expected reward with a leave-one-out baseline b_j
   (the other completions of the same prompt):
       v_i = mean_j (r_j - b_j) * (exp(log π_θi(y_j) - log π_θ(y_j)) - 1)
   an unbiased estimate of J(θ_i) - J(θ) over the batch's draws (J: mean total reward per
   completion at T = 1, the quantity the strategies' objectives raise). Reward units; > 0 helps.

Determinism: a pure function of (weights, gradient, tokenizer, spec, round seed, settings) on one
device and dtype, up to float-order noise in the logits (`protocol.rules.rollout`). The model is restored
bit for bit after each value (the parameters are copied, not re-added).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from thinkmesh.protocol.rules.adapters import trainable_named_parameters
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.value_summary import Z_95, ValueSummary
from thinkmesh.protocol.rules.rewards import score_completion, total_reward
from thinkmesh.protocol.rules.rollout import SamplingSettings, generate
from thinkmesh.protocol.rules.sampling import row_key, stop_rule_for
from thinkmesh.protocol.rules.scoring import completion_text, prompt_token_ids, token_logprobs
from thinkmesh.protocol.rules.tasks import Task, TaskSpec, render_prompt, trainable_task

VALUE_SEED_DOMAIN = b"thinkmesh/contribution-value/v1"
VALUE_STREAM_KEY = b"thinkmesh/value-sampling/v1"  # the "node key" of the batch's sampling streams
VALUE_PROMPTS = 16
VALUE_GROUP = 4
VALUE_STEP = 3e-4  # per-weight step of rule 3: the devnet coordinator's lr


class ContributionValueError(ProtocolError):
    """A value that cannot be computed: bad settings, or a gradient that does not fit the model."""


@dataclass(frozen=True)
class ValueSettings:
    """Rule settings: `prompts` x `group` validation completions of at most `max_new_tokens`,
    in `template`; `step` is rule 3's per-weight step."""

    prompts: int = VALUE_PROMPTS
    group: int = VALUE_GROUP
    max_new_tokens: int = 48
    template: str = "r1"
    step: float = VALUE_STEP

    def __post_init__(self) -> None:
        if type(self.prompts) is not int or self.prompts < 1:
            raise ContributionValueError(f"value prompts: expected a positive int, got {self.prompts!r}")
        if type(self.group) is not int or self.group < 2:
            raise ContributionValueError(f"value group: expected an int >= 2 (a leave-one-out baseline), got {self.group!r}")
        if type(self.max_new_tokens) is not int or self.max_new_tokens < 1:
            raise ContributionValueError(f"value max_new_tokens: expected a positive int, got {self.max_new_tokens!r}")
        if not (isinstance(self.step, float) and math.isfinite(self.step) and self.step > 0):
            raise ContributionValueError(f"value step: expected a positive finite float, got {self.step!r}")


@dataclass(frozen=True)
class ValidationBatch:
    """Rule 2's fixed completions: flat rows (prompt i's rows are i*group .. i*group+group-1)."""

    prompt_ids: tuple[tuple[int, ...], ...]
    completion_ids: tuple[tuple[int, ...], ...]
    advantages: tuple[float, ...]  # r_j - b_j (leave-one-out)
    logprobs: tuple[float, ...]  # sum of token logprobs under θ
    mean_reward: float


def value_seed(round_seed: bytes) -> bytes:
    return hashlib.sha256(VALUE_SEED_DOMAIN + round_seed).digest()


def validation_tasks(spec: TaskSpec, round_seed: bytes, prompts: int) -> list[Task]:
    """Rule 1: the round's validation problems."""
    seed = value_seed(round_seed)
    return [trainable_task(spec, seed, i) for i in range(prompts)]


def leave_one_out(rewards: Sequence[float], group: int) -> list[float]:
    """r_j minus the mean of the other rewards of its group (groups of `group` consecutive rows)."""
    result = []
    for start in range(0, len(rewards), group):
        chunk = rewards[start:start + group]
        total = sum(chunk)
        result += [r - (total - r) / (len(chunk) - 1) for r in chunk]
    return result


def _sequence_logprobs(model, batch_prompts, batch_completions) -> list[float]:
    rows = token_logprobs(model, batch_prompts, batch_completions, 1.0)
    return [sum(row) for row in rows]


@torch.no_grad()
def validation_batch(model, tokenizer, spec: TaskSpec, round_seed: bytes, settings: ValueSettings = ValueSettings()
                     ) -> ValidationBatch:
    """Rule 2 under the round's model `model` (θ)."""
    tasks = validation_tasks(spec, round_seed, settings.prompts)
    prompts = [tuple(prompt_token_ids(tokenizer, render_prompt(task, settings.template))) for task in tasks]
    rows = [prompt for prompt in prompts for _ in range(settings.group)]
    seed = value_seed(round_seed)
    keys = [row_key(seed, VALUE_STREAM_KEY, i, r) for i in range(len(tasks)) for r in range(settings.group)]
    completions = generate(model, rows, SamplingSettings(1.0, 1.0, settings.max_new_tokens), stop_rule_for(tokenizer),
                           tokenizer.pad_token_id, tokenizer=tokenizer, keys=keys)
    # An empty completion has nothing to score: it keeps its reward, its ratio is 1 (an EOS-first
    # completion still has one token, so this is rare).
    completion_ids = tuple(tuple(c.token_ids) or (tokenizer.eos_token_id,) for c in completions)
    rewards = [total_reward(score_completion(tasks[j // settings.group], completion_text(tokenizer, c.token_ids),
                                             len(c.token_ids), settings.max_new_tokens))
               for j, c in enumerate(completions)]
    return ValidationBatch(
        prompt_ids=tuple(rows), completion_ids=completion_ids,
        advantages=tuple(leave_one_out(rewards, settings.group)),
        logprobs=tuple(_sequence_logprobs(model, rows, completion_ids)),
        mean_reward=sum(rewards) / len(rewards),
    )


def value_of_logprobs(batch: ValidationBatch, logprobs_after: Sequence[float]) -> float:
    """Rule 4 from the batch and its sequence logprobs under θ_i."""
    if len(logprobs_after) != len(batch.logprobs):
        raise ContributionValueError(f"expected {len(batch.logprobs)} sequence logprobs, got {len(logprobs_after)}")
    terms = [a * (math.exp(min(after - before, 50.0)) - 1.0)
             for a, before, after in zip(batch.advantages, batch.logprobs, logprobs_after)]
    return sum(terms) / len(terms)


@torch.no_grad()
def contribution_value(model, batch: ValidationBatch, gradients: Mapping[str, Tensor], step: float = VALUE_STEP
                       ) -> float:
    """Rules 3-4 for one gradient (float32 tensors named as the model's trainable parameters);
    `model` is θ on entry and on return."""
    params = dict(trainable_named_parameters(model))
    if sorted(params) != sorted(gradients):
        raise ContributionValueError("gradient names do not match the model's trainable parameters")
    saved = {name: p.detach().clone() for name, p in params.items()}
    try:
        for name, p in params.items():
            p.sub_(step * torch.sign(gradients[name].to(device=p.device, dtype=p.dtype)))
        after = _sequence_logprobs(model, batch.prompt_ids, batch.completion_ids)
    finally:
        for name, p in params.items():
            p.copy_(saved[name])
    return value_of_logprobs(batch, after)


def contribution_values(model, tokenizer, spec: TaskSpec, round_seed: bytes, gradients: Sequence[Mapping[str, Tensor]],
                        settings: ValueSettings = ValueSettings()) -> tuple[list[float], ValidationBatch]:
    """Every gradient's value on the round's one validation batch (rules 1-4), and the batch."""
    batch = validation_batch(model, tokenizer, spec, round_seed, settings)
    return [contribution_value(model, batch, g, settings.step) for g in gradients], batch


def valued_indices(round_seed: bytes, node_keys: Sequence[bytes], limit: int) -> list[int]:
    """Which of a round's accepted contributions (by their nodes' keys) are valued when there are
    more than `limit`: the `limit` with the lowest sha256(value_seed || node key), in input order.
    A public draw, fixed by the round's seed before any contribution arrives, so a node cannot choose
    to be valued or not; each node's chance is limit / accepted, whatever its strategy."""
    if type(limit) is not int or limit < 1:
        raise ContributionValueError(f"value limit: expected a positive int, got {limit!r}")
    seed = value_seed(round_seed)
    ranked = sorted(range(len(node_keys)), key=lambda i: hashlib.sha256(seed + bytes(node_keys[i])).digest())
    return sorted(ranked[:limit])


def mean_and_interval(values: Sequence[float], z: float = Z_95) -> tuple[float, float]:
    """(mean, half-width of its normal-approximation confidence interval): z * sd / sqrt(n); 0 for n < 2.
    The rule the dashboard applies to the values on chain (`value_summary.ValueSummary`)."""
    if not values:
        raise ContributionValueError("expected at least one value, got none")
    summary = ValueSummary.of(values)
    return summary.mean, summary.half_width(z)
