"""The contribution value on a real (micro) model: what the coordinator computes per contribution."""

from __future__ import annotations

import torch

from thinkmesh.node.model.model_dir import load_model, load_tokenizer
from thinkmesh.protocol.rules.contribution_value import ValueSettings, contribution_value, validation_batch
from thinkmesh.protocol.rules.scoring import completion_logprobs
from thinkmesh.protocol.rules.tasks import TaskSpec

SETTINGS = ValueSettings(prompts=4, group=4, max_new_tokens=16, template="r1-compact", step=1e-3)
SEED = bytes(range(32))


def _batch_objective_gradient(model, batch) -> dict:
    """The gradient of -mean_j A_j log π(y_j) on the batch itself: a step against it raises the
    batch's own importance-sampled reward, so its value must be positive."""
    model.zero_grad(set_to_none=True)
    scored = completion_logprobs(model, batch.prompt_ids, batch.completion_ids, 1.0)
    advantages = torch.tensor(batch.advantages)
    (-(advantages * scored.logprobs.sum(dim=-1)).mean()).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def test_value_rewards_the_batchs_own_ascent_ignores_scale_and_restores_the_model(coldstarted_micro_dir):
    model, tokenizer = load_model(coldstarted_micro_dir), load_tokenizer(coldstarted_micro_dir)
    batch = validation_batch(model, tokenizer, TaskSpec("linear", 1), SEED, SETTINGS)
    assert batch == validation_batch(model, tokenizer, TaskSpec("linear", 1), SEED, SETTINGS)
    assert any(a != 0 for a in batch.advantages), "the micro cold start should be right only sometimes"
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    gradient = _batch_objective_gradient(model, batch)

    good = contribution_value(model, batch, gradient, SETTINGS.step)
    assert good > 0
    assert contribution_value(model, batch, {n: 1000 * g for n, g in gradient.items()}, SETTINGS.step) == good
    assert contribution_value(model, batch, {n: -g for n, g in gradient.items()}, SETTINGS.step) < 0
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
