"""The accepted-contribution archive: one copy of the bytes on disk (a link to the evidence file,
which embeds them), read back as the contribution, and a plain file where no link can be made."""

from __future__ import annotations

import os

import pytest

from tests.verification_world import world
from thinkmesh.coordinator.work.verifier import ContributionArchive, ContributionVerifier
from thinkmesh.protocol.rules.audit import AuditPolicy
from thinkmesh.protocol.rules.encoding import decode_message, encode_message
from thinkmesh.protocol.rules.errors import EncodingError
from thinkmesh.protocol.rules.evidence import read_evidence, rerun_evidence
from thinkmesh.protocol.rules.messages import Contribution

pytestmark = pytest.mark.timeout(120)


def open_verifier(w, tmp_path) -> ContributionVerifier:
    verifier = ContributionVerifier(
        model=w.model, tokenizer=w.tokenizer, policy=AuditPolicy(), coordinator_seed=b"\xc0" * 32,
        evidence_dir=tmp_path / "evidence", archive=ContributionArchive(tmp_path / "contributions"),
    )
    verifier.open_round(w.round.round_id)
    return verifier


def test_an_accepted_contribution_is_archived_as_a_link_to_its_evidence_and_reads_back(tmp_path):
    w = world()
    verifier = open_verifier(w, tmp_path)
    outcome = verifier.verify(w.round, w.honest[0])
    assert outcome.accepted
    archived = verifier.archive.path(w.round.round_id, w.honest[0].node_key)
    assert os.path.samefile(archived, outcome.evidence_path)
    assert verifier.archive.load(w.round.round_id, w.honest[0].node_key) == w.honest[0]
    evidence = read_evidence(outcome.evidence_path)
    assert evidence.contribution == w.honest[0] and rerun_evidence(evidence, w.model, w.tokenizer).agrees


def test_without_a_linkable_evidence_file_the_contribution_is_written_plain(tmp_path):
    w = world()
    archive = ContributionArchive(tmp_path / "contributions")
    path = archive.save(w.honest[1], evidence=tmp_path / "missing.evidence")
    assert decode_message(path.read_bytes(), Contribution) == w.honest[1]
    assert archive.load(w.honest[1].round_id, w.honest[1].node_key) == w.honest[1]
    path.write_bytes(encode_message(w.honest[1])[:-1])
    with pytest.raises(EncodingError):
        archive.load(w.honest[1].round_id, w.honest[1].node_key)


def test_a_round_s_verdict_files_are_fsynced_once_by_sync_round_not_on_the_verification_path(tmp_path, monkeypatch):
    import thinkmesh.protocol.runtime.atomic_files as atomic_files

    synced: list[str] = []
    monkeypatch.setattr(atomic_files, "fsync_file", lambda p: synced.append(os.path.basename(p)))
    monkeypatch.setattr(atomic_files, "fsync_directory", lambda d: synced.append(os.path.basename(d) + "/"))
    w = world()
    verifier = open_verifier(w, tmp_path)
    outcome = verifier.verify(w.round, w.honest[0])
    verifier.admit(outcome)
    assert outcome.accepted and synced == []
    verifier.sync_round(w.round.round_id)
    node = w.honest[0].node_key.hex()
    assert {outcome.evidence_path.name, f"{node}.evidence", f"{node}.contribution"} <= set(synced)
    round_name = outcome.evidence_path.parent.name
    assert {f"{round_name}/", "evidence/", "contributions/"} <= set(synced)
