"""Contribution intake: each refusal carries its named reason and leaves the round unchanged; the
refusal log and the byte bound stay bounded whatever peers send."""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import pytest
import torch

from thinkmesh.coordinator.work.intake import (
    DETAIL_CHARS,
    KEPT_PER_REASON,
    KEPT_REFUSALS,
    ContributionIntake,
    Refusal,
    RefusalLog,
    clip_text,
)
from thinkmesh.coordinator.work.intake_bounds import (
    ENVELOPE_BYTES,
    contribution_byte_bound,
    gradient_byte_bound,
    round_terms,
    samples_byte_bound,
)
from thinkmesh.protocol.rules.gradient_codec import encode_gradient
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import (
    Contribution,
    RoundAnnouncement,
    Sample,
    encode_message,
    samples_root,
    sign_message,
    unsigned_payload_hash,
)
from thinkmesh.protocol.rules.rewards import RewardBreakdown
from thinkmesh.protocol.rules.strategies import MAX_GROUP_SIZE, MAX_NEW_TOKENS_LIMIT, strategy_from_name
from thinkmesh.protocol.rules.tasks import TaskSpec
from thinkmesh.protocol.p2p.transport import RefusalReason, UploadHeader

CHAIN, RUN = 31337, "intake-test"
SHAPES = {"a.weight": (4, 3), "b.bias": (3,)}
COORDINATOR, NODE, OTHER = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()


def announcement(round_id=2, deadline_ms=None) -> RoundAnnouncement:
    return sign_message(RoundAnnouncement(
        chain_id=CHAIN, run_id=RUN, round_id=round_id, model_version=1, model_hash=b"\x07" * 32,
        task=TaskSpec("arithmetic", 1), prompts_per_node=1, seed=b"\x01" * 32,
        deadline_ms=deadline_ms or int(time.time() * 1000) + 60_000, coordinator_key=COORDINATOR.public_key,
    ), COORDINATOR)


def contribution(identity=NODE, round_id=2, model_hash=b"\x07" * 32, **changes) -> Contribution:
    samples = (Sample(0, (5, 6), (-0.5, -0.25), RewardBreakdown(1.0, 1.0, 1.0, 0.0)),
               Sample(0, (7,), (-0.1,), RewardBreakdown(0.0, 1.0, 1.0, 0.0)))
    grads = {name: torch.ones(shape) for name, shape in SHAPES.items()}
    unsigned = Contribution(
        chain_id=CHAIN, run_id=RUN, round_id=round_id, node_key=identity.public_key, model_hash=model_hash,
        strategy=strategy_from_name("grpo"), samples=samples, samples_root=samples_root(samples),
        gradient=encode_gradient(grads, "none"),
    )
    return sign_message(dataclasses.replace(unsigned, **changes), identity)


def header_for(body: bytes, identity=NODE, round_id=2) -> UploadHeader:
    return UploadHeader(run_id=RUN, round_id=round_id, node_key=identity.public_key, total_bytes=len(body))


@pytest.fixture
def intake():
    intake = ContributionIntake(chain_id=CHAIN, run_id=RUN, param_shapes=SHAPES, max_bytes=64 * 1024)
    intake.open(announcement())
    return intake


def submit(intake, body: bytes, header=None, sender=None, now_ms=None):
    header = header or header_for(body)
    sender = sender or NODE.peer_id
    now_ms = now_ms or int(time.time() * 1000)
    early = intake.check_header(header, sender, now_ms)
    if early is not None:
        return early
    return intake.admit(header, sender, intake.decode(header, body, now_ms), now_ms)


def assert_refused_without_change(intake, receipt, reason: RefusalReason):
    assert receipt.reason == reason.value, receipt
    assert not receipt.accepted
    assert intake.current.accepted == {}
    assert intake.current.refusals.last.reason == reason.value


def test_a_well_formed_contribution_is_accepted_once(intake):
    body = encode_message(contribution())
    receipt = submit(intake, body)
    assert receipt.accepted and list(intake.current.accepted) == [NODE.public_key]
    accepted = intake.current.accepted[NODE.public_key]
    assert accepted.samples == 2 and accepted.accuracy == 0.5
    assert torch.equal(accepted.gradients["a.weight"], torch.ones(4, 3))
    again = submit(intake, body)
    assert again.reason == RefusalReason.DUPLICATE.value and len(intake.current.accepted) == 1


def test_the_verify_hook_gets_the_bytes_and_the_signature_s_payload_hash():
    """Intake hashes the body once for the signature; the verifier derives its hashes from that."""
    calls = []

    class Verified:
        accepted = True

    def verify(announced, contribution, body, payload):
        calls.append((announced, contribution, body, payload))
        return Verified()

    intake = ContributionIntake(chain_id=CHAIN, run_id=RUN, param_shapes=SHAPES, max_bytes=64 * 1024, verify=verify)
    intake.open(announcement())
    sent = contribution()
    body = encode_message(sent)
    assert submit(intake, body).accepted
    [(announced, received, passed, payload)] = calls
    assert announced == intake.current.announcement and received == sent and passed == body
    assert payload == unsigned_payload_hash(sent) and len(payload) == 32


def test_wrong_round_is_refused_from_the_header_and_from_the_body(intake):
    body = encode_message(contribution(round_id=3))
    assert_refused_without_change(intake, submit(intake, body, header_for(body, round_id=3)), RefusalReason.WRONG_ROUND)
    # A header that lies about the round: the signed body still says round 3.
    assert_refused_without_change(intake, submit(intake, body, header_for(body, round_id=2)), RefusalReason.WRONG_ROUND)


def test_oversized_upload_is_refused_before_the_body(intake):
    header = UploadHeader(run_id=RUN, round_id=2, node_key=NODE.public_key, total_bytes=10 * 1024 * 1024)
    receipt = intake.check_header(header, NODE.peer_id, int(time.time() * 1000))
    assert_refused_without_change(intake, receipt, RefusalReason.OVERSIZED)


def test_bad_signature_is_refused(intake):
    forged = dataclasses.replace(contribution(), signature=sign_message(contribution(), OTHER).signature)
    assert_refused_without_change(intake, submit(intake, encode_message(forged)), RefusalReason.BAD_SIGNATURE)
    tampered = dataclasses.replace(contribution(), round_id=2, chain_id=CHAIN, samples=contribution().samples[:1])
    tampered = dataclasses.replace(tampered, samples_root=samples_root(tampered.samples))
    assert_refused_without_change(intake, submit(intake, encode_message(tampered)), RefusalReason.BAD_SIGNATURE)


def test_late_unknown_wrong_peer_and_wrong_model_are_refused(intake):
    body = encode_message(contribution())
    late = submit(intake, body, now_ms=intake.current.announcement.deadline_ms + 1)
    assert_refused_without_change(intake, late, RefusalReason.LATE)
    assert_refused_without_change(intake, submit(intake, body, sender=OTHER.peer_id), RefusalReason.WRONG_PEER)
    intake.allowed_nodes = frozenset({OTHER.peer_id})
    assert_refused_without_change(intake, submit(intake, body), RefusalReason.UNKNOWN_NODE)
    intake.allowed_nodes = frozenset()
    stale = encode_message(contribution(model_hash=b"\x08" * 32))
    assert_refused_without_change(intake, submit(intake, stale), RefusalReason.WRONG_MODEL)


def test_malformed_bodies_are_refused(intake):
    body = encode_message(contribution())
    trailing = body + b"\x00"
    assert_refused_without_change(intake, submit(intake, trailing), RefusalReason.MALFORMED)
    wrong_shape = contribution(gradient=encode_gradient({"a.weight": torch.ones(3, 4), "b.bias": torch.ones(3)}, "none"))
    assert_refused_without_change(intake, submit(intake, encode_message(wrong_shape)), RefusalReason.MALFORMED)
    bad_root = contribution(samples_root=b"\x00" * 32)
    assert_refused_without_change(intake, submit(intake, encode_message(bad_root)), RefusalReason.MALFORMED)


def test_no_open_round_means_late(intake):
    intake.close()
    body = encode_message(contribution())
    receipt = intake.check_header(header_for(body), NODE.peer_id, int(time.time() * 1000))
    assert receipt.reason == RefusalReason.LATE.value


# ---- bounded refusals and the round's byte bound ---------------------------------------------


def test_a_flood_of_nul_run_ids_is_counted_but_stored_bounded(intake):
    """800 headers whose run id is 65,400 NUL characters: every one counted, a few kept, each
    detail at most DETAIL_CHARS printable characters (no repr escapes), the record a few KiB."""
    for _ in range(800):
        header = UploadHeader(run_id="\x00" * 65_400, round_id=2, node_key=NODE.public_key, total_bytes=1)
        receipt = intake.check_header(header, NODE.peer_id, int(time.time() * 1000))
        assert receipt.reason == RefusalReason.WRONG_ROUND.value and len(receipt.detail) <= DETAIL_CHARS
    log = intake.current.refusals
    assert len(log) == 800 and log.counts == {"wrong-round": 800}
    assert len(log.kept) == KEPT_PER_REASON
    assert all(len(r.detail) <= DETAIL_CHARS and r.detail.isprintable() and "\\x00" not in r.detail for r in log.kept)
    record = json.dumps(log.as_record())
    assert len(record) < 4 * 1024, len(record)
    assert intake.refusal_counts["wrong-round"] == 800


def test_kept_refusals_are_capped_across_reasons():
    log = RefusalLog()
    for i in range(100):
        log.add(Refusal(f"peer-{i}", 1, f"reason-{i % 20}", "x"))
    assert len(log) == 100 and len(log.kept) == KEPT_REFUSALS and log.last.peer_id == "peer-99"
    assert log.as_record(exclude_peers={"peer-0"})["kept"][0]["peer_id"] == "peer-1"


def test_clip_text_never_outgrows_its_limit():
    assert clip_text("\x00\x01abc") == "??abc"
    long = clip_text("é" * 10_000, 50)
    assert len(long) == 50 and long.endswith("...")


def test_a_header_over_the_round_s_byte_bound_is_oversized_even_under_the_configured_cap():
    """The bound follows the terms: with terms, far below `max_bytes`; an honest body fits it."""
    intake = ContributionIntake(chain_id=CHAIN, run_id=RUN, param_shapes=SHAPES, max_bytes=64 * 1024 * 1024)
    ann = announcement()
    intake.open(ann)
    terms = round_terms(ann)
    bound = intake.current.byte_bound
    expected = min(64 * 1024 * 1024, samples_byte_bound(terms) + gradient_byte_bound(SHAPES, intake.compressions)
                   + ENVELOPE_BYTES + 4 * len(RUN))
    assert bound == expected
    body = encode_message(contribution())
    assert len(body) <= bound and submit(intake, body).accepted
    header = UploadHeader(run_id=RUN, round_id=2, node_key=OTHER.public_key, total_bytes=bound + 1)
    receipt = intake.check_header(header, OTHER.peer_id, int(time.time() * 1000))
    assert receipt.reason == RefusalReason.OVERSIZED.value


def test_without_terms_the_bound_falls_back_to_the_protocol_limits():
    bare = SimpleNamespace(prompts_per_node=4, run_id=RUN)  # an announcement from before RoundTerms
    terms = round_terms(bare)
    assert (terms.max_group_size, terms.max_tokens) == (MAX_GROUP_SIZE, MAX_NEW_TOKENS_LIMIT)
    assert contribution_byte_bound(bare, SHAPES, {"none"}, cap=64 * 1024 * 1024) == 64 * 1024 * 1024
    with_terms = SimpleNamespace(prompts_per_node=4, run_id=RUN,
                                 terms=SimpleNamespace(group_sizes=(4, 8), max_new_tokens=(12,)))
    assert round_terms(with_terms).max_group_size == 8
    assert contribution_byte_bound(with_terms, SHAPES, {"none"}, cap=10**9) == (
        4 * 8 * (12 * 18 + 96) + gradient_byte_bound(SHAPES, {"none"}) + ENVELOPE_BYTES + 4 * len(RUN))


def test_the_gradient_bound_covers_every_compression_s_encoding():
    shapes = {"big": (64, 48), "small": (3, 5), "scalar": ()}
    grads = {name: torch.randn(shape) for name, shape in shapes.items()}
    for mode in ("none", "fp16", "uniform8", "blockwise8"):
        assert encode_gradient(grads, mode).nbytes <= gradient_byte_bound(shapes, {mode}), mode


def test_without_a_verifier_a_strategy_outside_the_terms_is_refused_before_its_gradient_is_decoded():
    intake = ContributionIntake(chain_id=CHAIN, run_id=RUN, param_shapes=SHAPES, max_bytes=64 * 1024)
    intake.open(announcement())
    intake.current.terms = dataclasses.replace(intake.current.terms, max_new_tokens=(12,))
    receipt = submit(intake, encode_message(contribution()))  # grpo's default max_new_tokens: 512
    assert receipt.reason == RefusalReason.MALFORMED.value and "max_new_tokens 512" in receipt.detail
