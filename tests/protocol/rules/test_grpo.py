"""GRPO-family objectives checked against values worked out by hand on tiny tensors.

All hand cases run in float64 so the comparisons are exact up to rounding; the arithmetic is
written next to each expected value.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.grpo import (
    ADVANTAGE_EPS,
    LossInputError,
    dynamic_sampling_mask,
    group_advantages,
    k3_kl,
    overlong_penalty,
    policy_loss,
    strategy_loss,
)
from thinkmesh.protocol.rules.strategies import LOSS_VARIANTS, PRESETS, StrategySpec

F64 = torch.float64
LN = math.log


def spec_for(loss: str, **overrides) -> StrategySpec:
    """A small spec: G=2, T<=4, symmetric eps 0.2, no KL, unless overridden."""
    base = dict(group_size=2, max_new_tokens=4, eps_low=0.2, eps_high=0.2, beta=0.0,
                dynamic_sampling=False, overlong_buffer=0)
    base.update(overrides)
    return replace(PRESETS[loss], **base)


def close(actual, expected, tol=1e-9):
    expected = torch.as_tensor(expected, dtype=F64)
    assert torch.allclose(actual.to(F64), expected, atol=tol, rtol=0), (actual, expected)


# --- advantages ---------------------------------------------------------------------------
# rewards, G = 3:
#   group 0 = [0, 1, 2]: mean 1, deviations [-1, 0, 1], unbiased var (1+0+1)/2 = 1, std 1
#            (the population std would be sqrt(2/3) = 0.816, so the test tells them apart)
#   group 1 = [1, 3, 5]: mean 3, deviations [-2, 0, 2], unbiased var (4+0+4)/2 = 4, std 2
#   group 2 = [1, 1, 1]: mean 1, deviations 0, std 0
REWARDS = torch.tensor([[0.0, 1.0, 2.0], [1.0, 3.0, 5.0], [1.0, 1.0, 1.0]], dtype=F64)


@pytest.mark.parametrize("loss", ["grpo", "dapo", "gspo"])
def test_std_normalised_advantages(loss):
    adv = group_advantages(REWARDS, spec_for(loss, group_size=3))
    e = ADVANTAGE_EPS
    close(adv, [[-1 / (1 + e), 0, 1 / (1 + e)], [-2 / (2 + e), 0, 2 / (2 + e)], [0, 0, 0]])


def test_dr_grpo_advantages_drop_the_std():
    adv = group_advantages(REWARDS, spec_for("dr_grpo", group_size=3))
    close(adv, [[-1, 0, 1], [-2, 0, 2], [0, 0, 0]])  # r - mean only


def test_rloo_advantages_are_leave_one_out():
    adv = group_advantages(REWARDS, spec_for("rloo", group_size=3))
    # group 0: 0 - (1+2)/2 = -1.5,  1 - (0+2)/2 = 0,  2 - (0+1)/2 = 1.5
    # group 1: 1 - (3+5)/2 = -3,    3 - (1+5)/2 = 0,  5 - (1+3)/2 = 3
    close(adv, [[-1.5, 0, 1.5], [-3, 0, 3], [0, 0, 0]])
    dr = group_advantages(REWARDS, spec_for("dr_grpo", group_size=3))
    close(adv, dr * 3 / 2)  # = G/(G-1) * (r - mean)


def test_advantages_refuse_a_group_size_other_than_declared():
    with pytest.raises(LossInputError, match=r"\[num_groups, 2\].*got \[3, 3\]"):
        group_advantages(REWARDS, spec_for("grpo"))


@settings(max_examples=40, deadline=None)
@given(
    loss=st.sampled_from(LOSS_VARIANTS),
    rows=st.lists(st.lists(st.integers(-5, 5), min_size=4, max_size=4), min_size=1, max_size=4),
    shift=st.integers(-10, 10),
)
def test_advantages_properties(loss, rows, shift):
    rewards = torch.tensor(rows, dtype=F64) / 2
    spec = spec_for(loss, group_size=4)
    adv = group_advantages(rewards, spec)
    close(adv.sum(dim=1), torch.zeros(len(rows)), tol=1e-9)  # group-relative: sums to zero
    close(group_advantages(rewards + shift, spec), adv, tol=1e-9)  # baseline removes a shift
    equal = ~dynamic_sampling_mask(rewards)
    assert torch.all(adv[equal] == 0)  # identical rewards: exactly zero advantage


# --- dynamic sampling and overlong shaping ------------------------------------------------
def test_dynamic_sampling_keeps_only_groups_with_distinct_rewards():
    assert dynamic_sampling_mask(REWARDS).tolist() == [True, True, False]


def test_overlong_penalty_is_dapo_soft_punishment():
    # L_max = 10, L_cache = 4, budget 6: |y| <= 6 -> 0; else (6 - |y|) / 4, floor -1
    spec = spec_for("dapo", max_new_tokens=10, overlong_buffer=4)
    lengths = torch.tensor([5, 6, 7, 8, 10, 12])
    close(overlong_penalty(lengths, spec), [0, 0, -0.25, -0.5, -1.0, -1.0])
    close(overlong_penalty(lengths, replace(spec, overlong_buffer=0)), [0] * 6)


# --- the hand case for the losses ---------------------------------------------------------
# N = 2 sequences, T = 3; advantages A = [+1, -1]; sequence 1 has 2 real tokens.
# ratios r = exp(lp - old):  seq 0 = [1.25, 1.0, 0.9],  seq 1 = [0.5, 1.1, pad]
RATIOS = [[1.25, 1.0, 0.9], [0.5, 1.1, 1.0]]
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -1.0], dtype=F64)


def hand_logprobs() -> torch.Tensor:
    return (OLD + torch.log(torch.tensor(RATIOS, dtype=F64))).requires_grad_(True)


def loss_and_grad(spec, ref=None, lp=None):
    lp = hand_logprobs() if lp is None else lp
    loss, stats = policy_loss(lp, OLD, ADV, MASK, spec, ref)
    loss.backward()
    return loss.detach(), lp.grad, stats


def test_grpo_hand_case():
    # eps 0.2, clip range [0.8, 1.2]; token objective min(rA, clip(r)A):
    #   seq 0 (A=+1): min(1.25, 1.2)=1.2 (clipped), 1.0, 0.9     -> sum 3.1, |o|=3
    #   seq 1 (A=-1): min(-0.5, -0.8)=-0.8 (clipped), -1.1        -> sum -1.9, |o|=2
    # loss = -mean_i(sum_i/|o_i|) = -(3.1/3 - 1.9/2)/2 = -(1.033333 - 0.95)/2 = -0.0416667
    # grad = -A r / (N |o_i|) where unclipped, 0 where clipped:
    #   seq 0: [0, -1.0/6, -0.9/6 = -0.15];  seq 1: [0, +1.1/4 = 0.275, 0]
    loss, grad, stats = loss_and_grad(spec_for("grpo"))
    close(loss, -(3.1 / 3 - 1.9 / 2) / 2)
    close(grad, [[0, -1 / 6, -0.15], [0, 0.275, 0]])
    # clipped tokens: (0,0) high, (1,0) low, of 5 real tokens; mean ratio (1.25+1+.9+.5+1.1)/5
    assert stats.high_clip_fraction == pytest.approx(1 / 5)
    assert stats.low_clip_fraction == pytest.approx(1 / 5)
    assert stats.clip_fraction == pytest.approx(2 / 5)
    assert stats.mean_ratio == pytest.approx(0.95)
    assert (stats.num_sequences, stats.num_tokens, stats.kl) == (2, 5, 0.0)


def test_rloo_hand_case_uses_the_same_per_sequence_surrogate():
    loss, grad, _ = loss_and_grad(spec_for("rloo"))
    close(loss, -(3.1 / 3 - 1.9 / 2) / 2)
    close(grad, [[0, -1 / 6, -0.15], [0, 0.275, 0]])


def test_dapo_hand_case_clip_higher_and_token_mean():
    # clip range [0.8, 1.28]: ratio 1.25 is no longer clipped
    #   seq 0: 1.25 + 1.0 + 0.9 = 3.15;  seq 1: -0.8 - 1.1 = -1.9;  5 tokens in the batch
    # loss = -(3.15 - 1.9)/5 = -0.25
    # grad = -A r / 5: seq 0 [-0.25, -0.2, -0.18], seq 1 [0 (clipped), 0.22, 0]
    loss, grad, stats = loss_and_grad(spec_for("dapo", eps_high=0.28))
    close(loss, -0.25)
    close(grad, [[-0.25, -0.2, -0.18], [0, 0.22, 0]])
    assert stats.high_clip_fraction == 0.0 and stats.low_clip_fraction == pytest.approx(1 / 5)


def test_dr_grpo_hand_case_constant_normaliser():
    # same clipped terms as grpo, sum 3.1 - 1.9 = 1.2, divided by N * max_new_tokens = 2*4 = 8
    # loss = -1.2/8 = -0.15;  grad = -A r / 8: seq 0 [0, -0.125, -0.1125], seq 1 [0, 0.1375, 0]
    loss, grad, _ = loss_and_grad(spec_for("dr_grpo"))
    close(loss, -0.15)
    close(grad, [[0, -0.125, -0.1125], [0, 0.1375, 0]])


def test_gspo_hand_case_sequence_ratio():
    # s_0 = exp((ln 1.25 + 0 + ln 0.9)/3) = 1.125^(1/3) = 1.040042 (inside [0.8, 1.2])
    # s_1 = exp((ln 0.5 + ln 1.1)/2) = sqrt(0.55) = 0.741620; A=-1: min(-0.7416, -0.8) = -0.8
    # loss = -(s_0 - 0.8)/2;  grad seq 0 = -A s_0 / (N |o_0|) = -s_0/6 per token; seq 1 clipped
    s0, s1 = 1.125 ** (1 / 3), math.sqrt(0.55)
    loss, grad, stats = loss_and_grad(spec_for("gspo"))
    close(loss, -(s0 - 0.8) / 2)
    close(grad, [[-s0 / 6] * 3, [0, 0, 0]])
    assert stats.low_clip_fraction == pytest.approx(1 / 2)  # per sequence
    assert stats.high_clip_fraction == 0.0
    assert stats.mean_ratio == pytest.approx((s0 + s1) / 2)


def test_gspo_clips_the_sequence_ratio_with_its_tiny_range():
    # GSPO's preset clip [1 - 3e-4, 1 + 4e-4]: s_0 = 1.04 > 1.0004 with A>0 is clipped too
    loss, grad, stats = loss_and_grad(spec_for("gspo", eps_low=3e-4, eps_high=4e-4))
    close(loss, -(1.0004 - 0.9997) / 2)
    close(grad, torch.zeros(2, 3))
    assert stats.clip_fraction == 1.0


# k3 per token with ref - lp = d: e^d - d - 1.  d = ln 2 -> 2 - ln 2 - 1 = 1 - ln 2 = 0.306853
# d/dlp k3 = 1 - e^d = -1 at d = ln 2, and 0 at d = 0.
def test_k3_kl_hand_values():
    lp = torch.zeros(3, dtype=F64)
    ref = torch.tensor([LN(2), 0.0, -LN(2)], dtype=F64)
    close(k3_kl(lp, ref), [1 - LN(2), 0, 0.5 + LN(2) - 1])
    assert torch.isfinite(k3_kl(torch.zeros(1), torch.tensor([1e4]))).all()


@pytest.mark.parametrize("loss_name", ["grpo", "gspo"])
def test_kl_term_adds_beta_times_per_sequence_mean_k3(loss_name):
    # ref - lp = ln 2 on token (0, 0), 0 elsewhere: k3 = [[1-ln2, 0, 0], [0, 0]]
    # added loss = beta * mean_i(sum_t k3 / |o_i|) = 0.1 * ((1-ln2)/3 + 0)/2
    # added grad at (0,0) = 0.1 * (1 - e^{ln 2}) / (3 * 2) = -0.1/6
    ref = hand_logprobs().detach().clone()
    ref[0, 0] += LN(2)
    spec = spec_for(loss_name)
    base_loss, base_grad, _ = loss_and_grad(spec)
    loss, grad, stats = loss_and_grad(replace(spec, beta=0.1), ref=ref)
    close(loss - base_loss, 0.1 * (1 - LN(2)) / 3 / 2)
    expected = base_grad.clone()
    expected[0, 0] += -0.1 / 6
    close(grad, expected)
    assert stats.kl == pytest.approx((1 - LN(2)) / 5)  # mean over the 5 real tokens


def test_kl_is_reported_but_not_optimised_when_beta_is_zero():
    ref = hand_logprobs().detach() + 0.3
    loss, grad, stats = loss_and_grad(spec_for("grpo"), ref=ref)
    base_loss, base_grad, _ = loss_and_grad(spec_for("grpo"))
    assert stats.kl > 0
    close(loss, base_loss)
    close(grad, base_grad)


# --- properties ---------------------------------------------------------------------------
def pg_weights(loss: str, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """w_{i,t} of the plain policy gradient -sum w A grad lp, per variant (see policy_loss)."""
    m = mask.to(F64)
    n = m.shape[0]
    if loss in ("grpo", "rloo", "gspo"):
        return m / (n * m.sum(dim=1, keepdim=True).clamp(min=1))
    if loss == "dr_grpo":
        return m / (n * max_new_tokens)
    return m / m.sum()  # dapo


@pytest.mark.parametrize("loss", LOSS_VARIANTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_update_gives_the_plain_policy_gradient(loss, seed):
    gen = torch.Generator().manual_seed(seed)
    n, t = 6, 5
    lp = (-torch.rand(n, t, generator=gen, dtype=F64) * 3).requires_grad_(True)
    adv = torch.randn(n, generator=gen, dtype=F64)
    mask = (torch.rand(n, t, generator=gen) < 0.7).to(torch.int64)
    mask[:, 0] = 1
    mask[-1] = 0  # an empty completion contributes nothing and breaks nothing
    spec = PRESETS[loss]  # the papers' settings, including gspo's tiny clip range
    out, stats = policy_loss(lp, lp.detach(), adv, mask, spec)
    out.backward()
    w = pg_weights(loss, mask, spec.max_new_tokens)
    close(lp.grad, -w * adv.unsqueeze(1), tol=1e-12)
    close(out, -(w * adv.unsqueeze(1)).sum(), tol=1e-12)  # ratio 1: objective = sum w A
    assert stats.clip_fraction == 0.0 and stats.mean_ratio == pytest.approx(1.0)


def test_token_and_sequence_normalisation_weight_lengths_differently():
    # seq 0: 1 token, A=+1; seq 1: 3 tokens, A=-1; single update (ratio 1)
    #   grpo   : per token 1/(N|o_i|): seq 0 -0.5, seq 1 +1/6 each -> each sequence weighs 0.5
    #            loss = -(1/1 - 3/3)/2 = 0
    #   dapo   : per token 1/4:   seq 0 -0.25, seq 1 +0.25 each -> the long one weighs 0.75
    #            loss = -(1 - 3)/4 = 0.5
    #   dr_grpo: per token 1/(N L) = 1/6: seq 0 -1/6, seq 1 +1/6 each; loss = -(1-3)/6 = 1/3
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    cases = {
        "grpo": (0.0, [[-0.5, 0, 0], [1 / 6] * 3]),
        "dapo": (0.5, [[-0.25, 0, 0], [0.25] * 3]),
        "dr_grpo": (1 / 3, [[-1 / 6, 0, 0], [1 / 6] * 3]),
    }
    for loss, (value, grad) in cases.items():
        lp = torch.full((2, 3), -1.0, dtype=F64, requires_grad=True)
        out, _ = policy_loss(lp, lp.detach(), adv, mask, spec_for(loss, max_new_tokens=3))
        out.backward()
        close(out, value)
        close(lp.grad, grad)


@pytest.mark.parametrize("loss", ["grpo", "dapo", "dr_grpo", "rloo"])
def test_clipping_removes_the_gradient_only_in_the_optimistic_direction(loss):
    old = torch.zeros(2, 2, dtype=F64)
    mask = torch.ones(2, 2)
    spec = spec_for(loss)
    # ratio 2 with A=+1 and ratio 0.5 with A=-1: both clipped, objective flat
    lp = torch.log(torch.tensor([[2.0, 2.0], [0.5, 0.5]], dtype=F64)).requires_grad_(True)
    out, stats = policy_loss(lp, old, torch.tensor([1.0, -1.0], dtype=F64), mask, spec)
    out.backward()
    assert torch.all(lp.grad == 0) and stats.clip_fraction == 1.0
    # per-token terms -1.2 and +0.8 (1 - 0.2): per-sequence mean (-1.2 + 0.8)/2 = -0.2
    # token mean (2*-1.2 + 2*0.8)/4 = -0.2;  dr_grpo: (-2.4 + 1.6)/(2*4) = -0.1
    close(out, -0.1 if loss == "dr_grpo" else -0.2)
    # ratio 2 with A=-1: the pessimistic min keeps the unclipped term, gradient flows
    lp = torch.log(torch.tensor([[2.0, 2.0], [2.0, 2.0]], dtype=F64)).requires_grad_(True)
    out, stats = policy_loss(lp, old, torch.tensor([-1.0, -1.0], dtype=F64), mask, spec)
    out.backward()
    assert torch.all(lp.grad > 0) and stats.clip_fraction == 0.0


def test_extreme_log_ratios_and_padding_stay_finite():
    lp = torch.tensor([[0.0, -1.0, float("-inf")], [-1.0, float("nan"), 0.0]], requires_grad=True)
    old = torch.tensor([[-200.0, 100.0, 0.0], [-1.0, 0.0, float("inf")]])
    ref = torch.tensor([[300.0, -300.0, 0.0], [0.0, float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    for loss in LOSS_VARIANTS:
        lp.grad = None
        spec = spec_for(loss, beta=0.1, eps_high=0.28 if loss in ("dapo", "gspo") else 0.2)
        out, stats = policy_loss(lp, old, torch.tensor([1.0, -1.0]), mask, spec, ref)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(lp.grad).all(), loss
        assert math.isfinite(stats.kl) and math.isfinite(stats.mean_ratio)
        assert torch.all(lp.grad[mask == 0] == 0)


def test_low_precision_inputs_compute_in_float32():
    lp = torch.full((2, 3), -2.0, dtype=torch.bfloat16, requires_grad=True)
    out, _ = policy_loss(lp, lp.detach() - 15.0, torch.tensor([1.0, -1.0]), torch.ones(2, 3),
                         spec_for("dapo", eps_high=0.28))
    out.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert lp.grad.dtype == torch.bfloat16 and torch.isfinite(lp.grad.float()).all()


def test_policy_loss_shape_errors_say_expected_and_got():
    lp, adv, mask = torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3)
    spec = spec_for("grpo")
    with pytest.raises(LossInputError, match=r"old_logprobs: expected shape \[2, 3\].*got \[2, 2\]"):
        policy_loss(lp, torch.zeros(2, 2), adv, mask, spec)
    with pytest.raises(LossInputError, match=r"advantages: expected shape \[2\], got \[3\]"):
        policy_loss(lp, lp, torch.zeros(3), mask, spec)
    with pytest.raises(LossInputError, match=r"max_new_tokens=2 .*got 3"):
        policy_loss(lp, lp, adv, mask, spec_for("grpo", max_new_tokens=2))
    assert issubclass(LossInputError, ProtocolError)


# --- strategy_loss: the shared pipeline ---------------------------------------------------
def test_strategy_loss_equals_the_steps_done_by_hand():
    # 2 groups of 2: rewards [[1, 0], [1, 1]]; dapo drops group 1 (all equal)
    # group 0: mean 0.5, unbiased std sqrt(0.5); advantages +-0.5/(sqrt(0.5)+1e-4)
    gen = torch.Generator().manual_seed(7)
    lp = -torch.rand(4, 3, generator=gen, dtype=F64)
    old = lp - 0.05
    mask = torch.ones(4, 3)
    rewards = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    spec = spec_for("dapo", eps_high=0.28, dynamic_sampling=True)
    out, stats = strategy_loss(lp, old, rewards, mask, spec)
    a = 0.5 / (math.sqrt(0.5) + ADVANTAGE_EPS)
    expected, _ = policy_loss(lp[:2], old[:2], torch.tensor([a, -a], dtype=F64), mask[:2], spec)
    close(out, expected)
    assert stats.num_sequences == 2 and stats.num_tokens == 6


def test_overlong_penalty_turns_equal_rewards_into_a_signal():
    # one group, rewards [1, 1]; lengths 2 and 4 with L_max=4, L_cache=2 -> penalties [0, -1]
    # shaped [1, 0] -> advantages +-0.5/(sqrt(0.5)+1e-4); single update, dapo token mean over 6:
    # loss = -(2a - 4a)/6 = a/3
    lp = torch.full((2, 4), -1.0, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    rewards = torch.tensor([[1.0, 1.0]], dtype=F64)
    spec = spec_for("dapo", eps_high=0.28, overlong_buffer=2)
    out, _ = strategy_loss(lp, lp.detach(), rewards, mask, spec)
    a = 0.5 / (math.sqrt(0.5) + ADVANTAGE_EPS)
    close(out, a / 3)
    off, _ = strategy_loss(lp, lp.detach(), rewards, mask, replace(spec, overlong_buffer=0))
    close(off, 0.0)


def test_dynamic_sampling_filters_on_task_rewards_and_may_drop_everything():
    # same group as above, but dynamic sampling sees raw rewards [1, 1] and drops it
    lp = torch.full((2, 4), -1.0, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    spec = spec_for("dapo", eps_high=0.28, overlong_buffer=2, dynamic_sampling=True)
    out, stats = strategy_loss(lp, lp.detach(), torch.tensor([[1.0, 1.0]], dtype=F64), mask, spec)
    out.backward()
    assert stats.num_sequences == 0 and stats.num_tokens == 0
    close(out, 0.0)
    assert torch.all(lp.grad == 0)


def test_strategy_loss_refuses_a_batch_that_is_not_groups_of_g():
    with pytest.raises(LossInputError, match=r"expected \[4, T\] for 2 groups of 2, got \[3, 3\]"):
        strategy_loss(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(2, 2), torch.ones(3, 3),
                      spec_for("grpo"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss", LOSS_VARIANTS)
def test_cuda_matches_cpu_for_the_verifier(loss):
    # a node on a GPU and a verifier on a CPU must agree to float32 rounding
    gen = torch.Generator().manual_seed(3)
    lp = -torch.rand(8, 6, generator=gen) * 2
    old = lp + 0.1 * torch.randn(8, 6, generator=gen)
    ref = lp + 0.1 * torch.randn(8, 6, generator=gen)
    rewards = torch.randint(0, 3, (2, 4), generator=gen).float()
    mask = (torch.rand(8, 6, generator=gen) < 0.8).int()
    spec = replace(PRESETS[loss], group_size=4, beta=0.05, max_new_tokens=8, overlong_buffer=2)
    results = []
    for device in ("cpu", "cuda"):
        x = lp.to(device).requires_grad_(True)
        out, stats = strategy_loss(x, old.to(device), rewards.to(device), mask.to(device), spec,
                                   ref.to(device))
        out.backward()
        results.append((out.item(), x.grad.cpu(), stats))
    (cpu_loss, cpu_grad, cpu_stats), (gpu_loss, gpu_grad, gpu_stats) = results
    assert gpu_loss == pytest.approx(cpu_loss, abs=1e-6)
    assert torch.allclose(gpu_grad, cpu_grad, atol=1e-6)
    assert gpu_stats.num_tokens == cpu_stats.num_tokens
