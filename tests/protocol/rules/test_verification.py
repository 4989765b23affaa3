"""Verification by re-scoring: honest work passes, each broken rule is named, plans replay."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from tests.verification_world import world
from thinkmesh.devnet.cheats import resign
from thinkmesh.protocol.rules.audit import (
    GRADIENT_FULL,
    GRADIENT_NONE,
    GRADIENT_PROBE,
    AuditError,
    AuditPolicy,
    audit_plan,
    compare_gradients,
    quantized_reference,
)
from thinkmesh.protocol.rules.audit_economics import (
    AuditEconomicsError,
    break_even_detection,
    detection_probability,
    expected_cheating_loss,
    minimum_audit_rate,
    minimum_audited_samples,
)
from thinkmesh.protocol.rules.gradient_codec import decode_gradient
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.messages import Sample, sign_message
from thinkmesh.protocol.rules.verification import (
    CONTRIBUTION_HASH_DOMAIN,
    CONTRIBUTION_LEVEL,
    REASON_BAD_SIGNATURE,
    REASON_GRADIENT_MISMATCH,
    REASON_MALFORMED_GRADIENT,
    REASON_OK,
    REASON_PROMPT_SET,
    REASON_REPLAY,
    REASON_SAMPLE_SHAPE,
    REASON_SAMPLES_ROOT,
    REASON_UNKNOWN_NODE,
    REASON_WRONG_ROUND,
    contribution_digests,
    contribution_hash,
    gradient_digest,
    verify_contribution,
    with_seen,
)

pytestmark = pytest.mark.timeout(240)
NO_GRADIENT = AuditPolicy(probe_rate=0.0, full_gradient_rate=0.0, logprob_samples=3)


def verify(contribution, policy=AuditPolicy(), **context):
    w = world()
    return verify_contribution(w.round, contribution, w.model, w.tokenizer, w.context(policy=policy, **context))


@pytest.mark.parametrize("policy", [AuditPolicy(), AuditPolicy(full_gradient_rate=1.0), NO_GRADIENT],
                         ids=["probe", "full", "logprob-subset"])
def test_honest_contributions_pass_every_audit_level(policy):
    for contribution in world().honest:
        report = verify(contribution, policy)
        assert report.reason == REASON_OK, report.findings
        assert report.accepted and report.findings == ()


@pytest.mark.parametrize("compression", ["fp16", "uniform8", "blockwise8"])
def test_honest_compressed_gradients_pass_the_full_audit(compression):
    w = world()
    gradients = decode_gradient(w.honest[0].gradient, w.shapes)
    from thinkmesh.protocol.rules.gradient_codec import encode_gradient

    contribution = resign(w.honest[0], w.nodes[0], gradient=encode_gradient(gradients, compression))
    assert verify(contribution, AuditPolicy(full_gradient_rate=1.0)).reason == REASON_OK


def test_a_forged_signature_is_bad_signature():
    w = world()
    forged = dataclasses.replace(w.honest[0], signature=w.honest[1].signature)
    report = verify(forged)
    assert report.reason == REASON_BAD_SIGNATURE
    assert report.findings[0].sample_index == CONTRIBUTION_LEVEL
    # The coordinator's path: one hash pass over the bytes serves the signature and the hash.
    encoded = encode_message(forged)
    digests = contribution_digests(forged, encoded)
    assert digests.contribution_hash == contribution_hash(forged)
    coordinator = verify_contribution(w.round, forged, w.model, w.tokenizer, w.context(), digests=digests, encoded=encoded)
    assert coordinator.reason == REASON_BAD_SIGNATURE


@pytest.mark.parametrize("field, value", [("round_id", 7), ("chain_id", 1), ("run_id", "other"), ("model_hash", b"\x09" * 32)])
def test_a_contribution_bound_elsewhere_is_wrong_round(field, value):
    w = world()
    report = verify(resign(w.honest[0], w.nodes[0], **{field: value}))
    assert report.reason == REASON_WRONG_ROUND
    assert len(report.findings) == 1


def test_an_unregistered_node_is_unknown_node():
    w = world()
    stranger = NodeIdentity.from_seed(b"\x77" * 32)
    assert verify(resign(w.honest[0], stranger)).reason == REASON_UNKNOWN_NODE


def test_a_root_that_does_not_commit_to_the_samples_is_samples_root():
    w = world()
    wrong = sign_message(dataclasses.replace(w.honest[0], samples_root=b"\x01" * 32), w.nodes[0])
    assert verify(wrong).reason == REASON_SAMPLES_ROOT


def test_cherry_picked_prompts_are_prompt_set():
    w = world()
    samples = w.honest[0].samples
    dropped = resign(w.honest[0], w.nodes[0], samples=samples[:4])  # only prompt 0
    report = verify(dropped)
    assert report.reason == REASON_PROMPT_SET
    assert (report.findings[0].expected, report.findings[0].claimed) == (8.0, 4.0)
    swapped = tuple(dataclasses.replace(s, prompt_index=1 - s.prompt_index) for s in samples)
    assert verify(resign(w.honest[0], w.nodes[0], samples=swapped)).reason == REASON_PROMPT_SET


def test_an_overlong_or_out_of_vocabulary_completion_is_sample_shape():
    w = world()
    first = w.honest[0].samples[0]
    long = dataclasses.replace(first, completion_ids=(50,) * 13, logprobs=(-1.0,) * 13)
    report = verify(resign(w.honest[0], w.nodes[0], samples=(long,) + w.honest[0].samples[1:]))
    assert report.reason == REASON_SAMPLE_SHAPE
    assert (report.findings[0].expected, report.findings[0].claimed) == (12.0, 13.0)
    outside = dataclasses.replace(first, completion_ids=(5000,), logprobs=(-1.0,))
    assert verify(resign(w.honest[0], w.nodes[0], samples=(outside,) + w.honest[0].samples[1:])).reason == REASON_SAMPLE_SHAPE


def test_replay_is_detected_across_nodes_and_rounds_and_only_after_acceptance():
    w = world()
    context = w.context()
    first = verify_contribution(w.round, w.honest[1], w.model, w.tokenizer, context)
    old = verify_contribution(w.old_round, w.old_honest, w.old_model, w.tokenizer, context)
    assert first.accepted and old.accepted
    seen = with_seen(with_seen(context, first), old)
    copied = resign(w.honest[1], w.nodes[0])  # another node's samples, same round
    replayed = resign(w.old_honest, w.nodes[0], round_id=w.round.round_id, model_hash=w.round.model_hash)
    for cheat in (copied, replayed):
        report = verify_contribution(w.round, cheat, w.model, w.tokenizer, seen)
        assert report.reason == REASON_REPLAY
        assert {f.sample_index for f in report.findings} >= set(range(len(cheat.samples)))
    rejected = verify(copied)  # verified first, it fails a deeper check and is not remembered
    assert not rejected.accepted and with_seen(context, rejected) == context


def test_the_same_gradient_twice_is_replay_even_with_new_samples():
    w = world()
    context = w.context()
    seen = with_seen(context, verify_contribution(w.round, w.honest[1], w.model, w.tokenizer, context))
    borrowed = resign(w.honest[0], w.nodes[0], gradient=w.honest[1].gradient)
    report = verify_contribution(w.round, borrowed, w.model, w.tokenizer, seen)
    assert report.reason == REASON_REPLAY
    assert report.findings == (dataclasses.replace(report.findings[0], sample_index=-1, check="gradient-seen"),)


def test_a_gradient_of_the_wrong_shape_is_malformed_gradient():
    w = world()
    from thinkmesh.protocol.rules.messages import GradientPayload

    empty = resign(w.honest[0], w.nodes[0], gradient=GradientPayload("none", ()))
    assert verify(empty).reason == REASON_MALFORMED_GRADIENT


def test_a_gradient_scaled_just_past_the_tolerance_is_caught_and_one_within_passes():
    w = world()
    from thinkmesh.protocol.rules.gradient_codec import encode_gradient

    honest = decode_gradient(w.honest[0].gradient, w.shapes)
    for factor, reason in ((1.0005, REASON_OK), (1.01, REASON_GRADIENT_MISMATCH)):
        scaled = {name: t * factor for name, t in honest.items()}
        contribution = resign(w.honest[0], w.nodes[0], gradient=encode_gradient(scaled, "none"))
        assert verify(contribution).reason == reason


def test_audit_plans_are_replayable_and_follow_the_rates():
    policy = AuditPolicy(logprob_samples=3, probe_rate=0.5, full_gradient_rate=0.25)
    plans = [audit_plan(b"s" * 32, i.to_bytes(32, "big"), b"beacon", 10, policy) for i in range(400)]
    assert plans == [audit_plan(b"s" * 32, i.to_bytes(32, "big"), b"beacon", 10, policy) for i in range(400)]
    levels = [p.gradient for p in plans]
    assert 0.15 < levels.count(GRADIENT_FULL) / 400 < 0.35
    assert 0.28 < levels.count(GRADIENT_PROBE) / 400 < 0.47  # 0.75 * 0.5
    for plan in plans:
        expected = 3 if plan.gradient == GRADIENT_NONE else 10
        assert len(plan.rescored) == expected == len(set(plan.rescored))
    subsets = {audit_plan(b"s" * 32, i.to_bytes(32, "big"), b"", 10, NO_GRADIENT).rescored for i in range(50)}
    assert len(subsets) > 20  # the subset really varies with the contribution hash


def test_the_beacon_changes_the_plan():
    plans = {audit_plan(b"s" * 32, b"c" * 32, bytes([i]), 16, NO_GRADIENT).rescored for i in range(20)}
    assert len(plans) > 10


def test_policy_rejects_nonsense():
    with pytest.raises(AuditError):
        AuditPolicy(probe_rate=1.5)
    with pytest.raises(AuditError):
        AuditPolicy(logprob_samples=0)
    with pytest.raises(AuditError):
        AuditPolicy(full_gradient_rate=1)  # an int: the wire format needs floats


def test_quantized_reference_cancels_the_codec_error():
    torch.manual_seed(0)
    reference = {"w": torch.randn(64, 64) ** 3}  # heavy tails: uniform8 clips them hard
    for mode in ("uniform8", "blockwise8", "fp16"):
        sent = quantized_reference(reference, mode)
        noisy = quantized_reference({"w": reference["w"] * (1 + 1e-6 * torch.randn(64, 64))}, mode)
        assert compare_gradients(noisy, sent).cosine > 0.9999
    assert compare_gradients({"w": torch.zeros(3)}, {"w": torch.zeros(3)}).cosine == 1.0
    assert compare_gradients({"w": torch.ones(3)}, {"w": torch.zeros(3)}).norm_error == 1e30


def test_the_report_names_the_contribution_by_its_signed_payload_and_signature():
    w = world()
    report = verify(w.honest[0])
    assert report.accepted and report.reason == REASON_OK
    assert report.contribution_hash == contribution_hash(w.honest[0])
    signed = w.honest[0]
    unsigned = encode_message(dataclasses.replace(signed, signature=bytes(64)))
    assert report.contribution_hash == hashlib.sha256(
        CONTRIBUTION_HASH_DOMAIN + hashlib.sha256(unsigned).digest() + signed.signature
    ).digest()


# --- the detection arithmetic ---------------------------------------------------------------------


def test_detection_probability_worked_examples():
    assert detection_probability(10, 1, 3) == pytest.approx(0.3)  # m / n for one fake
    assert detection_probability(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert detection_probability(32, 32, 1) == 1.0
    assert detection_probability(32, 4, 0) == 0.0
    assert detection_probability(32, 0, 32) == 0.0


def test_detection_probability_matches_simulation():
    import random

    rng = random.Random(0)
    n, k, m, trials = 20, 3, 5, 20000
    hits = sum(bool(set(rng.sample(range(n), m)) & set(range(k))) for _ in range(trials))
    assert hits / trials == pytest.approx(detection_probability(n, k, m), abs=0.015)


def test_minimum_audited_samples_is_the_least_that_reaches_the_target():
    m = minimum_audited_samples(64, 4, 0.99)
    assert detection_probability(64, 4, m) >= 0.99 > detection_probability(64, 4, m - 1)
    assert minimum_audited_samples(64, 64, 0.99) == 1
    with pytest.raises(AuditEconomicsError):
        minimum_audited_samples(64, 0, 0.5)


def test_cheating_loses_exactly_above_the_break_even_rate():
    stake, payout = 100.0, 10.0
    rate = minimum_audit_rate(stake, payout)
    assert rate == pytest.approx(10 / 110)
    assert expected_cheating_loss(rate + 1e-6, payout, stake, payout) > 0
    assert expected_cheating_loss(rate - 1e-6, payout, stake, payout) < 0
    assert break_even_detection(payout, 0.0, gain=30.0) == 1.0  # no stake, big gain: no rate suffices
    with pytest.raises(AuditEconomicsError):
        break_even_detection(-1.0, 1.0)


def test_a_sample_that_differs_from_the_honest_one_changes_the_contribution_hash():
    w = world()
    sample = w.honest[0].samples[0]
    bumped = dataclasses.replace(sample, logprobs=(sample.logprobs[0] + 1e-3,) + sample.logprobs[1:])
    assert isinstance(bumped, Sample)
    changed = resign(w.honest[0], w.nodes[0], samples=(bumped,) + w.honest[0].samples[1:])
    assert contribution_hash(changed) != contribution_hash(w.honest[0])
    assert contribution_hash(changed, encode_message(changed)) == contribution_hash(changed)


def test_the_gradient_digest_names_the_exact_gradient_whoever_signs_it():
    w = world()
    honest = w.honest[0]
    assert gradient_digest(resign(honest, w.nodes[1]).gradient) == gradient_digest(honest.gradient)
    blob = honest.gradient.tensors[0]
    flipped = bytes([blob.data[-1] ^ 1])
    bumped = dataclasses.replace(blob, data=blob.data[:-1] + flipped)
    payload = dataclasses.replace(honest.gradient, tensors=(bumped,) + honest.gradient.tensors[1:])
    assert gradient_digest(payload) != gradient_digest(honest.gradient)
    # Bytes moved across a tensor boundary change the digest too (each part is length-prefixed).
    first, second = honest.gradient.tensors[:2]
    shifted = (dataclasses.replace(first, data=first.data + second.data[:1]),
               dataclasses.replace(second, data=second.data[1:]))
    moved = dataclasses.replace(honest.gradient, tensors=shifted + honest.gradient.tensors[2:])
    assert gradient_digest(moved) != gradient_digest(honest.gradient)


def test_a_probe_is_the_full_gradient_on_its_slice_and_leaves_the_model_as_it_was():
    """Freezing the untouched parameters during a probe changes which graph is recorded, not the
    numbers; requires_grad is restored even when the audit fails."""
    from thinkmesh.protocol.rules.audit import recompute_gradient
    from thinkmesh.protocol.rules.verification import prompt_ids_for

    w = world()
    honest = w.honest[0]
    prompts = prompt_ids_for(w.round, honest.node_key, w.tokenizer)
    rewards = [s.rewards for s in honest.samples]
    names = [n for n, _ in w.model.named_parameters()]
    full = recompute_gradient(w.model, prompts, honest.samples, rewards, honest.strategy, names, 0).gradients
    for k in (1, 4):
        probe = recompute_gradient(w.model, prompts, honest.samples, rewards, honest.strategy, names[-k:], 0).gradients
        assert sorted(probe) == sorted(names[-k:])
        for name in probe:
            assert float(full[name].norm()) > 0
            torch.testing.assert_close(probe[name], full[name], rtol=1e-4, atol=1e-5 * float(full[name].abs().max()))
    with pytest.raises(AuditError):
        recompute_gradient(w.model, prompts, honest.samples, rewards, honest.strategy, ["no.such.weight"], 0)
    assert all(p.requires_grad for p in w.model.parameters())


def test_a_few_coincident_samples_are_not_replay_but_most_are():
    """An honest near-deterministic model can repeat a sample; a copy repeats most of them."""
    from thinkmesh.protocol.rules.verification import ContributionDigests, check_replay

    hashes = tuple(bytes([i]) * 32 for i in range(8))
    digests = ContributionDigests(contribution_hash=b"\x00" * 32, sample_hashes=hashes, gradient_digest=b"\x09" * 32)
    assert check_replay(None, frozenset(hashes[:1]), frozenset(), digests) == ()
    assert check_replay(None, frozenset(hashes[:4]), frozenset(), digests) == ()
    flagged = check_replay(None, frozenset(hashes[:5]), frozenset(), digests)
    assert [f.sample_index for f in flagged] == [0, 1, 2, 3, 4]


def test_a_repeated_zero_signal_gradient_is_not_replay_but_a_repeated_real_one_is():
    """Groups with equal rewards and lengths give every honest node the same zero gradient."""
    import dataclasses

    from thinkmesh.protocol.rules.verification import carries_signal, check_replay, contribution_digests

    honest = world().honest[0]
    digests = contribution_digests(honest)
    seen = frozenset({digests.gradient_digest})
    first = honest.samples[0]
    flat = tuple(dataclasses.replace(s, rewards=first.rewards, completion_ids=first.completion_ids,
                                     logprobs=first.logprobs) for s in honest.samples)
    no_signal = dataclasses.replace(honest, samples=flat)
    assert not carries_signal(no_signal)
    assert check_replay(no_signal, frozenset(), seen, digests) == ()
    assert carries_signal(honest)
    assert [f.check for f in check_replay(honest, frozenset(), seen, digests)] == ["gradient-seen"]


@pytest.mark.parametrize("call_tokens", [64, 0], ids=["default-buckets", "one-bucket-per-length"])
def test_shared_prefix_scoring_equals_one_full_prefill_in_value_and_gradient(monkeypatch, call_tokens):
    """The verifier runs each distinct prompt once and completions in length buckets; prompts of
    unequal length (left padding) and unordered rows included, it must score and differentiate
    like the node's full prefill."""
    from thinkmesh.protocol.rules import prefix_scoring
    from thinkmesh.protocol.rules.prefix_scoring import shared_prefix_logprobs
    from thinkmesh.protocol.rules.scoring import completion_logprobs

    monkeypatch.setattr(prefix_scoring, "BUCKET_CALL_TOKENS", call_tokens)
    w = world()
    samples = w.honest[0].samples
    short, long = (5, 6, 7), (5, 6, 7, 8, 9, 10, 11)
    prompts = [long if s.prompt_index else short for s in samples][::-1]
    completions = [s.completion_ids for s in samples][::-1]
    params = list(w.model.parameters())
    full = completion_logprobs(w.model, prompts, completions, 0.7, 0)
    shared = shared_prefix_logprobs(w.model, prompts, completions, 0.7, 0)
    assert torch.equal(full.mask, shared.mask)
    assert float((full.logprobs - shared.logprobs).detach().abs().max()) < 1e-5
    weights = torch.arange(1.0, full.logprobs.shape[1] + 1.0)  # a loss that weighs positions unequally

    def flat_gradient(scored):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad((scored.logprobs * weights).sum(), params)])

    a, b = flat_gradient(full), flat_gradient(shared)
    comparison = compare_gradients({"g": b}, {"g": a})
    assert comparison.cosine > 1 - 1e-9 and comparison.norm_error < 1e-6


def test_unequal_lengths_carry_signal_only_through_dapos_overlong_penalty():
    """Equal rewards with unequal lengths: every strategy's advantages are zero (each honest node sends
    the same zero gradient) unless DAPO's overlong buffer, with no dynamic sampling, tells the lengths apart."""
    from thinkmesh.protocol.rules.verification import carries_signal

    honest = world().honest[0]
    first = honest.samples[0]
    limit = honest.strategy.max_new_tokens
    lengths = [1 if i % 2 else limit for i in range(len(honest.samples))]
    uneven = tuple(dataclasses.replace(s, rewards=first.rewards, completion_ids=(first.completion_ids[0],) * n,
                                       logprobs=(first.logprobs[0],) * n) for s, n in zip(honest.samples, lengths))

    def with_strategy(**fields):
        return dataclasses.replace(honest, samples=uneven, strategy=dataclasses.replace(honest.strategy, **fields))

    assert not carries_signal(with_strategy(overlong_buffer=0, dynamic_sampling=False))
    assert carries_signal(with_strategy(overlong_buffer=max(1, limit // 2), dynamic_sampling=False))
    assert not carries_signal(with_strategy(overlong_buffer=max(1, limit // 2), dynamic_sampling=True))


def test_shared_prefix_scoring_handles_one_token_completions(monkeypatch):
    from thinkmesh.protocol.rules import prefix_scoring
    from thinkmesh.protocol.rules.prefix_scoring import shared_prefix_logprobs
    from thinkmesh.protocol.rules.scoring import completion_logprobs

    w = world()
    prompts, completions = [(5, 6, 7)] * 3 + [(9,)], [(11,), (12,), (11,), (13,)]
    with torch.no_grad():
        full = completion_logprobs(w.model, prompts, completions, 1.0, 0)
        shared = shared_prefix_logprobs(w.model, prompts, completions, 1.0, 0)
    assert shared.logprobs.shape == (4, 1)
    assert float((full.logprobs - shared.logprobs).abs().max()) < 1e-5
    monkeypatch.setattr(prefix_scoring, "BUCKET_CALL_TOKENS", 0)  # a one-token bucket beside longer ones
    completions = [(11,), (12, 13, 14), (11, 12), (13,)]
    with torch.no_grad():
        full = completion_logprobs(w.model, prompts, completions, 1.0, 0)
        shared = shared_prefix_logprobs(w.model, prompts, completions, 1.0, 0)
    assert torch.equal(full.mask, shared.mask)
    assert float((full.logprobs - shared.logprobs).abs().max()) < 1e-5


def test_length_buckets_cut_where_padding_costs_more_than_a_call():
    from thinkmesh.protocol.rules.prefix_scoring import length_buckets

    assert length_buckets([48, 2, 47, 3], call_tokens=10) == [[1, 3], [2, 0]]
    assert length_buckets([48, 2, 47, 3], call_tokens=1000) == [[1, 3, 2, 0]]
    assert length_buckets([5, 5, 5], call_tokens=0) == [[0, 1, 2]]
    lengths = [1, 5, 11, 12, 16, 19, 23, 24, 27, 30, 35, 48, 48, 48, 48, 48]
    buckets = length_buckets(lengths, call_tokens=64)
    assert sorted(row for bucket in buckets for row in bucket) == list(range(16))
    padded = sum(len(b) * max(lengths[r] for r in b) + 64 for b in buckets)
    assert padded < 16 * 48 + 64  # cheaper than one batch, by the cost it minimises


def test_two_numerically_zero_gradients_match_and_a_real_one_against_zero_does_not():
    """Rounding noise (~1e-9) against an exact zero is a match; zero against a real gradient, or noise
    against one, is a mismatch in both directions."""
    import torch

    from thinkmesh.protocol.rules.audit import GRADIENT_NOISE_FLOOR, AuditPolicy, gradient_findings

    policy = AuditPolicy()
    zero = {"w": torch.zeros(64)}
    noise = {"w": torch.full((64,), 1e-9 / 8)}
    real = {"w": torch.linspace(-1, 1, 64) * 1e-3}
    assert float(noise["w"].norm()) < GRADIENT_NOISE_FLOOR < float(real["w"].norm())
    assert gradient_findings(zero, noise, "none", policy) == ()
    assert gradient_findings(noise, zero, "none", policy) == ()
    assert {f.check for f in gradient_findings(zero, real, "none", policy)} == {"gradient-cosine", "gradient-norm"}
    assert {f.check for f in gradient_findings(real, noise, "none", policy)} == {"gradient-cosine", "gradient-norm"}
