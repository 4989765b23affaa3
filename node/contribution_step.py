"""One round's work on a node: rollouts -> rewards -> advantages -> loss -> gradient (no step).

The mesh's thin adapter over the RL core: prompts come from `task_for_node` (so the verifier can
regenerate them), completions from the rollout engine with their logprobs, rewards from
`score_completion`, and the loss from `strategy_loss` with the node's declared strategy. The
gradient is returned, not applied: the coordinator owns the optimizer. Synchronous and
CPU/GPU-bound; the daemon calls it from a worker thread.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from thinkmesh.node.rollout import SamplingSettings, generate, stop_rule_for
from thinkmesh.protocol.grpo import strategy_loss
from thinkmesh.protocol.messages import RoundAnnouncement, Sample
from thinkmesh.protocol.rewards import score_completion, total_reward
from thinkmesh.protocol.scoring import completion_logprobs
from thinkmesh.protocol.strategies import StrategySpec
from thinkmesh.protocol.tasks import render_prompt, task_for_node

SAMPLING_SEED_DOMAIN = b"thinkmesh/node-sampling/v1"


@dataclass(frozen=True)
class StepResult:
    samples: tuple[Sample, ...]
    gradients: dict[str, Tensor]
    loss: float
    mean_reward: float
    accuracy: float
    rollout_s: float
    backward_s: float


def sampling_seed(announcement: RoundAnnouncement, node_key: bytes) -> int:
    digest = hashlib.sha256(SAMPLING_SEED_DOMAIN + announcement.seed + node_key).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rollout_and_gradient(
    model, tokenizer, announcement: RoundAnnouncement, node_key: bytes, strategy: StrategySpec, template: str = "r1"
) -> StepResult:
    """The samples and gradient of this node's share of `announcement` (see module docstring)."""
    started = time.perf_counter()
    group = strategy.group_size
    tasks = [task_for_node(announcement.task, announcement.seed, node_key, i) for i in range(announcement.prompts_per_node)]
    prompt_ids = [tokenizer.encode(render_prompt(t, template), add_special_tokens=False) for t in tasks]
    repeated = [ids for ids in prompt_ids for _ in range(group)]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(sampling_seed(announcement, node_key))
    settings = SamplingSettings(strategy.temperature, strategy.top_p, strategy.max_new_tokens)
    completions = generate(
        model, repeated, settings, stop_rule_for(tokenizer), tokenizer.pad_token_id, generator, tokenizer
    )
    samples = []
    for index, completion in enumerate(completions):
        task = tasks[index // group]
        text = tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
        rewards = score_completion(task, text, len(completion.token_ids), strategy.max_new_tokens, strategy.overlong_buffer)
        samples.append(Sample(prompt_index=index // group, completion_ids=completion.token_ids,
                              logprobs=tuple(float(x) for x in completion.logprobs), rewards=rewards))
    rollout_s = time.perf_counter() - started

    started = time.perf_counter()
    model.zero_grad(set_to_none=True)
    scored = completion_logprobs(model, repeated, [c.token_ids for c in completions], strategy.temperature,
                                 tokenizer.pad_token_id)
    rewards = torch.tensor([total_reward(s.rewards) for s in samples], dtype=torch.float32).reshape(-1, group)
    loss, _stats = strategy_loss(scored.logprobs, scored.logprobs.detach(), rewards.to(scored.logprobs.device),
                                 scored.mask, strategy)
    loss.backward()
    gradients = {
        name: (p.grad.detach().to("cpu", torch.float32).clone() if p.grad is not None else torch.zeros(p.shape))
        for name, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return StepResult(
        samples=tuple(samples), gradients=gradients, loss=float(loss.detach()),
        mean_reward=float(rewards.mean()), accuracy=sum(s.rewards.accuracy for s in samples) / len(samples),
        rollout_s=rollout_s, backward_s=time.perf_counter() - started,
    )
