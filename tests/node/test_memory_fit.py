"""Fitting the round to memory: plans, the OOM halving, and that neither changes the contribution."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thinkmesh.node.model.memory_fit import (
    MemoryFit,
    free_memory_bytes,
    is_out_of_memory,
    plan_batch_sizes,
    sequence_cost,
)

CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes."
# Micro-batching reorders float32 sums (and pads each micro-batch to its own width): the measured
# gap to the one-batch gradient is ~1e-7 relative to the gradient's largest entry.
GRADIENT_RTOL = 1e-5


@pytest.fixture(scope="module")
def engine(micro_model_dir):
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.protocol.rules.tasks import TaskSpec, generate_task

    model, tokenizer = load_model(micro_model_dir), load_tokenizer(micro_model_dir)
    tasks = [generate_task(TaskSpec("linear", 1), b"fit", i) for i in range(3)]
    return model, tokenizer, tasks


def _varied_rewards(count: int, seed: int):
    """Rule rewards with spread inside every group but the last (all equal, so dynamic sampling drops it)."""
    from thinkmesh.protocol.rules.rewards import RewardBreakdown

    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(count, generator=gen).tolist()
    values[-4:] = [0.5] * 4
    return tuple(RewardBreakdown(v, 1.0 - v, 1.0, 0.0) for v in values)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo", "gspo", "rloo"])
def test_micro_batched_gradient_equals_the_one_batch_gradient(engine, preset):
    from thinkmesh.node.work.train_step import collect_rollouts, policy_gradient
    from thinkmesh.protocol.rules.strategies import strategy_from_name

    model, tokenizer, tasks = engine
    spec = dataclasses.replace(strategy_from_name(preset), group_size=4, max_new_tokens=12)
    if spec.overlong_buffer:
        spec = dataclasses.replace(spec, overlong_buffer=4)
    reference = copy.deepcopy(model).requires_grad_(False) if spec.beta > 0 else None
    if reference is not None:  # a reference that differs, so the KL term has a gradient
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    for seed in range(1, 9):  # the first sampling seed whose completions differ in length (a cold-started model is terse)
        sampled = collect_rollouts(model, tokenizer, tasks, spec, "r1-compact", torch.Generator().manual_seed(seed))
        if len({len(c.token_ids) for c in sampled.completions}) > 1:
            break
    rollouts = dataclasses.replace(sampled, rewards=_varied_rewards(len(sampled.completions), 7))
    assert len({len(c.token_ids) for c in rollouts.completions}) > 1, "lengths must differ to test the weighting"

    def gradient(fit):
        model.zero_grad(set_to_none=True)
        result = policy_gradient(model, rollouts, spec, tokenizer.pad_token_id, reference, fit=fit)
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return result, torch.cat([g.flatten() for g in grads])

    whole_result, whole = gradient(None)
    for micro in (1, 3):
        result, micro_grad = gradient(MemoryFit(micro_batch=micro))
        assert whole.abs().max() > 0
        assert (micro_grad - whole).abs().max() <= GRADIENT_RTOL * whole.abs().max(), (preset, micro)
        assert result.loss == pytest.approx(whole_result.loss, rel=1e-5, abs=1e-7)
        assert result.stats.num_sequences == whole_result.stats.num_sequences
        assert result.stats.num_tokens == whole_result.stats.num_tokens
        assert result.stats.kl == pytest.approx(whole_result.stats.kl, rel=1e-4, abs=1e-9)


@pytest.mark.timeout(60)
def test_rollouts_do_not_depend_on_the_rollout_batch(engine):
    from thinkmesh.node.work.train_step import collect_rollouts
    from thinkmesh.protocol.rules.strategies import strategy_from_name

    model, tokenizer, tasks = engine
    spec = dataclasses.replace(strategy_from_name("dapo"), group_size=4, max_new_tokens=16, overlong_buffer=4)
    runs = [collect_rollouts(model, tokenizer, tasks, spec, "r1-compact", torch.Generator().manual_seed(3), fit=fit)
            for fit in (None, MemoryFit(rollout_batch=1), MemoryFit(rollout_batch=5))]
    whole = runs[0]
    assert len({c.token_ids for c in whole.completions}) > 1, "samples of a group must differ"
    for run in runs[1:]:
        assert [c.token_ids for c in run.completions] == [c.token_ids for c in whole.completions]
        for a, b in zip(run.completions, whole.completions):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_sequence_cost_counts_the_kv_cache_per_token():
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=2)
    small, large = sequence_cost(config, 10, 20, 2), sequence_cost(config, 10, 120, 2)
    per_token_kv = 2 * 3 * 2 * (256 // 8) * 2
    assert large.generation - small.generation == 100 * per_token_kv
    assert large.training > small.training > small.generation


def test_plan_fits_the_budget_and_shrinks_with_free_memory(engine):
    model = engine[0]
    roomy = plan_batch_sizes(model, 40, 64, free_bytes=8 << 30)
    tight = plan_batch_sizes(model, 40, 64, free_bytes=64 << 20)
    starved = plan_batch_sizes(model, 40, 64, free_bytes=256 << 10)  # less than the gradient buffers
    assert roomy.micro_batch > tight.micro_batch >= 1 and roomy.rollout_batch > tight.rollout_batch
    assert starved.micro_batch == starved.rollout_batch == 1
    cost = sequence_cost(model.config, 40, 64, 4)
    assert tight.micro_batch * cost.training <= tight.budget_bytes < (tight.micro_batch + 1) * cost.training
    assert 0 < free_memory_bytes("cpu", cpu_cap_bytes=5 << 20) <= 5 << 20


def test_out_of_memory_halves_down_to_the_size_that_fits_and_keeps_it():
    fit, tried = MemoryFit(micro_batch=16), []

    def attempt(size):
        tried.append(size)
        if size > 3:
            raise RuntimeError(CPU_OOM)
        return size

    assert fit.run("micro", 40, attempt, "cpu") == 2
    assert tried == [16, 8, 4, 2] and fit.micro_batch == 2 and fit.oom_events == 3
    assert fit.run("micro", 40, attempt, "cpu") == 2 and tried[-1] == 2  # later rounds start at the settled size
    with pytest.raises(ValueError):
        fit.run("micro", 40, lambda size: (_ for _ in ()).throw(ValueError("not memory")), "cpu")
    with pytest.raises(MemoryError):
        MemoryFit(rollout_batch=1).run("rollout", 8, lambda size: (_ for _ in ()).throw(MemoryError()), "cpu")


def test_out_of_memory_is_recognised_by_type_and_by_the_cpu_allocator_message():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert not is_out_of_memory(RuntimeError("size mismatch"))


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _contribution_under_address_limit(out: str, headroom_mb: int, prompts: int) -> None:
    """Runs in a child process: one round's work with the whole batch on automatic, after capping
    the process's address space (RLIMIT_AS) at its size now plus `headroom_mb`. A warm-up round
    at micro-batch 1 first maps every library and kernel workspace, so what the cap leaves is
    room for tensors only: the whole batch's activations do not fit, a fraction of them do."""
    import resource

    from tests.verification_world import STRATEGY, announce, make_model
    from thinkmesh.node.work.contribution_step import honest_contribution
    from thinkmesh.node.model.tokenizer import build_tokenizer
    from thinkmesh.protocol.rules.identity import NodeIdentity
    from thinkmesh.protocol.rules.messages import encode_message

    torch.set_num_threads(1)
    model, tokenizer = make_model(), build_tokenizer()
    coordinator, node = NodeIdentity.from_seed(b"\xc0" * 32), NodeIdentity.from_seed(b"\x01" * 32)
    warmup = announce(coordinator, model, 1, b"\x21" * 32, prompts=2)
    honest_contribution(model, tokenizer, warmup, node, STRATEGY, fit=MemoryFit(micro_batch=1, auto_plan=False))
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size_bytes() + (headroom_mb << 20), resource.RLIM_INFINITY))
    fit = MemoryFit(auto_plan=False)  # 0 = whole batches until an OOM says otherwise
    contribution = honest_contribution(model, tokenizer, announce(coordinator, model, 2, b"\x22" * 32, prompts=prompts),
                                       node, STRATEGY, fit=fit)
    Path(out).write_bytes(encode_message(contribution))
    Path(out + ".json").write_text(json.dumps(fit.status()))


@pytest.mark.timeout(120)
def test_a_real_memory_limit_makes_the_node_halve_and_send_the_unlimited_contribution(tmp_path):
    """The child's backward pass over 32 sequences needs more than the 8 MiB it is left (measured:
    the whole batch fails at 8 MiB, 16 sequences fail too, 8 fit; 32 fit at 24 MiB), so torch's CPU allocator fails for real, the
    node halves the micro-batch, and the contribution equals the one computed without a limit."""
    from tests.verification_world import STRATEGY, announce, make_model
    from thinkmesh.node.work.contribution_step import honest_contribution
    from thinkmesh.node.model.tokenizer import build_tokenizer
    from thinkmesh.protocol.rules.gradient_codec import decode_gradient
    from thinkmesh.protocol.rules.identity import NodeIdentity
    from thinkmesh.protocol.rules.audit import AuditPolicy
    from thinkmesh.protocol.rules.messages import Contribution, decode_message
    from thinkmesh.protocol.rules.verification import REASON_OK, VerificationContext, verify_contribution

    prompts, out = 8, str(tmp_path / "contribution.bin")
    code = f"from tests.node.test_memory_fit import _contribution_under_address_limit as run; run({out!r}, 8, {prompts})"
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=100,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    settled = json.loads(Path(out + ".json").read_text())
    assert settled["oom_events"] >= 1 and 1 <= settled["micro_batch"] < prompts * STRATEGY.group_size, settled
    limited = decode_message(Path(out).read_bytes(), Contribution)

    torch.set_num_threads(1)
    model, tokenizer = make_model(), build_tokenizer()
    coordinator, node = NodeIdentity.from_seed(b"\xc0" * 32), NodeIdentity.from_seed(b"\x01" * 32)
    announcement = announce(coordinator, model, 2, b"\x22" * 32, prompts=prompts)
    free = honest_contribution(model, tokenizer, announcement, node, STRATEGY)
    assert [s.completion_ids for s in limited.samples] == [s.completion_ids for s in free.samples]
    assert [s.rewards for s in limited.samples] == [s.rewards for s in free.samples]
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    a, b = decode_gradient(limited.gradient, shapes), decode_gradient(free.gradient, shapes)
    flat_a, flat_b = (torch.cat([g[n].flatten() for n in sorted(shapes)]) for g in (a, b))
    assert flat_b.abs().max() > 0
    assert (flat_a - flat_b).abs().max() <= GRADIENT_RTOL * flat_b.abs().max()
    context = dataclasses.replace(VerificationContext(frozenset({node.public_key})),
                                  policy=AuditPolicy(full_gradient_rate=1.0))
    assert verify_contribution(announcement, limited, model, tokenizer, context).reason == REASON_OK
