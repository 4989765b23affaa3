"""Verification by re-scoring: the rules a coordinator applies to one contribution, in order.

The checks run cheapest first and stop at the first that fails; its name is the verdict's reason:

    bad-signature       the contribution is not signed by its node key
    wrong-round         chain, run, round or model hash differ from the announcement
    off-terms           the strategy's temperature, top_p, group size or max_new_tokens is outside
                        the announcement's terms (`protocol/rules/terms.py`)
    unknown-node        the node key is not in the registered set
    samples-root        `samples_root` is not the Merkle root of the samples
    prompt-set          prompt indices are not exactly 0..prompts_per_node-1, group_size each, in order
    sample-shape        an empty completion, one over max_new_tokens, a token outside the vocabulary,
                        or one that does not end as the rollout engine ends one (`sampling.stop_violation`)
    replay              a sample hash or the gradient digest was already accepted (any node, any round)
    reward-mismatch     a reward component differs from `score_completion` on the decoded text
    malformed-gradient  tensor names differ from the model's, or an audited tensor does not decode
    logprob-mismatch    a re-scored token logprob differs by more than the policy's tolerance
    sampling-mismatch   a re-scored token could not have been drawn from its row's public stream
                        under the round's terms (the sampling proof, `protocol/rules/sampling.py`)
    gradient-mismatch   the recomputed gradient's cosine or norm is outside the mode's tolerance

A generation round (`protocol/rules/generation.py`) runs the same checks without a gradient: the payload
must carry no tensors (`malformed-gradient`, check "gradient-not-empty"), there is no gradient audit,
and every sample's logprobs and draws are re-scored (each accepted trace is paid on its own).

The first nine need no model (the reward and stop checks need the tokenizer only to decode ids); the
last four run under the round's model as planned by `thinkmesh.protocol.rules.audit`, the sampling proof
inside the forward that re-scores logprobs. `REASONS` lists the reasons in the order of their
on-chain codes (`protocol.rules.slashing.SlashReason`, append-only), not in the order they are checked. Findings name the
sample (`CONTRIBUTION_LEVEL` for the whole contribution), the check, and the expected and claimed
values; a hash-valued check carries the hash's first 48 bits as an exact float.

Replay bookkeeping is the caller's: pass the hashes of *accepted* contributions as the seen sets
and add `report.sample_hashes` / `report.gradient_digest` only when the report accepts, so a
rejected copy can never block the honest original. Audit rates: see docs/verification.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from thinkmesh.protocol.rules.adapters import trainable_shapes
from thinkmesh.protocol.rules.audit import (
    CONTRIBUTION_LEVEL,
    GRADIENT_NONE,
    AuditPolicy,
    audit_plan,
    audited_parameter_names,
    gradient_findings,
    logprob_findings,
    recompute_gradient,
    rescore_logprobs,
    sampling_findings,
)
from thinkmesh.protocol.rules.errors import ProtocolError, SignatureError
from thinkmesh.protocol.rules.generation import is_generation
from thinkmesh.protocol.rules.gradient_codec import GradientCodecError, decode_gradient
from thinkmesh.protocol.rules.grpo import overlong_penalty
from thinkmesh.protocol.rules.hashing import keccak256
from thinkmesh.protocol.rules.merkle import merkle_root
from thinkmesh.protocol.rules.messages import (
    Contribution,
    Finding,
    GradientPayload,
    RoundAnnouncement,
    sample_hash,
    samples_root,
    unsigned_payload_hash,
    verify_message,
)
from thinkmesh.protocol.rules.rewards import RewardBreakdown, RewardConfig, differing_components, score_completion
from thinkmesh.protocol.rules.sampling import DrawCheck, row_key, stop_rule_for, stop_violation, uniforms_tensor
from thinkmesh.protocol.rules.scoring import completion_text, prompt_token_ids
from thinkmesh.protocol.rules.strategies import validate_strategy
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.rules.tasks import Task, render_prompt, task_for_node
from thinkmesh.protocol.rules.terms import off_terms

GRADIENT_DIGEST_DOMAIN = b"thinkmesh/gradient-digest/v3"
CONTRIBUTION_HASH_DOMAIN = b"thinkmesh/contribution-hash/v2"
REASON_OK = "ok"
REASON_BAD_SIGNATURE = SlashReason.BAD_SIGNATURE.verdict_reason
REASON_WRONG_ROUND = SlashReason.WRONG_ROUND.verdict_reason
REASON_UNKNOWN_NODE = SlashReason.UNKNOWN_NODE.verdict_reason
REASON_SAMPLES_ROOT = SlashReason.SAMPLES_ROOT.verdict_reason
REASON_PROMPT_SET = SlashReason.PROMPT_SET.verdict_reason
REASON_SAMPLE_SHAPE = SlashReason.SAMPLE_SHAPE.verdict_reason
REASON_REPLAY = SlashReason.REPLAY.verdict_reason
REASON_REWARD_MISMATCH = SlashReason.REWARD_MISMATCH.verdict_reason
REASON_MALFORMED_GRADIENT = SlashReason.MALFORMED_GRADIENT.verdict_reason
REASON_LOGPROB_MISMATCH = SlashReason.LOGPROB_MISMATCH.verdict_reason
REASON_GRADIENT_MISMATCH = SlashReason.GRADIENT_MISMATCH.verdict_reason
REASON_OFF_TERMS = SlashReason.OFF_TERMS.verdict_reason
REASON_SAMPLING_MISMATCH = SlashReason.SAMPLING_MISMATCH.verdict_reason
REASONS = tuple(code.verdict_reason for code in SlashReason)  # every failing verdict, in code order
MODEL_FREE_REASONS = (
    REASON_BAD_SIGNATURE, REASON_WRONG_ROUND, REASON_OFF_TERMS, REASON_UNKNOWN_NODE, REASON_SAMPLES_ROOT,
    REASON_PROMPT_SET, REASON_SAMPLE_SHAPE, REASON_REPLAY, REASON_REWARD_MISMATCH,
)
MAX_FINDINGS = 64  # per report: bounds a verdict's evidence whatever a node sends
REWARD_TOLERANCE = 1e-9  # rewards are rule outputs: equal up to float printing, nothing more
# Claimed rewards carry no length shaping: DAPO's overlong penalty is applied once, inside
# `strategy_loss`, from the completion lengths (as node/work/train_step.py scores them).
CLAIMED_REWARD_OVERLONG_BUFFER = 0


@dataclass(frozen=True)
class VerificationContext:
    """What the verifier knows beyond the two messages.

    `registered_nodes` None means "not consulted" (a third-party re-run without the registry).
    `beacon` is the post-deadline randomness of the audit plan (see `thinkmesh.protocol.rules.audit`).
    """

    registered_nodes: frozenset[bytes] | None
    seen_sample_hashes: frozenset[bytes] = frozenset()
    seen_gradient_digests: frozenset[bytes] = frozenset()
    policy: AuditPolicy = AuditPolicy()
    reward_config: RewardConfig = RewardConfig()
    beacon: bytes = b""


@dataclass(frozen=True)
class VerificationReport:
    """One contribution's outcome. `checked_samples` are those whose logprobs were re-scored;
    `gradient_audit` is none/probe/full, or "" when verification stopped before the model."""

    reason: str
    findings: tuple[Finding, ...]
    checked_samples: tuple[int, ...]
    gradient_audit: str
    contribution_hash: bytes
    sample_hashes: tuple[bytes, ...]
    gradient_digest: bytes

    @property
    def accepted(self) -> bool:
        return self.reason == REASON_OK


def gradient_digest(gradient: GradientPayload) -> bytes:
    """sha256 over (GRADIENT_DIGEST_DOMAIN, compression, each tensor's name and bytes, length-prefixed):
    names one exact submitted gradient for the replay set. Fed blob by blob, so the megabytes are
    read once and never re-encoded; never put on chain, so it need not be keccak256 (sha256 is ~6x
    faster here)."""
    digest = hashlib.sha256(GRADIENT_DIGEST_DOMAIN)
    digest.update(_length_prefixed(gradient.compression.encode()))
    for blob in gradient.tensors:
        digest.update(_length_prefixed(blob.name.encode()))
        digest.update(len(blob.data).to_bytes(8, "big"))
        digest.update(blob.data)
    return digest.digest()


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def contribution_hash_from(payload_sha256: bytes, signature: bytes) -> bytes:
    """sha256(CONTRIBUTION_HASH_DOMAIN, sha256 of the signed payload, signature): see `contribution_hash`."""
    return hashlib.sha256(CONTRIBUTION_HASH_DOMAIN + payload_sha256 + signature).digest()


def contribution_hash(contribution: Contribution, encoded: bytes | None = None) -> bytes:
    """Names one exact contribution in its verdict and keys its audit plan: the unsigned encoding
    and the signature fix the canonical bytes, and the unsigned encoding enters as the sha256 its
    signature already covers (`unsigned_payload_hash`), so one pass over the megabytes serves the
    signature check and this hash alike. Off chain, so sha256 rather than keccak256. `encoded`:
    `encode_message(contribution)` when the caller already holds it."""
    return contribution_hash_from(unsigned_payload_hash(contribution, encoded), contribution.signature)


@dataclass(frozen=True)
class ContributionDigests:
    """The hashes a verification needs, computed once (each is a pass over megabytes but the
    contribution hash, which is derived from `payload_hash`, the signed payload's sha256)."""

    contribution_hash: bytes
    sample_hashes: tuple[bytes, ...]
    gradient_digest: bytes
    payload_hash: bytes | None = None


def contribution_digests(
    contribution: Contribution, encoded: bytes | None = None, payload_sha256: bytes | None = None,
) -> ContributionDigests:
    """`encoded`, `payload_sha256`: `encode_message(contribution)` and `unsigned_payload_hash` of
    it, when the caller holds them already."""
    payload = unsigned_payload_hash(contribution, encoded) if payload_sha256 is None else payload_sha256
    return ContributionDigests(
        contribution_hash=contribution_hash_from(payload, contribution.signature),
        sample_hashes=tuple(sample_hash(s) for s in contribution.samples),
        gradient_digest=gradient_digest(contribution.gradient),
        payload_hash=payload,
    )


def hash48(value: bytes) -> float:
    """The first 48 bits of a hash as a float (exact: float64 holds 53-bit integers)."""
    return float(int.from_bytes(value[:6], "big"))


def node_tasks(announcement: RoundAnnouncement, node_key: bytes) -> tuple[Task, ...]:
    """The node's prompts for the round, regenerated from the seed: it cannot choose them."""
    return tuple(
        task_for_node(announcement.task, announcement.seed, node_key, i) for i in range(announcement.prompts_per_node)
    )


def prompt_ids_for(announcement: RoundAnnouncement, node_key: bytes, tokenizer) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple(prompt_token_ids(tokenizer, render_prompt(task, announcement.prompt_template)))
        for task in node_tasks(announcement, node_key)
    )


# --- the model-free checks, each returning its findings (empty: passed) ---------------------------


def _contribution_finding(check: str, expected: float, claimed: float) -> tuple[Finding, ...]:
    return (Finding(CONTRIBUTION_LEVEL, check, float(expected), float(claimed)),)


def check_signature(
    contribution: Contribution, encoded: bytes | None = None, payload_sha256: bytes | None = None,
) -> tuple[Finding, ...]:
    """`encoded`, `payload_sha256`: what the caller holds already (see `verify_message`)."""
    try:
        verify_message(contribution, contribution.node_key, encoded, payload_sha256)
    except SignatureError:
        return _contribution_finding("signature", 1.0, 0.0)
    return ()


def check_round_binding(announcement: RoundAnnouncement, contribution: Contribution) -> tuple[Finding, ...]:
    findings = []
    if contribution.chain_id != announcement.chain_id:
        findings += _contribution_finding("chain-id", announcement.chain_id, contribution.chain_id)
    if contribution.run_id != announcement.run_id:
        findings += _contribution_finding(
            "run-id-hash48", hash48(keccak256(announcement.run_id.encode())), hash48(keccak256(contribution.run_id.encode()))
        )
    if contribution.round_id != announcement.round_id:
        findings += _contribution_finding("round-id", announcement.round_id, contribution.round_id)
    if contribution.model_hash != announcement.model_hash:
        findings += _contribution_finding("model-hash48", hash48(announcement.model_hash), hash48(contribution.model_hash))
    return tuple(findings)


def check_terms(announcement: RoundAnnouncement, contribution: Contribution) -> tuple[Finding, ...]:
    """One finding per sampling value outside the announcement's allowed set ("terms:<field>",
    expected the set's first value, claimed the declared one)."""
    return tuple(
        Finding(CONTRIBUTION_LEVEL, f"terms:{field}", allowed, declared)
        for field, allowed, declared in off_terms(contribution.strategy, announcement.terms)
    )


def check_registered(contribution: Contribution, registered_nodes: frozenset[bytes] | None) -> tuple[Finding, ...]:
    if registered_nodes is None or contribution.node_key in registered_nodes:
        return ()
    return _contribution_finding("node-registered", 1.0, 0.0)


def check_samples_root(contribution: Contribution, digests: ContributionDigests | None = None) -> tuple[Finding, ...]:
    actual = samples_root(contribution.samples) if digests is None else merkle_root(list(digests.sample_hashes))
    if actual == contribution.samples_root:
        return ()
    return _contribution_finding("samples-root48", hash48(actual), hash48(contribution.samples_root))


def check_prompt_set(announcement: RoundAnnouncement, contribution: Contribution) -> tuple[Finding, ...]:
    """Exactly prompts 0..P-1, each group_size times, groups contiguous: no cherry-picking."""
    group = contribution.strategy.group_size
    expected = [i for i in range(announcement.prompts_per_node) for _ in range(group)]
    claimed = [s.prompt_index for s in contribution.samples]
    if len(claimed) != len(expected):
        return _contribution_finding("sample-count", len(expected), len(claimed))
    return tuple(
        Finding(position, "prompt-index", float(e), float(c))
        for position, (e, c) in enumerate(zip(expected, claimed))
        if e != c
    )


def check_sample_shape(contribution: Contribution, vocab_size: int | None, tokenizer=None) -> tuple[Finding, ...]:
    """Non-empty completions within max_new_tokens; token ids below `vocab_size` when given; with
    a tokenizer, each completion ends as the rollout engine ends one (`sampling.stop_violation`:
    "stop-inside", expected the stop's position, claimed the last; "cut-short", expected
    max_new_tokens, claimed the length)."""
    limit = contribution.strategy.max_new_tokens
    rule = stop_rule_for(tokenizer) if tokenizer is not None else None
    findings = []
    for index, sample in enumerate(contribution.samples):
        length = len(sample.completion_ids)
        if length == 0:
            findings.append(Finding(index, "completion-length", 1.0, 0.0))
        elif length > limit:
            findings.append(Finding(index, "completion-length", float(limit), float(length)))
        elif vocab_size is not None and max(sample.completion_ids) >= vocab_size:
            findings.append(Finding(index, "token-id", float(vocab_size - 1), float(max(sample.completion_ids))))
        elif rule is not None and (violation := stop_violation(sample.completion_ids, rule, limit, tokenizer)):
            if violation == "cut-short":
                findings.append(Finding(index, "cut-short", float(limit), float(length)))
            else:
                findings.append(Finding(index, "stop-inside", float(violation.split(":")[1]), float(length - 1)))
    return tuple(findings)


REPLAY_SAMPLE_FRACTION = 0.5  # more than this share of seen samples makes a contribution a replay


def carries_signal(contribution: Contribution) -> bool:
    """False when no group gives any sample a non-zero advantage, so the policy-gradient term is
    exactly zero and every honest node sends the same (zero) gradient: its digest repeating, at
    another node or in another round, is not a replay.

    Mirrors `strategy_loss`: a group counts when its claimed rewards differ, or, with DAPO's
    overlong buffer, when its lengths fall under different overlong penalties; dynamic sampling
    drops a group whose rewards are all equal whatever its lengths. Lengths alone are no signal
    for any other strategy. (Claimed rewards are recomputed by the reward check.)
    """
    strategy = contribution.strategy
    group = strategy.group_size
    samples = contribution.samples
    for start in range(0, len(samples), group):
        members = samples[start:start + group]
        if len({s.rewards for s in members}) > 1:
            return True
        if strategy.dynamic_sampling:
            continue
        lengths = torch.tensor([len(s.completion_ids) for s in members])
        if len(set(overlong_penalty(lengths, strategy).tolist())) > 1:
            return True
    return False


def check_replay(
    contribution: Contribution, seen_sample_hashes: frozenset[bytes], seen_gradient_digests: frozenset[bytes],
    digests: ContributionDigests | None = None,
) -> tuple[Finding, ...]:
    """A replay resends a gradient already accepted, or most of a set of samples already accepted.

    Single seen samples are not evidence: on a small task set an honest, nearly deterministic
    model answers a recurring question with bit-identical tokens and logprobs, in another round
    or at another node. Copies made by a cheater are wholesale, and any copied sample that
    escapes this rule still has to pass the prompt, reward and logprob checks for its new sender.
    """
    digests = digests or contribution_digests(contribution)
    findings = [
        Finding(index, "sample-seen", 0.0, 1.0)
        for index, hashed in enumerate(digests.sample_hashes)
        if hashed in seen_sample_hashes
    ]
    if len(findings) <= REPLAY_SAMPLE_FRACTION * len(digests.sample_hashes):
        findings = []
    # An empty gradient (a generation round's) is every node's: its digest repeating is no replay.
    if digests.gradient_digest in seen_gradient_digests and contribution.gradient.tensors and carries_signal(contribution):
        findings += _contribution_finding("gradient-seen", 0.0, 1.0)
    return tuple(findings)


def recompute_rewards(
    announcement: RoundAnnouncement, contribution: Contribution, texts: Sequence[str], config: RewardConfig,
    indices: Sequence[int] | None = None,
) -> dict[int, RewardBreakdown]:
    """`score_completion` of each sample's decoded text against its regenerated task."""
    strategy = validate_strategy(contribution.strategy)
    tasks = node_tasks(announcement, contribution.node_key)
    chosen = range(len(contribution.samples)) if indices is None else indices
    result = {}
    for index, text in zip(chosen, texts):
        sample = contribution.samples[index]
        result[index] = score_completion(
            tasks[sample.prompt_index], text, len(sample.completion_ids), strategy.max_new_tokens,
            CLAIMED_REWARD_OVERLONG_BUFFER, config,
        )
    return result


def reward_findings(contribution: Contribution, recomputed: dict[int, RewardBreakdown]) -> tuple[Finding, ...]:
    """One finding per differing component, e.g. check "reward:accuracy", expected 0, claimed 1."""
    findings = []
    for index in sorted(recomputed):
        claimed = contribution.samples[index].rewards
        for component in differing_components(claimed, recomputed[index], REWARD_TOLERANCE):
            findings.append(Finding(
                index, f"reward:{component}", getattr(recomputed[index], component), getattr(claimed, component)
            ))
    return tuple(findings)


# --- the whole pipeline --------------------------------------------------------------------------


def _report(reason: str, findings, digests: ContributionDigests, checked=(), audit: str = "") -> VerificationReport:
    return VerificationReport(
        reason=reason, findings=tuple(findings)[:MAX_FINDINGS], checked_samples=tuple(checked), gradient_audit=audit,
        contribution_hash=digests.contribution_hash, sample_hashes=digests.sample_hashes,
        gradient_digest=digests.gradient_digest,
    )


def model_free_checks(
    announcement: RoundAnnouncement, contribution: Contribution, context: VerificationContext,
    vocab_size: int | None = None, digests: ContributionDigests | None = None, encoded: bytes | None = None,
    tokenizer=None,
) -> list[tuple[str, Callable[[], tuple[Finding, ...]]]]:
    """The checks before rewards, in order, as (reason, thunk) pairs. `tokenizer`: needed for the
    stop check's multi-token stop strings (None skips the stop check)."""
    return [
        (REASON_BAD_SIGNATURE, lambda: check_signature(contribution, encoded, digests.payload_hash if digests else None)),
        (REASON_WRONG_ROUND, lambda: check_round_binding(announcement, contribution)),
        (REASON_OFF_TERMS, lambda: check_terms(announcement, contribution)),
        (REASON_UNKNOWN_NODE, lambda: check_registered(contribution, context.registered_nodes)),
        (REASON_SAMPLES_ROOT, lambda: check_samples_root(contribution, digests)),
        (REASON_PROMPT_SET, lambda: check_prompt_set(announcement, contribution)),
        (REASON_SAMPLE_SHAPE, lambda: check_sample_shape(contribution, vocab_size, tokenizer)),
        (REASON_REPLAY, lambda: check_replay(
            contribution, context.seen_sample_hashes, context.seen_gradient_digests, digests)),
    ]


def first_failure(checks) -> tuple[str, tuple[Finding, ...]] | None:
    for reason, run in checks:
        findings = run()
        if findings:
            return reason, findings
    return None


def verify_contribution(
    announcement: RoundAnnouncement, contribution: Contribution, model, tokenizer, context: VerificationContext,
    reference_model=None, digests: ContributionDigests | None = None, encoded: bytes | None = None,
) -> VerificationReport:
    """Every check of the module docstring, in order; the report of the first that fails, or ok.

    `model` must be the round's model (hash `announcement.model_hash`, float32, eval mode); the
    caller vouches for that (the coordinator announced it; `rerun_evidence` checks it). The
    announcement's own signature is the caller's to check. `reference_model` (the KL reference)
    is needed only to audit the gradient of a strategy with beta > 0. Deterministic for fixed
    inputs on a fixed device; the model is not modified. `digests`: `contribution_digests` of this
    contribution, and `encoded`: `encode_message(contribution)`, when the caller has them already.
    """
    vocab_size = int(model.get_input_embeddings().num_embeddings)
    digests = digests or contribution_digests(contribution, encoded)
    failed = first_failure(model_free_checks(announcement, contribution, context, vocab_size, digests, encoded, tokenizer))
    if failed:
        return _report(*failed, digests)
    texts = [completion_text(tokenizer, s.completion_ids) for s in contribution.samples]
    recomputed = recompute_rewards(announcement, contribution, texts, context.reward_config)
    findings = reward_findings(contribution, recomputed)
    if findings:
        return _report(REASON_REWARD_MISMATCH, findings, digests)
    if is_generation(announcement):
        return _generation_audit(announcement, contribution, digests, model, tokenizer, context)
    return _model_audit(announcement, contribution, digests, model, tokenizer, context, recomputed, reference_model)


def decode_audited_gradient(gradient: GradientPayload, shapes: dict[str, tuple[int, ...]], names) -> dict[str, Tensor]:
    """The submitted tensors named in `names`, decoded and checked against the model's shapes.

    Only the audited tensors are materialised; the payload's full name set must still be the
    model's (intake has already decoded all of it for aggregation).
    """
    if [blob.name for blob in gradient.tensors] != sorted(shapes):
        raise GradientCodecError("gradient tensor names differ from the model's parameters")
    wanted = set(names)
    subset = GradientPayload(gradient.compression, tuple(b for b in gradient.tensors if b.name in wanted))
    return decode_gradient(subset, {name: shapes[name] for name in sorted(wanted)})


def _model_audit(announcement, contribution, digests, model, tokenizer, context, rewards, reference_model):
    policy, samples = context.policy, contribution.samples
    strategy = validate_strategy(contribution.strategy)
    plan = audit_plan(announcement.seed, digests.contribution_hash, context.beacon, len(samples), policy)
    shapes = trainable_shapes(model)  # an adapter round's gradient is the adapter's
    names = (audited_parameter_names(model, plan.gradient, policy, plan.probe_key)
             if plan.gradient != GRADIENT_NONE else ())
    try:
        claimed = decode_audited_gradient(contribution.gradient, shapes, names)
    except ProtocolError:
        return _report(REASON_MALFORMED_GRADIENT, _contribution_finding("gradient-decode", 1.0, 0.0), digests)
    prompts = prompt_ids_for(announcement, contribution.node_key, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    draw = draw_check(announcement, contribution, plan.rescored)
    if plan.gradient == GRADIENT_NONE:
        rescored = rescore_logprobs(model, prompts, samples, plan.rescored, strategy.temperature, pad, draw)
    else:
        ordered = [rewards[i] for i in range(len(samples))]
        rescored = recompute_gradient(
            model, prompts, samples, ordered, strategy, names, pad, context.reward_config, reference_model, draw
        )
    findings = logprob_findings(samples, rescored.logprobs, policy.logprob_tolerance)
    if findings:
        return _report(REASON_LOGPROB_MISMATCH, findings, digests, plan.rescored, plan.gradient)
    findings = sampling_findings(rescored.draw_gaps, policy.sampling_tolerance)
    if findings:
        return _report(REASON_SAMPLING_MISMATCH, findings, digests, plan.rescored, plan.gradient)
    if rescored.gradients is not None:
        findings = gradient_findings(claimed, rescored.gradients, contribution.gradient.compression, policy)
        if findings:
            return _report(REASON_GRADIENT_MISMATCH, findings, digests, plan.rescored, plan.gradient)
    return _report(REASON_OK, (), digests, plan.rescored, plan.gradient)


def _generation_audit(announcement, contribution, digests, model, tokenizer, context):
    """A generation round's model checks: the gradient must be empty; every sample's logprobs are
    re-scored and its draws replayed (one no-grad prefill); no gradient audit."""
    if contribution.gradient.tensors:
        return _report(REASON_MALFORMED_GRADIENT,
                       _contribution_finding("gradient-not-empty", 0.0, len(contribution.gradient.tensors)), digests)
    policy, samples = context.policy, contribution.samples
    strategy = validate_strategy(contribution.strategy)
    every = tuple(range(len(samples)))
    prompts = prompt_ids_for(announcement, contribution.node_key, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rescored = rescore_logprobs(model, prompts, samples, every, strategy.temperature, pad,
                                draw_check(announcement, contribution, every))
    findings = logprob_findings(samples, rescored.logprobs, policy.logprob_tolerance)
    if findings:
        return _report(REASON_LOGPROB_MISMATCH, findings, digests, every, GRADIENT_NONE)
    findings = sampling_findings(rescored.draw_gaps, policy.sampling_tolerance)
    if findings:
        return _report(REASON_SAMPLING_MISMATCH, findings, digests, every, GRADIENT_NONE)
    return _report(REASON_OK, (), digests, every, GRADIENT_NONE)


def draw_check(announcement: RoundAnnouncement, contribution: Contribution, indices: Sequence[int]) -> DrawCheck:
    """The public uniforms of the samples at `indices` (their rows: position within the group),
    under the contribution's declared (and term-checked) temperature and top_p."""
    strategy, samples = contribution.strategy, contribution.samples
    keys = [row_key(announcement.seed, contribution.node_key, samples[i].prompt_index, i % strategy.group_size)
            for i in indices]
    steps = max(len(samples[i].completion_ids) for i in indices)
    return DrawCheck(strategy.temperature, strategy.top_p, uniforms_tensor(keys, steps))


def with_seen(context: VerificationContext, report: VerificationReport) -> VerificationContext:
    """The context after accepting `report`: its samples and gradient join the seen sets."""
    if not report.accepted:
        return context
    return replace(
        context,
        seen_sample_hashes=context.seen_sample_hashes | frozenset(report.sample_hashes),
        seen_gradient_digests=context.seen_gradient_digests | frozenset({report.gradient_digest}),
    )
