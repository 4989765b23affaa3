"""Each cheat mode is realistic (cheap checks pass) and is rejected with its expected reason."""

from __future__ import annotations

import pytest

from tests.verification_world import world
from thinkmesh.devnet.cheats import CHEAT_MODES, CheatError, apply_cheat
from thinkmesh.protocol.rules.audit import AuditPolicy
from thinkmesh.protocol.rules.messages import samples_root, verify_message
from thinkmesh.protocol.rules.verification import (
    REASON_GRADIENT_MISMATCH,
    REASON_LOGPROB_MISMATCH,
    REASON_OK,
    REASON_REPLAY,
    REASON_REWARD_MISMATCH,
    REASON_SAMPLING_MISMATCH,
    check_prompt_set,
    check_round_binding,
    verify_contribution,
    with_seen,
)

pytestmark = pytest.mark.timeout(240)

# The reason each mode is rejected with when the verifier has not seen the copied work before.
EXPECTED = {
    "fake-rewards": REASON_REWARD_MISMATCH,
    "stale-model": REASON_LOGPROB_MISMATCH,
    "made-up-logprobs": REASON_LOGPROB_MISMATCH,
    "random-gradient": REASON_GRADIENT_MISMATCH,
    "scaled-gradient": REASON_GRADIENT_MISMATCH,
    "copy-peer": REASON_LOGPROB_MISMATCH,
    "replay": REASON_LOGPROB_MISMATCH,
    "off-policy": REASON_SAMPLING_MISMATCH,
    "crafted-samples": REASON_SAMPLING_MISMATCH,
    "partial-gradient": REASON_GRADIENT_MISMATCH,
}


@pytest.mark.parametrize("mode", CHEAT_MODES)
def test_each_cheat_passes_the_cheap_checks_and_fails_its_deep_one(mode):
    w = world()
    cheat = apply_cheat(mode, w.cheat_inputs())
    verify_message(cheat, w.nodes[0].public_key)  # properly re-signed by the cheater
    assert cheat.node_key == w.nodes[0].public_key
    assert samples_root(cheat.samples) == cheat.samples_root
    assert check_round_binding(w.round, cheat) == ()
    assert check_prompt_set(w.round, cheat) == ()
    report = verify_contribution(w.round, cheat, w.model, w.tokenizer, w.context())
    assert report.reason == EXPECTED[mode], report.findings
    assert not report.accepted


@pytest.mark.parametrize("mode", ["copy-peer", "replay"])
def test_copied_work_is_replay_once_the_original_was_accepted(mode):
    w = world()
    context = w.context()
    for announcement, original, model in ((w.round, w.honest[1], w.model), (w.old_round, w.old_honest, w.old_model)):
        context = with_seen(context, verify_contribution(announcement, original, model, w.tokenizer, context))
    report = verify_contribution(w.round, apply_cheat(mode, w.cheat_inputs()), w.model, w.tokenizer, context)
    assert report.reason == REASON_REPLAY


def test_a_partial_reward_cheat_is_still_caught_because_rewards_are_checked_for_every_sample():
    w = world()
    cheat = apply_cheat("fake-rewards", w.cheat_inputs(fraction=0.5))
    report = verify_contribution(w.round, cheat, w.model, w.tokenizer, w.context())
    assert report.reason == REASON_REWARD_MISMATCH
    assert {f.sample_index for f in report.findings} == {0, 1, 2, 3}  # the first prompt's group only


def test_gradient_cheats_slip_through_only_when_no_gradient_audit_runs():
    w = world()
    blind = AuditPolicy(probe_rate=0.0, full_gradient_rate=0.0)
    cheat = apply_cheat("scaled-gradient", w.cheat_inputs())
    report = verify_contribution(w.round, cheat, w.model, w.tokenizer, w.context(policy=blind))
    assert report.reason == REASON_OK  # why the probe runs on every contribution by default


def test_modes_refuse_to_run_without_their_inputs():
    w = world()
    with pytest.raises(CheatError):
        apply_cheat("stale-model", w.cheat_inputs(stale_model=None))
    with pytest.raises(CheatError):
        apply_cheat("copy-peer", w.cheat_inputs(peer=None))
    with pytest.raises(CheatError):
        apply_cheat("lazy", w.cheat_inputs())


def test_a_cheat_that_changes_nothing_sends_the_honest_contribution_itself():
    """Scaling an exactly zero gradient, or a "stale" model with the current weights, is honest work:
    the node must send (and record) it as such, not as a cheat that went unnoticed."""
    import dataclasses

    import torch

    from thinkmesh.protocol.rules.gradient_codec import encode_gradient

    w = world()
    inputs = w.cheat_inputs()
    zeros = {name: torch.zeros_like(p) for name, p in w.model.named_parameters()}
    flat = dataclasses.replace(inputs.honest, gradient=encode_gradient(zeros, inputs.honest.gradient.compression))
    assert apply_cheat("scaled-gradient", dataclasses.replace(inputs, honest=flat)) is flat
    assert apply_cheat("stale-model", dataclasses.replace(inputs, stale_model=w.model)) is inputs.honest
    assert apply_cheat("scaled-gradient", inputs) is not inputs.honest


def test_a_partial_gradient_keeps_the_honest_bytes_of_the_tensors_it_computes_in_full():
    """A cheater splices the honest encoded tensors in (an 8-bit code decoded and encoded again can
    move), so a probe of one of them matches exactly and only a probe of a faked one catches it."""
    import dataclasses

    from thinkmesh.protocol.rules.audit import audited_parameter_names

    w = world()
    names = audited_parameter_names(w.model, "full")
    kept = names[-3:]
    for compression in ("uniform8", "none"):
        honest = w.honest[0]
        if honest.gradient.compression != compression:
            from thinkmesh.devnet.cheats import honest_contribution
            from tests.verification_world import STRATEGY

            honest = honest_contribution(w.model, w.tokenizer, w.round, w.nodes[0], STRATEGY, compression)
        cheat = apply_cheat("partial-gradient", dataclasses.replace(w.cheat_inputs(), honest=honest, honest_tensors=kept))
        blobs = {b.name: b for b in cheat.gradient.tensors}
        original = {b.name: b for b in honest.gradient.tensors}
        assert all(blobs[name] == original[name] for name in kept)
        assert any(blobs[name] != original[name] for name in names if name not in kept)
    with pytest.raises(CheatError):
        apply_cheat("partial-gradient", w.cheat_inputs(honest_tensors=("no.such.weight",)))
