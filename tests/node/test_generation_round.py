"""Generation rounds on the cold-started micro model: an honest node's samples with an empty
gradient pass the verifier and its correct, well-formed traces are paid and published; a trace
claimed correct that is not, or one drawn off the round's streams, fails the whole contribution."""

from __future__ import annotations

import dataclasses

import pytest

from thinkmesh.devnet.cheats import CheatInputs, apply_cheat, resign
from thinkmesh.node.work.contribution_step import honest_contribution
from thinkmesh.node.model.model_dir import load_model, load_tokenizer
from thinkmesh.protocol.rules.generation import ROUND_KIND_GENERATION, accepted_trace_indices, trace_accepted
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import GradientPayload, RoundAnnouncement, TensorBlob, sign_message
from thinkmesh.protocol.rules.payout import generation_payout
from thinkmesh.protocol.rules.strategies import strategy_from_name
from thinkmesh.protocol.rules.tasks import TaskSpec
from thinkmesh.protocol.rules.terms import RoundTerms
from thinkmesh.protocol.rules.traces import contribution_traces
from thinkmesh.protocol.rules.verification import VerificationContext, verify_contribution

GROUP, TOKENS, PROMPTS = 8, 32, 4


@pytest.fixture(scope="module")
def setting(coldstarted_micro_dir):
    model, tokenizer = load_model(coldstarted_micro_dir).eval(), load_tokenizer(coldstarted_micro_dir)
    coordinator, node = NodeIdentity.from_seed(b"c" * 32), NodeIdentity.from_seed(b"n" * 32)
    announcement = sign_message(RoundAnnouncement(
        chain_id=31337, run_id="gen", round_id=3, model_version=0, model_hash=b"\x01" * 32,
        task=TaskSpec("linear", 1), prompts_per_node=PROMPTS, seed=b"\x02" * 32, deadline_ms=0,
        coordinator_key=coordinator.public_key, prompt_template="r1-compact",
        terms=RoundTerms((1.0,), (1.0,), (GROUP,), (TOKENS,)), kind=ROUND_KIND_GENERATION,
    ), coordinator)
    strategy = dataclasses.replace(strategy_from_name("grpo"), group_size=GROUP, max_new_tokens=TOKENS, beta=0.0)
    honest = honest_contribution(model, tokenizer, announcement, node, strategy, "uniform8")
    return model, tokenizer, announcement, node, honest


def _verify(setting, contribution):
    model, tokenizer, announcement, _, _ = setting
    return verify_contribution(announcement, contribution, model, tokenizer, VerificationContext(None))


def test_an_honest_generation_contribution_is_verified_and_pays_its_correct_traces(setting):
    _, _, _, _, honest = setting
    assert honest.gradient.tensors == ()
    report = _verify(setting, honest)
    assert report.accepted, report
    assert report.gradient_audit == "none" and report.checked_samples == tuple(range(GROUP * PROMPTS))
    accepted = accepted_trace_indices(honest)
    assert accepted, "the cold-started model should be right sometimes"
    assert len(accepted) < len(honest.samples)  # and wrong sometimes: those are left out, not slashed
    assert all(trace_accepted(honest.samples[i].rewards) for i in accepted)
    assert generation_payout(honest, 5) == (len(accepted), 5 * len(accepted))
    assert [leaf.sample_index for leaf in contribution_traces(honest, generation=True)] == list(accepted)
    assert len(contribution_traces(honest)) == len(honest.samples)  # a training round publishes every sample


def test_a_wrong_trace_claimed_correct_is_reward_mismatch(setting):
    model, tokenizer, announcement, node, honest = setting
    cheat = apply_cheat("fake-rewards", CheatInputs(announcement, node, honest, model, tokenizer))
    assert cheat.gradient.tensors == ()
    assert _verify(setting, cheat).reason == "reward-mismatch"


def test_an_off_policy_trace_is_sampling_mismatch(setting):
    model, tokenizer, announcement, node, honest = setting
    cheat = apply_cheat("off-policy", CheatInputs(announcement, node, honest, model, tokenizer))
    assert _verify(setting, cheat).reason == "sampling-mismatch"


def test_a_generation_contribution_with_a_gradient_is_malformed(setting):
    _, _, _, node, honest = setting
    carrying = resign(honest, node, gradient=GradientPayload("none", (TensorBlob("lm_head.weight", b"x"),)))
    report = _verify(setting, carrying)
    assert report.reason == "malformed-gradient" and report.findings[0].check == "gradient-not-empty"


def test_empty_gradients_of_two_nodes_are_not_a_replay(setting):
    from thinkmesh.protocol.rules.verification import gradient_digest

    model, tokenizer, announcement, _, honest = setting
    other = NodeIdentity.from_seed(b"o" * 32)
    theirs = honest_contribution(model, tokenizer, announcement, other, honest.strategy, "uniform8")
    context = VerificationContext(None, seen_sample_hashes=frozenset(),
                                  seen_gradient_digests=frozenset({gradient_digest(honest.gradient)}))
    assert gradient_digest(theirs.gradient) == gradient_digest(honest.gradient)
    assert verify_contribution(announcement, theirs, model, tokenizer, context).accepted


def test_the_coordinator_config_names_generation_rounds():
    from thinkmesh.coordinator.config import RoundConfig

    every_third = RoundConfig(generation_every=3)
    assert [r for r in range(1, 10) if every_third.is_generation_round(r)] == [3, 6, 9]
    listed = RoundConfig(generation_rounds=[4])
    assert [r for r in range(1, 10) if listed.is_generation_round(r)] == [4]
    assert not any(RoundConfig().is_generation_round(r) for r in range(10))
