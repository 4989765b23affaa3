"""Evidence files: true verdicts re-run to agree, tampered evidence to disagree, hash = file hash."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tests.verification_world import world
from thinkmesh.devnet.cheats import apply_cheat
from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.evidence import (
    Evidence,
    build_evidence,
    evidence_bytes,
    evidence_hash,
    evidence_parts,
    read_evidence,
    rerun_evidence,
)
from thinkmesh.protocol.rules.hashing import keccak256, keccak256_of_parts
from thinkmesh.protocol.rules.messages import Finding
from thinkmesh.protocol.rules.verification import (
    REASON_GRADIENT_MISMATCH,
    REASON_LOGPROB_MISMATCH,
    REASON_OK,
    REASON_REPLAY,
    REASON_REWARD_MISMATCH,
    verify_contribution,
    with_seen,
)

pytestmark = pytest.mark.timeout(240)


def evidence_of(contribution, context=None, prior=()):
    w = world()
    context = context or w.context()
    report = verify_contribution(w.round, contribution, w.model, w.tokenizer, context)
    return build_evidence(w.round, contribution, report, context, w.tokenizer, prior)


def cheat(mode):
    return apply_cheat(mode, world().cheat_inputs())


def test_a_reward_verdict_re_runs_with_protocol_alone_and_with_the_tokenizer():
    evidence = evidence_of(cheat("fake-rewards"))
    assert evidence.reason == REASON_REWARD_MISMATCH and evidence.cited
    alone = rerun_evidence(evidence)
    assert alone.agrees, alone.notes
    assert any("decoded text" in note for note in alone.notes)  # what was taken on trust is said
    w = world()
    assert rerun_evidence(evidence, w.model, w.tokenizer).agrees


@pytest.mark.parametrize("mode, reason", [("made-up-logprobs", REASON_LOGPROB_MISMATCH),
                                          ("scaled-gradient", REASON_GRADIENT_MISMATCH)])
def test_model_verdicts_need_the_model_and_agree_with_it(mode, reason):
    w = world()
    evidence = evidence_of(cheat(mode))
    assert evidence.reason == reason
    assert not rerun_evidence(evidence).agrees  # cannot confirm without the model
    assert rerun_evidence(evidence, w.model, w.tokenizer).agrees


def test_an_accepted_verdict_re_runs_to_ok():
    w = world()
    evidence = evidence_of(w.honest[2])
    assert evidence.reason == REASON_OK
    assert rerun_evidence(evidence, w.model, w.tokenizer).agrees


def test_the_wrong_model_is_refused_before_anything_runs():
    w = world()
    outcome = rerun_evidence(evidence_of(cheat("made-up-logprobs")), w.old_model, w.tokenizer)
    assert not outcome.agrees and "hashes to" in outcome.notes[0]


def test_a_replay_verdict_carries_the_earlier_contribution():
    w = world()
    context = with_seen(w.context(), verify_contribution(w.round, w.honest[1], w.model, w.tokenizer, w.context()))
    evidence = evidence_of(cheat("copy-peer"), context, prior=(w.honest[1],))
    assert evidence.reason == REASON_REPLAY
    assert rerun_evidence(evidence).agrees
    assert not rerun_evidence(dataclasses.replace(evidence, prior=())).agrees


def tamperings(evidence: Evidence):
    """Ways a dishonest coordinator (or anyone) might edit a reward-mismatch evidence file."""
    first = evidence.findings[0]
    honest_sample = world().honest[0].samples[0]
    yield "claimed value", dataclasses.replace(evidence, findings=(dataclasses.replace(first, claimed=0.0),) + evidence.findings[1:])
    yield "reason", dataclasses.replace(evidence, reason=REASON_LOGPROB_MISMATCH)
    yield "extra finding", dataclasses.replace(evidence, findings=evidence.findings + (Finding(5, "reward:accuracy", 0.0, 1.0),))
    samples = (honest_sample,) + evidence.contribution.samples[1:]
    yield "sample", dataclasses.replace(
        evidence, contribution_bytes=encode_message(dataclasses.replace(evidence.contribution, samples=samples)))
    yield "contribution bytes", dataclasses.replace(evidence, contribution_bytes=evidence.contribution_bytes[:-1])
    cited = evidence.cited[0]
    yield "text", dataclasses.replace(evidence, cited=(dataclasses.replace(cited, completion_text="<think>5</think> <answer>3</answer>"),) + evidence.cited[1:])
    yield "proof", dataclasses.replace(evidence, cited=(dataclasses.replace(cited, proof=cited.proof[:-1]),) + evidence.cited[1:])
    yield "round seed", dataclasses.replace(evidence, announcement=dataclasses.replace(evidence.announcement, seed=b"\x00" * 32))


def test_tampered_evidence_disagrees():
    evidence = evidence_of(cheat("fake-rewards"))
    assert rerun_evidence(evidence).agrees
    for what, changed in tamperings(evidence):
        outcome = rerun_evidence(changed)
        assert not outcome.agrees, what
        assert outcome.notes, what


def test_evidence_hash_is_the_keccak_of_the_file(tmp_path):
    evidence = evidence_of(cheat("fake-rewards"))
    path = tmp_path / "verdict.evidence"
    path.write_bytes(evidence_bytes(evidence))
    assert evidence_hash(evidence) == keccak256(path.read_bytes())
    assert read_evidence(path) == evidence
    assert read_evidence(path).contribution == evidence.contribution
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ProtocolError):
        read_evidence(path)
    not_a_contribution = dataclasses.replace(evidence, contribution_bytes=evidence.contribution_bytes + b"\x00")
    path.write_bytes(evidence_bytes(not_a_contribution))
    with pytest.raises(ProtocolError, match="contribution bytes are not a contribution"):
        read_evidence(path)


def test_the_parts_are_the_canonical_bytes_for_every_bin_header_and_a_planted_stand_in_changes_nothing():
    w = world()
    evidence = evidence_of(cheat("copy-peer"), with_seen(w.context(), verify_contribution(
        w.round, w.honest[1], w.model, w.tokenizer, w.context())), prior=(w.honest[1],))
    for blob in (b"", b"x" * 7, b"y" * 300, b"z" * 70_000, evidence.contribution_bytes):
        changed = dataclasses.replace(evidence, contribution_bytes=blob)
        parts = evidence_parts(changed)
        assert b"".join(parts) == evidence_bytes(changed) and parts[1] is blob
        assert keccak256_of_parts(parts) == evidence_hash(changed)
    # A prior's bytes that hold what looks like a stand-in's header still come out right.
    planted = dataclasses.replace(evidence, contribution_bytes=b"\xc4\x20" + bytes(32))
    assert b"".join(evidence_parts(planted)) == evidence_bytes(planted)


def test_evidence_embeds_the_contribution_s_signed_bytes_as_they_are():
    w = world()
    contribution = cheat("fake-rewards")
    encoded = encode_message(contribution)
    report = verify_contribution(w.round, contribution, w.model, w.tokenizer, w.context())
    evidence = build_evidence(w.round, contribution, report, w.context(), w.tokenizer, (), encoded)
    assert evidence.contribution_bytes is encoded and evidence == evidence_of(contribution)
    assert evidence.contribution == contribution
    with pytest.raises(ProtocolError, match="does not end with this contribution.s signature"):
        build_evidence(w.round, contribution, report, w.context(), w.tokenizer, (), encode_message(w.honest[0]))


def run_cli(argv):
    from thinkmesh.protocol.cli.verify_evidence import register

    parser = argparse.ArgumentParser(prog="thinkmesh")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_prints_agree_and_disagree(tmp_path, capsys):
    w = world()
    path = tmp_path / "e.evidence"
    evidence = evidence_of(cheat("fake-rewards"))
    path.write_bytes(evidence_bytes(evidence))
    digest = evidence_hash(evidence)
    assert run_cli(["verify-evidence", str(path), "--hash", "0x" + digest.hex()]) == 0
    assert capsys.readouterr().out.startswith("agree")
    assert run_cli(["verify-evidence", str(path), "--hash", "0x" + "00" * 32]) == 1
    assert capsys.readouterr().out.startswith("disagree")
    assert run_cli(["verify-evidence", str(path), "--json", "--coordinator", "0x" + w.nodes[0].public_key.hex()]) == 1
    assert '"result": "disagree"' in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_cli_reruns_a_model_verdict_from_a_model_directory(tmp_path, capsys):
    w = world()
    model_dir = tmp_path / "model"
    w.model.save_pretrained(str(model_dir), safe_serialization=True)
    w.tokenizer.save_pretrained(str(model_dir))
    path = tmp_path / "logprob.evidence"
    path.write_bytes(evidence_bytes(evidence_of(cheat("made-up-logprobs"))))
    assert run_cli(["verify-evidence", str(path)]) == 1
    capsys.readouterr()
    assert run_cli(["verify-evidence", str(path), "--model", str(model_dir)]) == 0
    assert capsys.readouterr().out.startswith("agree")
