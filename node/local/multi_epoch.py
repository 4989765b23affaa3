"""Several clipped policy updates per batch of rollouts (PPO's epochs), for local training only.

Sampling is the expensive half of a CPU step, and one gradient step per batch throws the batch
away after a single use. Reusing it for `epochs` updates is what the clipped ratio exists for:
the first update is exactly `policy_gradient`'s (old == current, ratio 1); later ones score the
same samples under the updated weights against the first pass's logprobs, so the clip bounds how
far the batch can pull the policy.

The mesh never uses this: a contribution is one step's gradient at ratio 1, which is what the
verifier recomputes. The loss math is the protocol's `strategy_loss`, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinkmesh.node.work.train_step import GradientResult, ScoredRollouts
from thinkmesh.protocol.rules.grpo import LossStats, dynamic_sampling_mask, strategy_loss
from thinkmesh.protocol.rules.rewards import RewardConfig
from thinkmesh.protocol.rules.scoring import completion_logprobs
from thinkmesh.protocol.rules.strategies import StrategySpec


@dataclass(frozen=True)
class EpochsResult:
    """The first epoch's result (what a one-update step would report), the last epoch's clip
    fraction (how far the reuse pushed the ratio), and the gradient norm of each update."""

    first: GradientResult
    last_clip_fraction: float
    grad_norms: tuple[float, ...]


def multi_epoch_update(
    model,
    optimizer,
    rollouts: ScoredRollouts,
    strategy: StrategySpec,
    pad_token_id: int,
    epochs: int,
    max_grad_norm: float,
    reference_model=None,
    reward_config: RewardConfig = RewardConfig(),
) -> EpochsResult:
    """Runs `epochs` optimizer steps on `rollouts`; the caller has set the learning rate.

    No step is taken when no group is informative under dynamic sampling (all advantages 0).
    """
    if epochs < 1:
        raise ValueError(f"expected epochs >= 1, got {epochs}")
    rewards = rollouts.reward_matrix(reward_config)
    groups = list(range(rewards.shape[0]))
    if strategy.dynamic_sampling:
        groups = [g for g, keep in enumerate(dynamic_sampling_mask(rewards).tolist()) if keep]
    rows = [g * rollouts.group_size + k for g in groups for k in range(rollouts.group_size)]
    prompts = [rollouts.prompt_ids[i // rollouts.group_size] for i in rows]
    completions = [rollouts.completions[i].token_ids for i in rows]
    device = next(model.parameters()).device
    rewards = rewards[groups].to(device)
    reference = None
    if rows and strategy.beta > 0:
        if reference_model is None:
            raise ValueError(f"strategy {strategy.name!r} has beta={strategy.beta}: expected a reference model, got None")
        with torch.no_grad():
            reference = completion_logprobs(reference_model, prompts, completions, strategy.temperature, pad_token_id).logprobs
    old = None
    first = None
    clip_fraction = 0.0
    grad_norms = []
    for _ in range(epochs if rows else 0):
        optimizer.zero_grad(set_to_none=True)
        scored = completion_logprobs(model, prompts, completions, strategy.temperature, pad_token_id)
        if old is None:
            old = scored.logprobs.detach()
        loss, stats = strategy_loss(scored.logprobs, old, rewards, scored.mask, strategy, reference)
        loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)))
        optimizer.step()
        clip_fraction = stats.clip_fraction
        if first is None:
            first = GradientResult(float(loss.detach()), stats, stats.num_sequences // rollouts.group_size)
    if first is None:
        first = GradientResult(0.0, LossStats(0.0, 0.0, 0.0, 0.0, 1.0, 0, 0), 0)
    return EpochsResult(first, clip_fraction, tuple(grad_norms))
