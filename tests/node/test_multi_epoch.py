import dataclasses

import pytest
import torch

from thinkmesh.node.model.model_dir import load_model, load_tokenizer
from thinkmesh.node.local.multi_epoch import multi_epoch_update
from thinkmesh.node.work.train_step import collect_rollouts, policy_gradient
from thinkmesh.protocol.rules.rewards import RewardBreakdown
from thinkmesh.protocol.rules.strategies import strategy_from_name
from thinkmesh.protocol.rules.tasks import TaskSpec, generate_task


def _setup(model_dir, seed=0):
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    tasks = [generate_task(TaskSpec("linear", 1), b"epochs", i) for i in range(3)]
    spec = dataclasses.replace(strategy_from_name("dapo"), group_size=4, max_new_tokens=16, overlong_buffer=4)
    rollouts = collect_rollouts(model, tokenizer, tasks, spec, "r1-compact", torch.Generator().manual_seed(seed))
    right, wrong = RewardBreakdown(1.0, 1.0, 1.0, 0.0), RewardBreakdown(0.0, 1.0, 1.0, 0.0)
    rewards = (wrong,) * 4 + (right, wrong, wrong, right) + (right, right, wrong, right)
    return model, tokenizer, spec, dataclasses.replace(rollouts, rewards=rewards)


def _adam(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)


@pytest.mark.timeout(60)
def test_one_epoch_is_exactly_the_single_update_step(coldstarted_micro_dir):
    model, tokenizer, spec, rollouts = _setup(coldstarted_micro_dir)
    optimizer = _adam(model)
    optimizer.zero_grad(set_to_none=True)
    single = policy_gradient(model, rollouts, spec, tokenizer.pad_token_id)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    expected = [p.detach().clone() for p in model.parameters()]

    model = load_model(coldstarted_micro_dir)
    result = multi_epoch_update(model, _adam(model), rollouts, spec, tokenizer.pad_token_id, 1, 1.0)
    assert result.first.kept_groups == single.kept_groups == 2
    assert result.first.loss == pytest.approx(single.loss, rel=1e-5, abs=1e-7)
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.timeout(60)
def test_later_epochs_score_the_batch_against_the_first_pass(coldstarted_micro_dir):
    """After the first update the ratio moves off 1, so later epochs must see it (a clip
    fraction above 0 at a high lr) and take one optimizer step each."""
    model, tokenizer, spec, rollouts = _setup(coldstarted_micro_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    result = multi_epoch_update(model, optimizer, rollouts, spec, tokenizer.pad_token_id, 3, 1.0)
    assert result.first.stats.clip_fraction == 0.0
    assert len(result.grad_norms) == 3
    assert result.last_clip_fraction > 0.0
    assert all(state["step"] == 3 for state in optimizer.state.values())


@pytest.mark.timeout(60)
def test_no_informative_group_means_no_step(coldstarted_micro_dir):
    model, tokenizer, spec, rollouts = _setup(coldstarted_micro_dir)
    flat = dataclasses.replace(rollouts, rewards=(RewardBreakdown(1.0, 1.0, 1.0, 0.0),) * 12)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = _adam(model)
    result = multi_epoch_update(model, optimizer, flat, spec, tokenizer.pad_token_id, 4, 1.0)
    assert result.first.kept_groups == 0 and result.grad_norms == ()
    assert not optimizer.state
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
