"""The RL step without the optimizer: rollouts -> rule rewards -> GRPO loss -> gradient.

Local training (`thinkmesh.node.local.train_local`) adds `optimizer.step()` after `policy_gradient`;
the mesh sends the gradient it leaves in `.grad` to the coordinator instead. Both run the same
two calls, so a node's contribution is exactly one local-training step's gradient.

What the verifier can recompute from a contribution: prompts (`task_for_node`), prompt ids
(`prompt_token_ids`), rewards (`score_completion` on `completion_text`), and the loss
(`strategy_loss` over `completion_logprobs`). The loss uses the *recomputed* logprobs, detached,
as the old policy (one update per batch, ratio 1), so the gradient depends on the samples and the
model only, never on logprobs a node claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from thinkmesh.node.model.memory_fit import MemoryFit
from thinkmesh.protocol.rules.rollout import Completion, SamplingSettings, generate, row_keys, stop_rule_for
from thinkmesh.protocol.rules.grpo import (
    LossStats,
    dynamic_sampling_mask,
    group_advantages,
    overlong_penalty,
    policy_loss,
    strategy_loss,
)
from thinkmesh.protocol.rules.rewards import RewardBreakdown, RewardConfig, score_completion, total_reward
from thinkmesh.protocol.rules.scoring import completion_logprobs, completion_text, prompt_token_ids
from thinkmesh.protocol.rules.strategies import StrategySpec
from thinkmesh.protocol.rules.tasks import Task, render_prompt


@dataclass(frozen=True)
class ScoredRollouts:
    """G completions per task, groups contiguous (row i belongs to task i // group_size)."""

    tasks: tuple[Task, ...]
    prompt_ids: tuple[tuple[int, ...], ...]  # one per task
    completions: tuple[Completion, ...]
    texts: tuple[str, ...]
    rewards: tuple[RewardBreakdown, ...]
    group_size: int

    def reward_matrix(self, config: RewardConfig = RewardConfig()) -> torch.Tensor:
        """Total rule rewards as float32 [num_groups, G] (length shaping left to the loss)."""
        totals = [total_reward(r, config) for r in self.rewards]
        return torch.tensor(totals, dtype=torch.float32).reshape(-1, self.group_size)

    @property
    def accuracy(self) -> float:
        return sum(r.accuracy for r in self.rewards) / max(len(self.rewards), 1)


@dataclass(frozen=True)
class GradientResult:
    """What `policy_gradient` did: the loss value, the objective's stats, kept groups."""

    loss: float
    stats: LossStats
    kept_groups: int


def encode_prompts(tokenizer, tasks: Sequence[Task], template: str) -> list[tuple[int, ...]]:
    return [tuple(prompt_token_ids(tokenizer, render_prompt(task, template))) for task in tasks]


def collect_rollouts(
    model,
    tokenizer,
    tasks: Sequence[Task],
    strategy: StrategySpec,
    template: str,
    generator: torch.Generator | None,
    reward_config: RewardConfig = RewardConfig(),
    fit: MemoryFit | None = None,
    keys: Sequence[bytes] | None = None,
) -> ScoredRollouts:
    """Samples `strategy.group_size` completions per task and scores them with the rule rewards.

    `keys`: one sampling stream key per row (a mesh node's public `sampling.group_row_keys`); else
    private keys drawn from `generator`.

    Rewards are scored with overlong_buffer 0: DAPO's length shaping is applied once, inside
    `strategy_loss`, from the completion lengths.
    """
    prompts = encode_prompts(tokenizer, tasks, template)
    repeated = [ids for ids in prompts for _ in range(strategy.group_size)]
    settings = SamplingSettings(strategy.temperature, strategy.top_p, strategy.max_new_tokens)
    stop = stop_rule_for(tokenizer)
    if keys is None:
        keys = row_keys(generator, len(repeated)) if settings.temperature > 0 else [b""] * len(repeated)
    if len(keys) != len(repeated):
        raise ValueError(f"expected one stream key per row ({len(repeated)}), got {len(keys)}")
    fit = fit or MemoryFit()
    device = next(model.parameters()).device
    completions: list[Completion] = []
    while len(completions) < len(repeated):
        start = len(completions)

        def attempt(size: int, start: int = start) -> list[Completion]:
            return generate(model, repeated[start: start + size], settings, stop, tokenizer.pad_token_id,
                            tokenizer=tokenizer, keys=keys[start: start + size])

        completions += fit.run("rollout", len(repeated) - start, attempt, device)
    texts, rewards = [], []
    for index, completion in enumerate(completions):
        text = completion_text(tokenizer, completion.token_ids)
        task = tasks[index // strategy.group_size]
        texts.append(text)
        rewards.append(score_completion(task, text, len(completion.token_ids), strategy.max_new_tokens, 0, reward_config))
    return ScoredRollouts(tuple(tasks), tuple(prompts), tuple(completions), tuple(texts), tuple(rewards), strategy.group_size)


def policy_gradient(
    model,
    rollouts: ScoredRollouts,
    strategy: StrategySpec,
    pad_token_id: int,
    reference_model=None,
    reward_config: RewardConfig = RewardConfig(),
    fit: MemoryFit | None = None,
) -> GradientResult:
    """Backpropagates the strategy's loss into `model`'s `.grad` (accumulating; zero it first).

    `reference_model` is needed only when `strategy.beta > 0` (k3 KL to the reference).
    With dynamic sampling, groups whose rewards are all equal are dropped *before* the forward
    pass: `strategy_loss` would drop them anyway (they carry no gradient), so the gradient is the
    same while the update costs only the informative groups (often half the batch or less).
    """
    rewards = rollouts.reward_matrix(reward_config)
    groups = list(range(rewards.shape[0]))
    if strategy.dynamic_sampling:
        informative = [g for g, keep in enumerate(dynamic_sampling_mask(rewards).tolist()) if keep]
        groups = informative or groups  # none informative: strategy_loss returns its zero loss
    rows = [g * rollouts.group_size + k for g in groups for k in range(rollouts.group_size)]
    rewards = rewards[groups]
    prompts = [rollouts.prompt_ids[i // rollouts.group_size] for i in rows]
    completions = [rollouts.completions[i].token_ids for i in rows]
    if strategy.beta > 0 and reference_model is None:
        raise ValueError(f"strategy {strategy.name!r} has beta={strategy.beta}: expected a reference model, got None")
    batch = _LossBatch(prompts, completions, rewards, strategy, pad_token_id, reference_model)
    fit = fit or MemoryFit()
    before = _gradient_state(model)

    def attempt(size: int) -> tuple[float, LossStats]:
        return batch.backward_whole(model) if size >= len(rows) else batch.backward_micro(model, size)

    loss, stats = fit.run("micro", len(rows), attempt, next(model.parameters()).device,
                          on_retry=lambda: _restore_gradients(model, before))
    return GradientResult(loss, stats, stats.num_sequences // rollouts.group_size)


class _LossBatch:
    """The rows `policy_gradient` backpropagates, in one pass or in micro-batches."""

    def __init__(self, prompts, completions, rewards: torch.Tensor, strategy: StrategySpec, pad_token_id: int,
                 reference_model):
        self.prompts, self.completions, self.rewards = prompts, completions, rewards
        self.strategy, self.pad_token_id, self.reference_model = strategy, pad_token_id, reference_model

    def _scored(self, model, rows: list[int]):
        prompts = [self.prompts[i] for i in rows]
        completions = [self.completions[i] for i in rows]
        temperature = self.strategy.temperature
        scored = completion_logprobs(model, prompts, completions, temperature, self.pad_token_id)
        reference = None
        if self.strategy.beta > 0:
            with torch.no_grad():
                reference = completion_logprobs(self.reference_model, prompts, completions, temperature,
                                                self.pad_token_id).logprobs
        return scored, reference

    def backward_whole(self, model) -> tuple[float, LossStats]:
        """`strategy_loss` over every row in one forward: exactly the verifier's computation."""
        scored, reference = self._scored(model, list(range(len(self.prompts))))
        device = scored.logprobs.device
        loss, stats = strategy_loss(scored.logprobs, scored.logprobs.detach(), self.rewards.to(device), scored.mask,
                                    self.strategy, reference)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach()), stats

    def backward_micro(self, model, size: int) -> tuple[float, LossStats]:
        """`strategy_loss`'s steps (dynamic sampling, overlong shaping, group advantages) on the whole
        batch, then `policy_loss` per micro-batch scaled by its share of the batch's normaliser."""
        spec, group_size = self.strategy, self.rewards.shape[1]
        lengths = torch.tensor([len(c) for c in self.completions], dtype=torch.long)
        keep = dynamic_sampling_mask(self.rewards) if spec.dynamic_sampling else torch.ones(len(self.rewards), dtype=torch.bool)
        shaped = self.rewards.float() + overlong_penalty(lengths.reshape(-1, group_size), spec).float()
        advantages = group_advantages(shaped[keep], spec).reshape(-1)
        kept = [row for row, k in enumerate(keep.repeat_interleave(group_size).tolist()) if k]
        kept_lengths = lengths[kept]
        total = float(kept_lengths.sum()) if spec.loss == "dapo" else float(len(kept))
        loss_sum, parts = 0.0, []
        for start in range(0, len(kept), size):
            rows = kept[start: start + size]
            scored, reference = self._scored(model, rows)
            device = scored.logprobs.device
            part_loss, stats = policy_loss(scored.logprobs, scored.logprobs.detach(),
                                           advantages[start: start + size].to(device), scored.mask, spec, reference)
            share = (float(kept_lengths[start: start + size].sum()) if spec.loss == "dapo" else float(len(rows))) / total
            (part_loss * share).backward()
            loss_sum += float(part_loss.detach()) * share
            parts.append(stats)
        return loss_sum, _merged_stats(parts, spec.loss == "gspo")


def _merged_stats(parts: list[LossStats], sequence_level: bool) -> LossStats:
    """Micro-batch stats as one batch's: fractions weighted by what each part counted."""
    if not parts:
        return LossStats(0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    weights = [p.num_sequences if sequence_level else p.num_tokens for p in parts]
    tokens = sum(p.num_tokens for p in parts)
    norm = max(sum(weights), 1)

    def mean(field: str) -> float:
        return sum(getattr(p, field) * w for p, w in zip(parts, weights)) / norm

    return LossStats(
        clip_fraction=mean("clip_fraction"), low_clip_fraction=mean("low_clip_fraction"),
        high_clip_fraction=mean("high_clip_fraction"),
        kl=sum(p.kl * p.num_tokens for p in parts) / max(tokens, 1), mean_ratio=mean("mean_ratio"),
        num_sequences=sum(p.num_sequences for p in parts), num_tokens=tokens,
    )


def _gradient_state(model) -> list[torch.Tensor | None]:
    """The `.grad`s before a backward, to undo a pass that ran out of memory half-way (free when all None)."""
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def _restore_gradients(model, state: list[torch.Tensor | None]) -> None:
    for parameter, grad in zip(model.parameters(), state):
        parameter.grad = None if grad is None else grad.clone()
