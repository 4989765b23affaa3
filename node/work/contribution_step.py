"""One round's work on an honest node: rollouts -> rewards -> gradient (no step), signed.

The RL core's own step (`collect_rollouts` -> `policy_gradient`, node/work/train_step.py) on the
prompts the protocol assigns this node, so the verifier, which rebuilds prompts and rewards with
protocol/ alone, sees exactly what the node computed. The gradient is sent, not applied: the
coordinator owns the optimizer. Synchronous and CPU/GPU-bound; the daemon calls it from a worker
thread. A `MemoryFit` (kept by the daemon across rounds) sizes the rollout and backward batches;
it changes memory use, not the contribution.

In a generation round (`protocol/rules/generation.py`) the same rollouts are sent with an empty gradient:
no backward, no tensors; the coordinator pays the correct, well-formed traces among them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from thinkmesh.node.model.memory_fit import MemoryFit
from thinkmesh.node.work.train_step import collect_rollouts, encode_prompts, policy_gradient
from thinkmesh.protocol.rules.adapters import trainable_named_parameters
from thinkmesh.protocol.rules.generation import is_generation
from thinkmesh.protocol.rules.gradient_codec import encode_gradient
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import (
    Contribution,
    GradientPayload,
    RoundAnnouncement,
    Sample,
    samples_root,
    sign_message,
)
from thinkmesh.protocol.rules.sampling import group_row_keys
from thinkmesh.protocol.rules.strategies import StrategySpec
from thinkmesh.protocol.rules.verification import node_tasks

def _rollouts(model, tokenizer, announcement: RoundAnnouncement, node_key: bytes, strategy: StrategySpec,
              reference_model=None, fit: MemoryFit | None = None):
    tasks = node_tasks(announcement, node_key)
    if fit is not None:
        fit.begin_round()
        longest = max((len(ids) for ids in encode_prompts(tokenizer, tasks, announcement.prompt_template)), default=0)
        fit.plan_once(model, longest, strategy.max_new_tokens, extra_models=int(reference_model is not None))
    keys = group_row_keys(announcement.seed, node_key, len(tasks), strategy.group_size)
    return collect_rollouts(model, tokenizer, tasks, strategy, announcement.prompt_template, None, fit=fit, keys=keys)


def _samples(rollouts, strategy: StrategySpec) -> tuple[Sample, ...]:
    return tuple(
        Sample(i // strategy.group_size, c.token_ids, tuple(float(x) for x in c.logprobs), r)
        for i, (c, r) in enumerate(zip(rollouts.completions, rollouts.rewards))
    )


def generation_samples(
    model, tokenizer, announcement: RoundAnnouncement, node_key: bytes, strategy: StrategySpec,
    fit: MemoryFit | None = None,
) -> tuple[Sample, ...]:
    """This node's samples for `announcement` without a gradient: a generation round's work."""
    with torch.no_grad():
        return _samples(_rollouts(model, tokenizer, announcement, node_key, strategy, None, fit), strategy)


def samples_and_gradients(
    model, tokenizer, announcement: RoundAnnouncement, node_key: bytes, strategy: StrategySpec, reference_model=None,
    fit: MemoryFit | None = None,
) -> tuple[tuple[Sample, ...], dict[str, Tensor]]:
    """This node's samples for `announcement` and the float32 CPU gradient they produce.

    Every row draws from its public stream (`sampling.group_row_keys` of the round seed and the node
    key), so the samples are a pure function of public values that the verifier replays.
    `strategy` must be within the round's terms (`terms.strategy_under_terms`). Leaves `model.grad` empty. `fit` (None: whole batches, no planning) is planned on its first
    round from the longest prompt and `max_new_tokens`."""
    rollouts = _rollouts(model, tokenizer, announcement, node_key, strategy, reference_model, fit)
    model.zero_grad(set_to_none=True)
    policy_gradient(model, rollouts, strategy, tokenizer.pad_token_id, reference_model, fit=fit)
    gradients = {
        name: (p.grad.detach().to("cpu", torch.float32).clone() if p.grad is not None else torch.zeros(p.shape))
        for name, p in trainable_named_parameters(model)  # an adapter round: the adapter's alone
    }
    model.zero_grad(set_to_none=True)
    return _samples(rollouts, strategy), gradients


def honest_contribution(
    model, tokenizer, announcement: RoundAnnouncement, identity: NodeIdentity, strategy: StrategySpec,
    compression: str = "none", reference_model=None, fit: MemoryFit | None = None,
) -> Contribution:
    """What an honest node sends for `announcement`, encoded and signed (in a generation round,
    its samples with an empty gradient)."""
    if is_generation(announcement):
        samples = generation_samples(model, tokenizer, announcement, identity.public_key, strategy, fit)
        gradient = GradientPayload(compression, ())
    else:
        samples, gradients = samples_and_gradients(
            model, tokenizer, announcement, identity.public_key, strategy, reference_model, fit
        )
        gradient = encode_gradient(gradients, compression)
    return sign_message(Contribution(
        chain_id=announcement.chain_id, run_id=announcement.run_id, round_id=announcement.round_id,
        node_key=identity.public_key, model_hash=announcement.model_hash, strategy=strategy,
        samples=samples, samples_root=samples_root(samples), gradient=gradient,
    ), identity)
