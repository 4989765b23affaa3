"""The RL step without the optimizer: rollouts -> rule rewards -> GRPO loss -> gradient.

Local training (`thinkmesh.node.train_local`) adds `optimizer.step()` after `policy_gradient`;
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

from thinkmesh.node.rollout import Completion, SamplingSettings, generate, stop_rule_for
from thinkmesh.protocol.grpo import LossStats, dynamic_sampling_mask, strategy_loss
from thinkmesh.protocol.rewards import RewardBreakdown, RewardConfig, score_completion, total_reward
from thinkmesh.protocol.scoring import completion_logprobs, completion_text, prompt_token_ids
from thinkmesh.protocol.strategies import StrategySpec
from thinkmesh.protocol.tasks import Task, render_prompt


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
) -> ScoredRollouts:
    """Samples `strategy.group_size` completions per task and scores them with the rule rewards.

    Rewards are scored with overlong_buffer 0: DAPO's length shaping is applied once, inside
    `strategy_loss`, from the completion lengths.
    """
    prompts = encode_prompts(tokenizer, tasks, template)
    repeated = [ids for ids in prompts for _ in range(strategy.group_size)]
    settings = SamplingSettings(strategy.temperature, strategy.top_p, strategy.max_new_tokens)
    completions = generate(
        model, repeated, settings, stop_rule_for(tokenizer), tokenizer.pad_token_id, generator, tokenizer
    )
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
    device = next(model.parameters()).device
    scored = completion_logprobs(model, prompts, completions, strategy.temperature, pad_token_id)
    reference = None
    if strategy.beta > 0:
        if reference_model is None:
            raise ValueError(f"strategy {strategy.name!r} has beta={strategy.beta}: expected a reference model, got None")
        with torch.no_grad():
            reference = completion_logprobs(reference_model, prompts, completions, strategy.temperature, pad_token_id).logprobs
    loss, stats = strategy_loss(scored.logprobs, scored.logprobs.detach(), rewards.to(device), scored.mask, strategy, reference)
    if loss.requires_grad:
        loss.backward()
    kept = stats.num_sequences // rollouts.group_size
    return GradientResult(float(loss.detach()), stats, kept)
