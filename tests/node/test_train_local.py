import json

import pytest
import torch

from thinkmesh.node.coldstart import ColdStartSettings, run_coldstart
from thinkmesh.node.model_dir import weights_sha256
from thinkmesh.node.train_local import CHECKPOINT_DIR, METRICS_FILE, LocalTrainConfig, train_local


def _config(model_dir, run_dir, **overrides):
    base = dict(model_dir=str(model_dir), run_dir=str(run_dir), task="linear", steps=4, prompts_per_step=4,
                group_size=4, max_new_tokens=32, eval_every=2, eval_tasks=4, checkpoint_every=2)
    base.update(overrides)
    return LocalTrainConfig(**base)


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


@pytest.mark.timeout(120)
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path, coldstarted_micro_dir):
    micro_model_dir = coldstarted_micro_dir
    straight = tmp_path / "straight"
    train_local(_config(micro_model_dir, straight, strategy="grpo"), progress=False)
    interrupted = tmp_path / "interrupted"
    train_local(_config(micro_model_dir, interrupted, strategy="grpo", steps=2), progress=False)
    with (interrupted / METRICS_FILE).open("a") as log:  # a step logged after the checkpoint, then killed
        log.write(json.dumps({"kind": "train", "step": 3, "loss": 9.0}) + "\n")
    summary = train_local(_config(micro_model_dir, interrupted, strategy="grpo"), progress=False, log=lambda _: None)
    assert summary.resumed_from == 2 and summary.step == 4
    assert weights_sha256(interrupted / CHECKPOINT_DIR) == weights_sha256(straight / CHECKPOINT_DIR)
    assert weights_sha256(straight / CHECKPOINT_DIR) != weights_sha256(micro_model_dir)
    lines = _lines(interrupted)
    assert [(l["kind"], l["step"]) for l in lines] == [(l["kind"], l["step"]) for l in _lines(straight)]
    assert all(l.get("loss") != 9.0 for l in lines)
    assert {l["kind"] for l in lines} == {"train", "eval"} and lines[0] == {**lines[0], "kind": "eval", "step": 0}
    assert not list(interrupted.glob(".checkpoint.*")), "no staging directory may be left behind"


@pytest.mark.timeout(120)
def test_grpo_steps_raise_mean_reward_on_their_prompts(coldstarted_micro_dir):
    """Twelve DAPO steps on four fixed prompts: the policy must get better at exactly what it
    was rewarded for. Measured on 64 fresh samples per prompt with a fixed seed (seeded and
    single-threaded, so the figure is reproducible: 0.36 -> 0.51 when written)."""
    import dataclasses

    from thinkmesh.node.model_dir import load_model, load_tokenizer
    from thinkmesh.node.train_step import collect_rollouts, policy_gradient
    from thinkmesh.protocol.strategies import strategy_from_name
    from thinkmesh.protocol.tasks import TaskSpec, generate_task

    model, tokenizer = load_model(coldstarted_micro_dir), load_tokenizer(coldstarted_micro_dir)
    tasks = [generate_task(TaskSpec("linear", 1), b"test", i) for i in range(4)]
    spec = dataclasses.replace(strategy_from_name("dapo"), group_size=8, max_new_tokens=32, overlong_buffer=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    def mean_reward() -> float:
        model.eval()
        wide = dataclasses.replace(spec, group_size=16)
        rollouts = collect_rollouts(model, tokenizer, tasks * 4, wide, "r1-compact", torch.Generator().manual_seed(123))
        return float(rollouts.reward_matrix().mean())

    before = mean_reward()
    for step in range(12):
        model.eval()
        rollouts = collect_rollouts(model, tokenizer, tasks, spec, "r1-compact", torch.Generator().manual_seed(step))
        model.train()
        optimizer.zero_grad(set_to_none=True)
        policy_gradient(model, rollouts, spec, tokenizer.pad_token_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    after = mean_reward()
    assert after > before + 0.08, (before, after)
