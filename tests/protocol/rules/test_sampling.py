"""The sampling proof: public streams, the draw rule both sides share, and what it catches."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from tests.verification_world import world
from thinkmesh.devnet.cheats import apply_cheat, resign
from thinkmesh.protocol.rules.audit import AuditPolicy, audit_plan, audited_parameter_names
from thinkmesh.protocol.rules.messages import RoundTerms
from thinkmesh.protocol.rules.sampling import (
    SAMPLING_TOLERANCE_FP32,
    draw_gaps,
    draw_token,
    row_key,
    stop_rule_for,
    stop_violation,
    stream_uniforms,
    token_distribution,
    uniforms_tensor,
)
from thinkmesh.protocol.rules.strategies import strategy_from_name
from thinkmesh.protocol.rules.terms import off_terms, strategy_under_terms
from thinkmesh.protocol.rules.verification import (
    REASON_GRADIENT_MISMATCH,
    REASON_OFF_TERMS,
    REASON_OK,
    REASON_SAMPLE_SHAPE,
    REASON_SAMPLING_MISMATCH,
    contribution_digests,
    draw_check,
    node_tasks,
    verify_contribution,
)
from thinkmesh.protocol.rules.audit import rescore_logprobs
from thinkmesh.protocol.rules.verification import prompt_ids_for

pytestmark = pytest.mark.timeout(240)
FULL = AuditPolicy(full_gradient_rate=1.0)


def verify(contribution, policy=AuditPolicy(), announcement=None, **context):
    w = world()
    return verify_contribution(announcement or w.round, contribution, w.model, w.tokenizer,
                               w.context(policy=policy, **context))


# ---- streams and the draw rule ---------------------------------------------------------------


def test_a_stream_is_sha256_words_and_a_pure_function_of_public_values():
    key = row_key(b"\x22" * 32, b"\x01" * 32, 3, 5)
    first = hashlib.sha256(key + (0).to_bytes(4, "big")).digest()
    expected = [(int.from_bytes(first[8 * i: 8 * i + 8], "big") >> 11) / 2**53 for i in range(4)]
    assert stream_uniforms(key, 4) == expected
    assert stream_uniforms(key, 9)[:4] == expected and len(stream_uniforms(key, 9)) == 9
    others = {row_key(b"\x22" * 32, b"\x01" * 32, 3, 6), row_key(b"\x22" * 32, b"\x01" * 32, 4, 5),
              row_key(b"\x22" * 32, b"\x02" * 32, 3, 5), row_key(b"\x23" * 32, b"\x01" * 32, 3, 5)}
    assert key not in others and len(others) == 4


def test_the_batched_uniforms_are_each_row_s_stream_exactly():
    def by_hand(key, steps):  # the stream's definition, word by word
        words = [hashlib.sha256(key + block.to_bytes(4, "big")).digest()[8 * w: 8 * w + 8]
                 for block in range(-(-steps // 4)) for w in range(4)]
        return [(int.from_bytes(word, "big") >> 11) / 2**53 for word in words][:steps]

    keys = [row_key(b"\x22" * 32, b"\x01" * 32, p, r) for p in range(3) for r in range(5)]
    for steps in (0, 1, 3, 4, 5, 48, 97):
        batched = uniforms_tensor(keys, steps)
        assert batched.dtype == torch.float64 and batched.shape == (len(keys), steps)
        assert batched.tolist() == [by_hand(key, steps) for key in keys]  # bit for bit
    assert uniforms_tensor([], 7).shape == (0, 7)


def test_the_draw_lies_inside_its_own_interval_and_a_neighbour_does_not():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    uniforms = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9), (1.3, 0.5)):
        probs = token_distribution(logits, temperature, top_p)
        tokens = draw_token(probs, uniforms)
        assert float(draw_gaps(probs, tokens, uniforms).max()) == 0.0
        wrong = (tokens + 1) % 50
        assert float(draw_gaps(probs, wrong, uniforms).min()) >= 0.0
        assert float((draw_gaps(probs, wrong, uniforms) > SAMPLING_TOLERANCE_FP32).float().mean()) > 0.9


def test_the_nucleus_keeps_the_top_token_and_zeroes_the_tail():
    probs = token_distribution(torch.tensor([[5.0, 4.0, -5.0, -5.0]]), 1.0, 0.5)
    assert probs[0, 1:].sum() == 0 and probs[0, 0] > 0.7


def test_stop_rule_cut_short_and_run_past_a_stop_are_named():
    tokenizer = world().tokenizer
    rule = stop_rule_for(tokenizer)
    eos, word = tokenizer.eos_token_id, 30
    assert word not in rule.token_ids
    assert stop_violation((word, word + 1, eos), rule, 12, tokenizer) is None
    assert stop_violation((word,) * 12, rule, 12, tokenizer) is None
    assert stop_violation((word, word + 1), rule, 12, tokenizer) == "cut-short"
    assert stop_violation((word, eos, word, eos), rule, 12, tokenizer) == "stop-inside:1"


# ---- honest work passes; the attacks of the issue do not ---------------------------------------


def test_honest_draws_replay_well_inside_the_tolerance():
    w = world()
    honest = w.honest[0]
    prompts = prompt_ids_for(w.round, honest.node_key, w.tokenizer)
    indices = range(len(honest.samples))
    rescored = rescore_logprobs(w.model, prompts, honest.samples, indices, honest.strategy.temperature, 0,
                                draw_check(w.round, honest, indices))
    worst = max(max(row) for row in rescored.draw_gaps.values())
    assert worst <= SAMPLING_TOLERANCE_FP32 / 10, worst
    for policy in (AuditPolicy(), FULL, AuditPolicy(probe_rate=0.0, full_gradient_rate=0.0)):
        assert all(verify(c, policy).reason == REASON_OK for c in w.honest)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.3, None), (0.7, None), (1.0, 0.5)],
                         ids=["hotter", "colder", "nucleus-0.5"])
def test_off_policy_samples_with_true_logprobs_are_sampling_mismatch_under_probe_and_full(temperature, top_p):
    w = world()
    cheat = apply_cheat("off-policy", w.cheat_inputs(temperature=temperature, top_p=top_p))
    assert cheat.strategy == w.honest[0].strategy  # declared as the round's terms
    for policy in (AuditPolicy(), FULL):
        report = verify(cheat, policy)
        assert report.reason == REASON_SAMPLING_MISMATCH, report.findings
        finding = report.findings[0]
        assert finding.check.startswith("draw:") and finding.claimed > SAMPLING_TOLERANCE_FP32


def test_crafted_samples_are_sampling_mismatch_at_their_first_token():
    w = world()
    cheat = apply_cheat("crafted-samples", w.cheat_inputs())
    report = verify(cheat)
    assert report.reason == REASON_SAMPLING_MISMATCH
    assert {f.check for f in report.findings} == {"draw:0"}


def test_an_inflated_group_or_another_temperature_is_off_terms():
    w = world()
    honest = w.honest[0]
    group = honest.strategy.group_size
    inflated = dataclasses.replace(honest.strategy, group_size=1024)
    samples = tuple(s for i in range(0, len(honest.samples), group) for s in honest.samples[i:i + 1] * 1024)
    report = verify(resign(honest, w.nodes[0], strategy=inflated, samples=samples))
    assert report.reason == REASON_OFF_TERMS
    assert [(f.check, f.expected, f.claimed) for f in report.findings] == [("terms:group_size", group, 1024.0)]
    hot = dataclasses.replace(honest.strategy, temperature=1.3)
    assert verify(resign(honest, w.nodes[0], strategy=hot)).reason == REASON_OFF_TERMS


def test_a_cut_short_completion_is_sample_shape():
    w = world()
    honest = w.honest[0]
    long = next(i for i, s in enumerate(honest.samples) if len(s.completion_ids) > 2)
    sample = honest.samples[long]
    cut = dataclasses.replace(sample, completion_ids=sample.completion_ids[:2], logprobs=sample.logprobs[:2])
    samples = honest.samples[:long] + (cut,) + honest.samples[long + 1:]
    report = verify(resign(honest, w.nodes[0], samples=samples))
    assert report.reason == REASON_SAMPLE_SHAPE and report.findings[0].check == "cut-short"


def test_a_probe_aware_partial_gradient_is_caught_by_the_probe_under_almost_every_beacon():
    w = world()
    cheat = apply_cheat("partial-gradient", w.cheat_inputs())
    digests = contribution_digests(cheat)
    names = [n for n, _ in w.model.named_parameters()]
    beacons = [bytes([i]) * 32 for i in range(40)]
    probed = [audited_parameter_names(w.model, "probe", AuditPolicy(), audit_plan(
        w.round.seed, digests.contribution_hash, b, len(cheat.samples), AuditPolicy()).probe_key)[0] for b in beacons]
    # Mostly the window's tensors next to the output (cheap to reach), but the floor reaches into
    # the body too, and the trailing tensor (the one a fixed probe used to check) almost never.
    assert len(set(probed)) > 3 and any(".layers.0." in name for name in probed)
    assert probed.count(names[-1]) <= 1
    caught = sum(verify(cheat, beacon=b).reason == REASON_GRADIENT_MISMATCH for b in beacons[:12])
    assert caught >= 11, (caught, len(names))


# ---- the round's terms ----------------------------------------------------------------------


def test_a_node_takes_the_closest_allowed_value_and_its_choice_within_the_sets():
    dapo = strategy_from_name("dapo")
    terms = RoundTerms(temperatures=(0.7, 1.0), top_ps=(1.0,), group_sizes=(4, 16), max_new_tokens=(64,))
    fitted = strategy_under_terms(dapo, terms)
    assert (fitted.temperature, fitted.group_size, fitted.max_new_tokens, fitted.overlong_buffer) == (1.0, 4, 64, 12)
    assert off_terms(fitted, terms) == [] and off_terms(dapo, terms) != []
    chosen = dataclasses.replace(fitted, temperature=0.7, group_size=16)
    assert strategy_under_terms(chosen, terms) == chosen


@pytest.mark.parametrize("bad", [dict(group_sizes=(1,)), dict(temperatures=(0.0,)), dict(top_ps=(1.5,)),
                                 dict(max_new_tokens=tuple(range(1, 10))), dict(group_sizes=(4, 4))])
def test_terms_refuse_nonsense(bad):
    from thinkmesh.protocol.rules.errors import EncodingError

    with pytest.raises(EncodingError, match="round terms"):
        RoundTerms(**bad)


def test_every_node_task_prompt_has_its_own_row_streams():
    w = world()
    honest = w.honest[0]
    assert len(node_tasks(w.round, honest.node_key)) * honest.strategy.group_size == len(honest.samples)
