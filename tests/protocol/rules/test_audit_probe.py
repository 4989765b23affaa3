"""The probe's draw: which tensors a gradient probe recomputes, and why a fake of any of them loses.

`probe_weights` is floor * (share of the parameters) + (1 - floor) * (share of the window), the
window being the last `probe_window` of the parameters in model order (the tensors nearest the
output, cheapest to reach). Both sides compute the draw from public values and the post-deadline
probe key, so it must be exact, deterministic, reach every tensor, and follow the weights.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import pytest

from thinkmesh.protocol.rules.audit import (
    AuditError,
    AuditPolicy,
    audit_plan,
    audited_parameter_names,
    probe_names,
    probe_weights,
    probe_window_overlap,
)
from thinkmesh.protocol.rules.audit_economics import AuditEconomicsError, minimum_probe_floor

pytestmark = pytest.mark.timeout(240)


def qwen2_sizes(hidden: int, layers: int, inter: int, vocab: int, kv: int) -> tuple[list[str], list[int]]:
    """Names and sizes of a tied Qwen2 in model order (what `trainable_named_parameters` lists;
    checked against the built model in the verifier test below)."""
    names, sizes = ["model.embed_tokens.weight"], [vocab * hidden]
    for layer in range(layers):
        for suffix, size in (("self_attn.q_proj.weight", hidden * hidden), ("self_attn.q_proj.bias", hidden), ("self_attn.k_proj.weight", kv * hidden),
                             ("self_attn.k_proj.bias", kv), ("self_attn.v_proj.weight", kv * hidden), ("self_attn.v_proj.bias", kv),
                             ("self_attn.o_proj.weight", hidden * hidden), ("mlp.gate_proj.weight", inter * hidden),
                             ("mlp.up_proj.weight", inter * hidden), ("mlp.down_proj.weight", hidden * inter),
                             ("input_layernorm.weight", hidden), ("post_attention_layernorm.weight", hidden)):
            names.append(f"model.layers.{layer}.{suffix}")
            sizes.append(size)
    return names + ["model.norm.weight"], sizes + [hidden]


BENCH = qwen2_sizes(192, 4, 512, 128, 64)  # the bench's tiny model (1.6M parameters)
QWEN_05B = qwen2_sizes(896, 24, 4864, 151936, 128)  # Qwen2.5-0.5B's shapes (494M)


def key(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def shares(sizes, floor=AuditPolicy.probe_floor, window=AuditPolicy.probe_window) -> list[Fraction]:
    weights = probe_weights(sizes, floor, window)
    return [Fraction(w, sum(weights)) for w in weights]


def test_weights_are_the_floor_plus_the_window_exactly():
    # N = 100, window = last 50: the third tensor has 10 elements inside it, the fourth all 40.
    assert probe_window_overlap([10, 20, 30, 40], 0.5) == (0, 0, 10, 40)
    assert shares([10, 20, 30, 40], 0.25, 0.5) == [Fraction(1, 40), Fraction(1, 20), Fraction(9, 40), Fraction(7, 10)]
    assert shares([10, 20, 30, 40], 1.0, 0.5) == [Fraction(n, 100) for n in (10, 20, 30, 40)]  # floor 1: uniform
    assert probe_window_overlap([3, 5], 1e-6) == (0, 1)  # a window never holds less than one element


def test_every_tensor_keeps_at_least_the_floor_times_its_share_of_the_parameters():
    for names, sizes in (BENCH, QWEN_05B):
        total = sum(sizes)
        for share, n in zip(shares(sizes), sizes):
            assert share >= Fraction(AuditPolicy.probe_floor).limit_denominator() * Fraction(n, total) > 0
        # Drawing as many tensors as there are: every one comes out, whatever the key.
        assert probe_names(names, sizes, len(names), key(7)) == tuple(names)


def test_the_window_holds_the_tensors_nearest_the_output_and_the_trailing_norm_is_rare():
    names, sizes = BENCH
    weights = dict(zip(names, shares(sizes)))
    assert weights["model.layers.3.mlp.down_proj.weight"] > Fraction(1, 2)
    assert weights["model.norm.weight"] < Fraction(12, 10_000)  # what a fixed-probe cheater keeps honest
    floor = Fraction(AuditPolicy.probe_floor).limit_denominator()
    assert weights["model.layers.0.mlp.down_proj.weight"] == floor * Fraction(98304, sum(sizes))


def test_draws_follow_the_weights_over_many_keys():
    names, sizes = BENCH
    draws = 20_000
    counts = dict.fromkeys(names, 0)
    for i in range(draws):
        (name,) = probe_names(names, sizes, 1, key(i))
        counts[name] += 1
    for name, share in zip(names, shares(sizes)):
        p = float(share)
        assert abs(counts[name] / draws - p) <= 5 * math.sqrt(p * (1 - p) / draws) + 1e-4, name


def test_without_replacement_each_later_draw_follows_the_remaining_weights():
    sizes, names = [10, 20, 30, 40], ["a", "b", "c", "d"]
    w = [float(s) for s in shares(sizes, 0.25, 0.5)]
    # P(i among two) = w_i + sum_{j != i} w_j * w_i / (1 - w_j)
    expected = [w[i] + sum(w[j] * w[i] / (1 - w[j]) for j in range(4) if j != i) for i in range(4)]
    draws, counts = 20_000, dict.fromkeys(names, 0)
    for i in range(draws):
        drawn = probe_names(names, sizes, 2, key(i), 0.25, 0.5)
        assert len(drawn) == 2 and list(drawn) == sorted(drawn, key=names.index)
        for name in drawn:
            counts[name] += 1
    for name, p in zip(names, expected):
        assert abs(counts[name] / draws - p) < 0.015, (name, counts[name] / draws, p)


def test_a_small_tensor_is_reachable_and_drawn_at_its_rate():
    names, sizes = ["embed", "block", "norm"], [100, 800, 100]
    counts = dict.fromkeys(names, 0)
    for i in range(4000):
        counts[probe_names(names, sizes, 1, key(i), 0.2, 0.1)[0]] += 1
    assert all(counts.values())
    assert abs(counts["embed"] / 4000 - 0.02) < 0.01  # floor 0.2 * 100/1000, outside the window (last 100)


def test_the_draw_is_a_function_of_public_values_and_the_key_only():
    names, sizes = BENCH
    assert probe_names(names, sizes, 3, key(1)) == probe_names(list(names), tuple(sizes), 3, key(1))
    assert len({probe_names(names, sizes, 1, key(i)) for i in range(200)}) > 10
    assert len({probe_names(names, sizes, 3, key(i)) for i in range(50)}) > 15
    # The policy's floor and window are inputs too: the evidence carries them, so a re-run draws alike.
    moved = [probe_names(names, sizes, 1, key(i), 1.0, 0.1) != probe_names(names, sizes, 1, key(i)) for i in range(50)]
    assert any(moved)
    with pytest.raises(AuditError):
        probe_names(names, sizes[:-1], 1, key(1))


def test_a_large_model_draws_exactly_past_64_bits():
    names, sizes = QWEN_05B
    assert sum(probe_weights(sizes, AuditPolicy.probe_floor, AuditPolicy.probe_window)) > 2**64
    drawn = [probe_names(names, sizes, 1, key(i))[0] for i in range(3000)]
    embed = float(shares(sizes)[0])  # floor * 27.5%: the tied embedding is first in model order
    assert embed == pytest.approx(AuditPolicy.probe_floor * sizes[0] / sum(sizes))
    assert abs(drawn.count("model.embed_tokens.weight") / 3000 - embed) < 5 * math.sqrt(embed / 3000)
    layers = {int(name.split(".")[2]) for name in drawn if name.startswith("model.layers.")}
    assert layers == set(range(24))  # every block is reached


def test_the_verifier_draws_from_the_models_trainable_parameters_with_the_policys_weights():
    from tests.verification_world import world
    from thinkmesh.protocol.rules.adapters import trainable_named_parameters

    w = world()
    trainable = trainable_named_parameters(w.model)
    names, sizes = [n for n, _ in trainable], [p.numel() for _, p in trainable]
    for i in range(20):
        plan = audit_plan(w.round.seed, key(i), b"beacon", 8, AuditPolicy())
        assert audited_parameter_names(w.model, "probe", AuditPolicy(), plan.probe_key) == probe_names(
            names, sizes, 1, plan.probe_key)
        wide = AuditPolicy(probe_tensors=3, probe_floor=0.5, probe_window=0.3)
        assert audited_parameter_names(w.model, "probe", wide, plan.probe_key) == probe_names(
            names, sizes, 3, plan.probe_key, 0.5, 0.3)
    assert audited_parameter_names(w.model, "full") == tuple(names)


@pytest.mark.parametrize("bad", [dict(probe_floor=0.0), dict(probe_floor=1.5), dict(probe_window=0.0),
                                 dict(probe_window=1), dict(probe_floor=float("nan"))])
def test_policy_refuses_a_floor_or_window_outside_zero_one(bad):
    with pytest.raises(AuditError):
        AuditPolicy(**bad)


# ---- the economics ---------------------------------------------------------------------------


def test_minimum_probe_floor_is_where_the_tightest_partial_fake_breaks_even():
    stake, payout = 5.0, 0.32
    for q, p, kappa in ((0.0, 1.0, 1.0), (0.02, 1.0, 1.0), (0.02, 0.5, 2.0)):
        floor = minimum_probe_floor(stake, payout, q, p, kappa)

        def margin(f, lam):  # expected slash and lost pay minus the saving, for a fake of share f
            return (q + (1 - q) * p * lam * f) * (payout + stake) - kappa * f * payout

        assert all(margin(f / 20, floor * 1.001) > 0 for f in range(1, 21))
        assert margin(1.0, floor * 0.999) < 0  # tightest at f = 1
    assert minimum_probe_floor(stake, payout) == pytest.approx(payout / (payout + stake))
    assert minimum_probe_floor(stake, payout, full_gradient_rate=0.1) == 0.0  # a full audit above R/(R+S) suffices alone
    assert minimum_probe_floor(0.0, payout) == 1.0  # no stake: only a floor of 1, i.e. never
    assert minimum_probe_floor(stake, payout, probe_rate=0.0) == math.inf
    with pytest.raises(AuditEconomicsError):
        minimum_probe_floor(-1.0, payout)


def test_the_default_floor_deters_every_partial_fake_at_the_default_stake_and_pay_without_the_full_audit():
    """The coordinator's defaults (slash per failed contribution, pay per prompt, prompts per node)
    against the policy's: the floor alone must clear the bound (backward <= payout) for tensors whose
    share of the backward is up to 1.5x their share of the parameters (measured <= 1), and at 1.5x
    that with the default full audit rate."""
    from thinkmesh.coordinator.config import ChainConfig, RoundConfig, VerificationConfig

    fields = ChainConfig.model_fields
    stake = float(fields["slash_amount"].default)
    payout = float(fields["reward_per_prompt"].default) * RoundConfig.model_fields["prompts_per_node"].default
    policy = AuditPolicy()
    assert policy.probe_floor >= minimum_probe_floor(stake, payout, cost_factor=1.5)
    assert policy.probe_floor >= 1.5 * minimum_probe_floor(stake, payout, policy.full_gradient_rate, cost_factor=1.0)
    configured = VerificationConfig.model_fields
    assert (configured["probe_floor"].default, configured["probe_window"].default, configured["full_gradient_rate"].default,
            configured["probe_tensors"].default) == (policy.probe_floor, policy.probe_window, policy.full_gradient_rate,
                                                     policy.probe_tensors)


def test_the_synthetic_shapes_are_the_bench_models():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from bench.verify import build_model
    from thinkmesh.protocol.rules.adapters import trainable_named_parameters

    trainable = trainable_named_parameters(build_model())
    assert ([n for n, _ in trainable], [p.numel() for _, p in trainable]) == BENCH
