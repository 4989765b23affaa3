"""Evidence files: everything needed to re-run one verdict, and the re-run itself.

An evidence file is the canonical msgpack encoding of one `Evidence` message, so
`evidence_hash(e) == keccak256(file bytes)`: the hash the coordinator puts on chain can be
checked against the file with any keccak tool.

What it holds and why:
- the signed announcement (round seed, model hash, task spec, template, coordinator key);
- the whole signed contribution, as its canonical bytes (`contribution_bytes`): the node signed
  the sha256 of its full encoding, so nothing less proves the node sent these samples (a
  header-only signature would let evidence shrink to the cited samples; that is a wire change,
  see docs/verification.md). Carried as bytes, not as a nested record, because those bytes are
  what the signature covers, and because the coordinator holds them already: writing the file
  packs them as one blob instead of walking megabytes of samples and tensors again (version 2;
  version 1 nested the record). They must decode strictly as a `Contribution` (`read_evidence`
  checks; `Evidence.contribution` decodes them);
- the cited samples, each with its Merkle proof against `samples_root` and its decoded text (what
  the reward rules read), the findings, the audit policy, beacon and reward config in force;
- for a replay verdict, the earlier accepted contribution(s) holding the same samples or gradient.

`rerun_evidence` re-runs the verification under the recorded parameters and compares. The checks
up to reward-mismatch need nothing but `protocol/` (the reward re-run trusts the cited decoded
text unless a tokenizer is given, since the model hash does not commit to the tokenizer);
logprob, gradient and accepted verdicts need the round's model, whose hash is checked first. In an
adapter round the announcement names the version twice over: `adapter.base_hash` (the frozen
base) and `model_hash` (the adapter's tensors under an architecture that commits to that base), so
the round's model is the base with that adapter attached (`verify-evidence --model BASE --adapter`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.protocol.rules.audit import AuditPolicy
from thinkmesh.protocol.rules.encoding import Hash32, Message, decode_message, encode_message
from thinkmesh.protocol.rules.errors import EncodingError, ProtocolError, SignatureError
from thinkmesh.protocol.rules.hashing import keccak256
from thinkmesh.protocol.rules.merkle import MerkleTree, verify_proof
from thinkmesh.protocol.rules.messages import (
    Contribution,
    Finding,
    MiB,
    RoundAnnouncement,
    Sample,
    sample_hash,
    verify_message,
)
from thinkmesh.protocol.rules.rewards import RewardConfig
from thinkmesh.protocol.rules.scoring import completion_text
from thinkmesh.protocol.rules.verification import (
    MAX_FINDINGS,
    MODEL_FREE_REASONS,
    REASON_OK,
    REASON_REWARD_MISMATCH,
    REASON_UNKNOWN_NODE,
    VerificationContext,
    VerificationReport,
    first_failure,
    gradient_digest,
    model_free_checks,
    recompute_rewards,
    reward_findings,
    verify_contribution,
)

AGREE, DISAGREE = "agree", "disagree"


class EvidenceError(ProtocolError):
    """An evidence file that cannot be read, or a re-run that cannot start (e.g. a wrong model)."""


@dataclass(frozen=True)
class CitedSample:
    """One sample a verdict rests on, provable against the contribution's `samples_root`."""

    index: int
    sample: Sample
    proof: tuple[Hash32, ...]
    completion_text: str


@dataclass(frozen=True)
class Evidence(Message):
    TYPE = "verification-evidence"
    VERSION = 2
    MAX_BYTES = 640 * MiB  # a contribution (256 MiB max) plus up to one prior, and change

    announcement: RoundAnnouncement
    contribution_bytes: bytes  # `encode_message` of the contribution: exactly the bytes it was signed as
    reason: str
    findings: tuple[Finding, ...]
    checked_samples: tuple[int, ...]
    gradient_audit: str
    cited: tuple[CitedSample, ...]
    prior: tuple[Contribution, ...]
    policy: AuditPolicy
    reward_config: RewardConfig
    beacon: bytes

    @functools.cached_property
    def contribution(self) -> Contribution:
        """The contribution, strictly decoded (EncodingError if the bytes are not one)."""
        return decode_message(self.contribution_bytes, Contribution)


@dataclass(frozen=True)
class RerunOutcome:
    """`agrees` iff the re-run reaches the recorded reason with the recorded findings;
    `notes` say why not (or what was taken on trust)."""

    agrees: bool
    rerun_reason: str | None
    notes: tuple[str, ...]

    @property
    def word(self) -> str:
        return AGREE if self.agrees else DISAGREE


def build_evidence(
    announcement: RoundAnnouncement, contribution: Contribution, report: VerificationReport,
    context: VerificationContext, tokenizer=None, prior: Iterable[Contribution] = (), encoded: bytes | None = None,
) -> Evidence:
    """The evidence of `report`. Cites every sample a finding names; `tokenizer` decodes their
    text (needed when any is cited). `prior`: for a replay verdict, the accepted contributions
    that already held the replayed samples or gradient. `encoded`: `encode_message(contribution)`
    when the caller holds it (the coordinator does)."""
    indices = sorted({f.sample_index for f in report.findings if 0 <= f.sample_index < len(contribution.samples)})
    if indices and tokenizer is None:
        raise EvidenceError("build_evidence: cited samples need the tokenizer to record their decoded text")
    tree = MerkleTree.from_items([sample_hash(s) for s in contribution.samples]) if indices else None
    cited = tuple(
        CitedSample(i, contribution.samples[i], tuple(tree.proof(i)), completion_text(tokenizer, contribution.samples[i].completion_ids))
        for i in indices
    )
    if encoded is None:
        encoded = encode_message(contribution)
    elif not encoded.endswith(contribution.signature):
        raise EvidenceError("build_evidence: `encoded` does not end with this contribution's signature, "
                            "so it cannot be its canonical encoding")
    return Evidence(
        announcement=announcement, contribution_bytes=encoded, reason=report.reason, findings=report.findings,
        checked_samples=report.checked_samples, gradient_audit=report.gradient_audit, cited=cited,
        prior=tuple(prior), policy=context.policy, reward_config=context.reward_config, beacon=context.beacon,
    )


def evidence_bytes(evidence: Evidence) -> bytes:
    """The canonical bytes: what an evidence file holds (its writer is the caller's, e.g. the
    coordinator's through `protocol/runtime/atomic_files.py`), and what `evidence_hash` hashes."""
    return encode_message(evidence)


def evidence_parts(evidence: Evidence) -> tuple[bytes, bytes, bytes]:
    """(head, contribution bytes, tail): `evidence_bytes` in three pieces, the megabytes untouched,
    so a writer can put them on disk (and a hash can take them) without first copying them into
    one new buffer. The head and tail come from encoding the evidence with a random 32-byte stand-in
    for the contribution, which is then swapped for the real bytes' msgpack bin header: a stand-in
    nobody can predict cannot be planted anywhere else in the encoding (a prior's bytes included)."""
    marker = os.urandom(32)
    small = encode_message(dataclasses.replace(evidence, contribution_bytes=marker))
    at = small.find(b"\xc4\x20" + marker)
    if at < 0 or small.count(marker) != 1:
        raise EncodingError("evidence parts: the contribution's stand-in is not where it was put")
    blob = evidence.contribution_bytes
    size = len(blob)
    header = (b"\xc4" + size.to_bytes(1, "big") if size < 1 << 8 else b"\xc5" + size.to_bytes(2, "big")
              if size < 1 << 16 else b"\xc6" + size.to_bytes(4, "big"))
    head, tail = small[:at] + header, small[at + 2 + len(marker):]
    if len(head) + size + len(tail) > Evidence.MAX_BYTES:
        raise EncodingError(f"Evidence is {len(head) + size + len(tail)} bytes, over its limit of {Evidence.MAX_BYTES}")
    return head, blob, tail


def evidence_hash(evidence: Evidence) -> bytes:
    """keccak256 of the canonical bytes: the value recorded on chain with the verdict."""
    return keccak256(encode_message(evidence))


def read_evidence(path: str | Path) -> Evidence:
    """The evidence in `path`, its contribution decoded (EncodingError or EvidenceError say what is wrong)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EvidenceError(f"evidence file {path}: expected a readable file, got {exc.strerror}") from exc
    evidence = decode_message(data, Evidence)
    try:
        evidence.contribution  # noqa: B018 - decoded and cached now, so a bad one fails here
    except EncodingError as exc:
        raise EvidenceError(f"evidence file {path}: its contribution bytes are not a contribution ({exc})") from exc
    return evidence


# --- the re-run ------------------------------------------------------------------------------------


def _finding_key(finding: Finding) -> tuple[int, str]:
    """What must match exactly: the sample and the check (a logprob's worst-token position may
    legitimately differ across hardware, so only "logprob" is kept of it)."""
    check = "logprob" if finding.check.startswith("logprob:") else finding.check
    return finding.sample_index, check


def _findings_agree(recorded: tuple[Finding, ...], rerun: tuple[Finding, ...], tolerance: float) -> list[str]:
    """The same (sample, check) findings, with values within `tolerance` (relative above 1)."""
    if sorted(map(_finding_key, recorded)) != sorted(map(_finding_key, rerun)):
        return [f"recorded findings {sorted(map(_finding_key, recorded))[:8]}, the re-run finds "
                f"{sorted(map(_finding_key, rerun))[:8]}"]
    notes = []
    for finding, other in zip(sorted(recorded, key=_finding_key), sorted(rerun, key=_finding_key)):
        for field in ("expected", "claimed"):
            a, b = getattr(finding, field), getattr(other, field)
            if not abs(a - b) <= tolerance * max(1.0, abs(a), abs(b)):
                notes.append(f"sample {finding.sample_index} {finding.check}: {field} recorded {a!r}, re-run gives {b!r}")
    return notes


def _check_citations(evidence: Evidence, tokenizer) -> list[str]:
    notes, samples = [], evidence.contribution.samples
    for cited in evidence.cited:
        if not 0 <= cited.index < len(samples) or samples[cited.index] != cited.sample:
            notes.append(f"cited sample {cited.index} is not the contribution's sample {cited.index}")
        elif not verify_proof(evidence.contribution.samples_root, sample_hash(cited.sample), cited.proof):
            notes.append(f"cited sample {cited.index}: Merkle proof does not reach samples_root")
        elif tokenizer is not None and completion_text(tokenizer, cited.sample.completion_ids) != cited.completion_text:
            notes.append(f"cited sample {cited.index}: recorded text differs from the tokenizer's decoding")
    return notes


def _context(evidence: Evidence, registered_nodes) -> tuple[VerificationContext, list[str]]:
    notes, hashes, digests = [], set(), set()
    for prior in evidence.prior:
        try:
            verify_message(prior, prior.node_key)
        except SignatureError:
            notes.append(f"prior contribution of round {prior.round_id} is not signed by its node")
            continue
        if prior.round_id > evidence.contribution.round_id:
            notes.append(f"prior contribution is from a later round ({prior.round_id})")
            continue
        hashes.update(sample_hash(s) for s in prior.samples)
        digests.add(gradient_digest(prior.gradient))
    context = VerificationContext(
        registered_nodes=registered_nodes, seen_sample_hashes=frozenset(hashes), seen_gradient_digests=frozenset(digests),
        policy=evidence.policy, reward_config=evidence.reward_config, beacon=evidence.beacon,
    )
    return context, notes


def _model_hash(model, announcement: RoundAnnouncement) -> bytes:
    """The version hash the announcement's `model_hash` names: all weights under the config in a
    full-model round; the adapter's tensors under `adapter_architecture` (which commits to the
    base hash and LoRA shape) in an adapter round."""
    from thinkmesh.protocol.rules.adapters import adapter_architecture, trainable_parameters
    from thinkmesh.protocol.rules.model_manifest import model_hash, parameters_hash

    if announcement.adapter is not None:
        return parameters_hash(trainable_parameters(model), adapter_architecture(announcement.adapter))
    return model_hash(model)


def rerun_evidence(
    evidence: Evidence, model=None, tokenizer=None, registered_nodes: frozenset[bytes] | None = None,
    coordinator_key: bytes | None = None,
) -> RerunOutcome:
    """Re-runs the verdict in `evidence` (see the module docstring); never raises on bad evidence."""
    def outcome(agrees: bool, reason: str | None, notes) -> RerunOutcome:
        return RerunOutcome(agrees, reason, tuple(notes))

    a = evidence.announcement
    try:
        evidence.contribution  # noqa: B018 - decoded once, cached
    except EncodingError as exc:
        return outcome(False, None, [f"the evidence's contribution bytes do not decode: {exc}"])
    try:
        verify_message(a, a.coordinator_key)
    except SignatureError:
        return outcome(False, None, ["the announcement is not signed by its coordinator key"])
    if coordinator_key is not None and a.coordinator_key != coordinator_key:
        return outcome(False, None, [f"announced by 0x{a.coordinator_key.hex()}, expected 0x{coordinator_key.hex()}"])
    if model is not None:
        if tokenizer is None:
            raise EvidenceError("rerun_evidence: a model needs its tokenizer")
        actual = _model_hash(model, a)
        if actual != a.model_hash:
            return outcome(False, None, [f"the model hashes to 0x{actual.hex()}, the round's is 0x{a.model_hash.hex()}"])
    notes = _check_citations(evidence, tokenizer)
    if notes:
        return outcome(False, None, notes)
    if evidence.reason == REASON_UNKNOWN_NODE and registered_nodes is None:
        return outcome(False, None, ["an unknown-node verdict needs the node registry to re-run"])
    context, notes = _context(evidence, registered_nodes)
    if notes:
        return outcome(False, None, notes)
    tolerance = max(evidence.policy.logprob_tolerance, 1e-9)
    if evidence.reason in MODEL_FREE_REASONS:
        vocab = int(model.get_input_embeddings().num_embeddings) if model is not None else None
        failed = first_failure(model_free_checks(a, evidence.contribution, context, vocab, encoded=evidence.contribution_bytes,
                                                 tokenizer=tokenizer))
        if failed is None and evidence.reason == REASON_REWARD_MISMATCH:
            failed = _rerun_rewards(evidence, context, tokenizer)
        reason, findings = (failed[0], failed[1][:MAX_FINDINGS]) if failed else (REASON_OK, ())
    elif model is None:
        return outcome(False, None, [f"a {evidence.reason} verdict needs the round's model (--model DIR)"])
    else:
        report = verify_contribution(a, evidence.contribution, model, tokenizer, context, encoded=evidence.contribution_bytes)
        reason, findings = report.reason, report.findings
        if evidence.reason == REASON_OK and report.gradient_audit != evidence.gradient_audit:
            return outcome(False, reason, [f"audit plan: recorded {evidence.gradient_audit}, re-run {report.gradient_audit}"])
    if reason != evidence.reason:
        return outcome(False, reason, [f"recorded reason {evidence.reason}, the re-run finds {reason}"])
    notes = _findings_agree(evidence.findings, findings, tolerance)
    if notes:
        return outcome(False, reason, notes)
    trusted = ["decoded text taken from the evidence (no tokenizer given)"] if tokenizer is None and evidence.cited else []
    return outcome(True, reason, trusted)


def _rerun_rewards(evidence: Evidence, context: VerificationContext, tokenizer):
    contribution = evidence.contribution
    if tokenizer is not None:
        texts = [completion_text(tokenizer, s.completion_ids) for s in contribution.samples]
        recomputed = recompute_rewards(evidence.announcement, contribution, texts, context.reward_config)
    else:
        indices = [c.index for c in evidence.cited]
        texts = [c.completion_text for c in evidence.cited]
        recomputed = recompute_rewards(evidence.announcement, contribution, texts, context.reward_config, indices)
    findings = reward_findings(contribution, recomputed)[:MAX_FINDINGS]
    return (REASON_REWARD_MISMATCH, findings) if findings else None
