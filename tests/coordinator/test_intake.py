"""Contribution intake: each refusal carries its named reason and leaves the round unchanged."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from thinkmesh.coordinator.intake import ContributionIntake
from thinkmesh.protocol.gradient_codec import encode_gradient
from thinkmesh.protocol.identity import NodeIdentity
from thinkmesh.protocol.messages import (
    Contribution,
    RoundAnnouncement,
    Sample,
    encode_message,
    samples_root,
    sign_message,
    unsigned_payload_hash,
)
from thinkmesh.protocol.rewards import RewardBreakdown
from thinkmesh.protocol.strategies import strategy_from_name
from thinkmesh.protocol.tasks import TaskSpec
from thinkmesh.protocol.transport import RefusalReason, UploadHeader

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
    assert intake.current.refusals[-1].reason == reason.value


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
