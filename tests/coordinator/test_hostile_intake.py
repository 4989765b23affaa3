"""The attacks of issue 13 (item 4) against the real intake, verifier and stream handler.

Each test drives `CoordinatorService._receive_contribution` (or the intake it wraps) with the
verification world's model, a registry of its three nodes and the daemon's wiring, over in-memory
streams, and checks what the attack may cost: refused with its reason before the expensive part,
no verifier state changed by it, the honest node's later upload accepted (never "replay"), and
every recorded verdict's evidence file still the one its hash names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import numpy as np
import pytest

from tests.verification_world import world
from thinkmesh.coordinator.work.intake import ContributionIntake
from thinkmesh.coordinator.work.p2p_service import CoordinatorService
from thinkmesh.coordinator.work.stream_guard import StreamLimits
from thinkmesh.coordinator.work.verifier import ContributionArchive, ContributionVerifier, round_dir
from thinkmesh.devnet.cheats import resign
from thinkmesh.protocol.rules.audit import AuditPolicy
from thinkmesh.protocol.rules.encoding import decode_record, encode_record
from thinkmesh.protocol.rules.evidence import read_evidence, rerun_evidence
from thinkmesh.protocol.rules.hashing import keccak256
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import GradientPayload, MiB, Sample, TensorBlob, encode_message
from thinkmesh.protocol.p2p.transport import CONTROL_FRAME_BYTES, Receipt, RefusalReason, UploadHeader, body_frames

pytestmark = pytest.mark.timeout(180)
FAST = StreamLimits(header_timeout_s=0.5, frame_timeout_s=0.5, slot_wait_s=1.0, registry_wait_s=5.0)


# ---- in-memory streams -----------------------------------------------------------------------


class PeerInfo:
    def __init__(self, peer_id: str):
        self.peer_id = self

        def to_base58() -> str:
            return peer_id

        self.to_base58 = to_base58


class MemoryWriter:
    """What the handler writes; closing it ends the paired reader, as a closed socket would."""

    def __init__(self, reader: asyncio.StreamReader):
        self.reader, self.data, self.closed = reader, bytearray(), False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.feed_eof()

    def receipt(self) -> Receipt | None:
        if len(self.data) < 8:
            return None
        return decode_record(bytes(self.data[8:]), Receipt, CONTROL_FRAME_BYTES)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(8, "big") + payload


async def send(service, identity: NodeIdentity, body: bytes | None = None, *, header: UploadHeader | None = None,
               body_part: float = 1.0, end: bool = False) -> Receipt | None:
    """One upload on a fresh stream: the header, then `body_part` of the body's frames; the
    stream then stays open (a peer that holds it) unless `end`."""
    reader = asyncio.StreamReader()
    writer = MemoryWriter(reader)
    round_id = service.intake.current.announcement.round_id
    header = header or UploadHeader(run_id=service.run_id, round_id=round_id, node_key=identity.public_key,
                                    total_bytes=len(body))
    reader.feed_data(frame(encode_record(header)))
    if body is not None:
        raw = b"".join(frame(payload) for payload in body_frames(body))
        reader.feed_data(raw[: math.floor(len(raw) * body_part)])
    if end:
        reader.feed_eof()
    await service._receive_contribution(PeerInfo(identity.peer_id), reader, writer)
    return writer.receipt()


# ---- the coordinator side, wired as the daemon wires it ------------------------------------------


@dataclasses.dataclass
class Side:
    verifier: ContributionVerifier
    intake: ContributionIntake
    service: CoordinatorService
    reads: list[float]
    verifications: list[bytes]

    @property
    def evidence(self):
        return round_dir(self.verifier.evidence_dir, world().round.round_id)


def coordinator_side(tmp_path, limits: StreamLimits = FAST, announcement=None) -> Side:
    w = world()
    registered = {node.public_key: f"0x{i + 1:040x}" for i, node in enumerate(w.nodes)}
    reads: list[float] = []

    def registry():
        reads.append(time.monotonic())
        return dict(registered)

    verifier = ContributionVerifier(
        model=w.model, tokenizer=w.tokenizer, policy=AuditPolicy(), coordinator_seed=b"\xc0" * 32,
        evidence_dir=tmp_path / "evidence", archive=ContributionArchive(tmp_path / "contributions"),
        registry=registry,
    )
    verifications: list[bytes] = []

    def verify(announcement, contribution, body, payload):
        verifications.append(contribution.node_key)
        return verifier.verify(announcement, contribution, body, payload)

    intake = ContributionIntake(
        chain_id=31337, run_id="verify-test", param_shapes=w.shapes, max_bytes=64 * MiB, verify=verify,
        registry=verifier, admit_verdict=verifier.admit, drop_verdict=verifier.release,
    )
    announcement = announcement or w.round
    verifier.open_round(announcement.round_id)
    intake.open(announcement)
    return Side(verifier, intake, CoordinatorService(None, "verify-test", intake, limits), reads, verifications)


def replay_state(verifier: ContributionVerifier) -> tuple:
    return dict(verifier.current.samples), dict(verifier.current.gradients), dict(verifier.pending)


def poisoned_gradient(contribution, name: str, *, nan: bool = False, shape: tuple[int, ...] | None = None):
    """The contribution's gradient with one tensor replaced: NaN-valued, or of another shape."""
    from hivemind.proto import runtime_pb2

    model_shape = world().shapes[name]
    shape = shape or model_shape
    values = np.zeros(math.prod(shape), dtype=np.float32)
    if nan:
        values[0] = np.nan
    proto = runtime_pb2.Tensor(buffer=values.tobytes(), size=shape, dtype="float32", requires_grad=False,
                               compression=runtime_pb2.CompressionType.NONE)
    blobs = tuple(TensorBlob(b.name, proto.SerializeToString()) if b.name == name else b
                  for b in contribution.gradient.tensors)
    return GradientPayload(contribution.gradient.compression, blobs)


# ---- the attacks -----------------------------------------------------------------------------------


def test_unregistered_keys_are_refused_from_the_header_with_one_shared_registry_read(tmp_path):
    """50 fresh unregistered keys at once: each refused unknown-node without its body read (none is
    sent: reading it would wait out the frame timeout), one registry read for all of them, nothing
    verified or written."""
    side = coordinator_side(tmp_path)
    attackers = [NodeIdentity.generate() for _ in range(50)]
    reads_before = len(side.reads)

    async def flood():
        started = time.monotonic()
        header = lambda a: UploadHeader("verify-test", 2, a.public_key, 300_000)  # noqa: E731
        receipts = await asyncio.gather(*(send(side.service, a, header=header(a)) for a in attackers))
        return receipts, time.monotonic() - started

    receipts, seconds = asyncio.run(flood())
    assert {r.reason for r in receipts} == {RefusalReason.UNKNOWN_NODE.value}
    assert seconds < FAST.frame_timeout_s + 1.0
    assert len(side.reads) - reads_before == 1, "one registry read serves every waiting header"
    assert side.verifications == [] and side.service.counters.upload_bytes_received == 0
    assert not side.evidence.exists() or list(side.evidence.iterdir()) == []
    assert side.intake.current.refusals.counts == {"unknown-node": 50}

    # The same keys again at once: looked up moments ago, so refused without another read.
    receipts, _ = asyncio.run(flood())
    assert {r.reason for r in receipts} == {RefusalReason.UNKNOWN_NODE.value} and len(side.reads) - reads_before == 1


def test_a_registered_node_s_later_registration_is_found_by_a_read(tmp_path):
    side = coordinator_side(tmp_path)
    w = world()
    late = w.nodes[0]
    side.verifier.registered.pop(late.public_key)  # as if it registered after the round's read
    receipt = asyncio.run(send(side.service, late, encode_message(w.honest[0])))
    assert receipt.accepted, receipt


def test_a_million_one_token_samples_are_refused_from_the_header(tmp_path):
    """49 MiB announced, from a registered key or a stranger: over the round's byte bound, so
    refused before a byte of the body is read (none is sent), no verdict, no evidence file."""
    side = coordinator_side(tmp_path)
    for identity in (world().nodes[0], NodeIdentity.generate()):
        header = UploadHeader("verify-test", 2, identity.public_key, 49 * MiB)
        receipt = asyncio.run(send(side.service, identity, header=header))
        assert receipt.reason == RefusalReason.OVERSIZED.value, receipt
    assert side.intake.current.byte_bound < 2 * MiB
    assert side.verifications == [] and not side.evidence.exists()


def test_completions_far_over_the_terms_are_refused_from_the_header(tmp_path):
    """Groups of 8,192-token completions (declared max_new_tokens 8192, the terms allow 12): the
    header's size alone says they cannot be honest, so the model never runs on them."""
    w = world()
    side = coordinator_side(tmp_path)
    honest = w.honest[0]
    long = tuple(Sample(s.prompt_index, (5,) * 8192, (-0.5,) * 8192, s.rewards) for s in honest.samples[:4])
    attack = resign(honest, w.nodes[0], samples=long + honest.samples[4:],
                    strategy=dataclasses.replace(honest.strategy, max_new_tokens=8192))
    body = encode_message(attack)
    started = time.monotonic()
    receipt = asyncio.run(send(side.service, w.nodes[0], body))
    assert receipt.reason == RefusalReason.OVERSIZED.value, receipt
    assert time.monotonic() - started < 1.0 and side.verifications == []
    assert len(body) > side.intake.current.byte_bound


@pytest.mark.parametrize("poison", ["nan", "oversized"])
def test_a_bad_tensor_outside_the_probe_is_refused_before_verification_and_the_honest_upload_then_passes(tmp_path, poison):
    """A NaN (or a tensor larger than the model's) in a tensor the probe does not audit: refused
    as malformed before the verifier sees it, so its samples never enter the replay set, and the
    node's honest upload of the same samples is accepted, not slashed as a replay."""
    w = world()
    side = coordinator_side(tmp_path)
    honest = w.honest[0]
    name = sorted(w.shapes)[0]  # intake checks every tensor before the verifier, whichever the probe draws
    shape = (w.shapes[name][0] + 1, *w.shapes[name][1:])
    gradient = poisoned_gradient(honest, name, nan=poison == "nan", shape=shape if poison == "oversized" else None)
    bad = resign(honest, w.nodes[0], gradient=gradient)
    state = replay_state(side.verifier)
    receipt = asyncio.run(send(side.service, w.nodes[0], encode_message(bad)))
    assert receipt.reason == RefusalReason.MALFORMED.value, receipt
    assert side.verifications == [] and replay_state(side.verifier) == state
    assert not side.evidence.exists() or list(side.evidence.iterdir()) == []

    again = asyncio.run(send(side.service, w.nodes[0], encode_message(honest)))
    assert again.accepted, again
    assert side.intake.current.accepted[honest.node_key].verified.report.reason == "ok"


def test_the_same_bytes_on_two_streams_get_one_verdict_whose_file_still_matches(tmp_path):
    """Two concurrent streams with one node's bytes: the second is refused while the first is in
    flight; the accepted verdict's evidence file (named by the contribution hash, linked by node
    key) is the one it was, and re-runs to its verdict."""
    w = world()
    side = coordinator_side(tmp_path)
    body = encode_message(w.honest[1])

    async def both():
        return await asyncio.gather(send(side.service, w.nodes[1], body), send(side.service, w.nodes[1], body))

    receipts = asyncio.run(both())
    assert sorted(r.reason for r in receipts) == ["duplicate", "ok"]
    assert any("in flight" in r.detail for r in receipts)
    assert side.verifications == [w.nodes[1].public_key]
    verified = side.intake.current.accepted[w.nodes[1].public_key].verified
    alias = side.evidence / f"{w.nodes[1].public_key.hex()}.evidence"
    assert verified.evidence_path.name == f"{verified.report.contribution_hash.hex()}.evidence"
    assert alias.samefile(verified.evidence_path)
    assert keccak256(alias.read_bytes()) == verified.evidence_hash
    assert rerun_evidence(read_evidence(alias), w.model, w.tokenizer).agrees


def test_two_verdicts_on_one_contribution_never_share_a_file_and_a_dropped_one_leaves_no_trace(tmp_path):
    """Past intake's guards (a direct race in the verifier): the second verdict is a replay of the
    pending first, in a file of its own; dropping it removes its file, the first's is untouched,
    and once the first is dropped too the same contribution verifies as ok again (never replay)."""
    w = world()
    side = coordinator_side(tmp_path)
    first = side.verifier.verify(w.round, w.honest[2])
    before = first.evidence_path.read_bytes()
    second = side.verifier.verify(w.round, w.honest[2])
    assert first.accepted and second.report.reason == "replay"
    assert first.evidence_path != second.evidence_path and first.evidence_path.read_bytes() == before
    assert keccak256(second.evidence_path.read_bytes()) == second.evidence_hash
    side.verifier.release(second)
    assert not second.evidence_path.exists() and first.evidence_path.read_bytes() == before
    side.verifier.release(first)  # e.g. refused as late: nothing of it stays
    assert side.verifier.pending == {} and side.verifier.current.samples == {}
    assert side.verifier.verify(w.round, w.honest[2]).accepted


def test_a_verdict_refused_as_late_is_dropped_and_the_node_s_hashes_stay_free(tmp_path):
    w = world()
    side = coordinator_side(tmp_path)
    body = encode_message(w.honest[0])
    header = UploadHeader("verify-test", 2, w.nodes[0].public_key, len(body))
    outcome = side.intake.decode(header, body, int(time.time() * 1000))
    assert outcome.verified.accepted and side.verifier.pending
    late = side.intake.admit(header, w.nodes[0].peer_id, outcome, w.round.deadline_ms + 1)
    assert late.reason == RefusalReason.LATE.value
    assert side.verifier.pending == {} and side.verifier.current.samples == {}
    assert not outcome.verified.evidence_path.exists()
    assert not side.verifier.archive.path(2, w.nodes[0].public_key).exists()


def test_a_group_size_of_the_node_s_choosing_is_refused_as_off_terms_and_slashable(tmp_path):
    """The paid-512x attack: one cheap sample repeated per prompt under a group size the node
    declared. At 1024 the byte bound refuses it from the header; at 64 (one-token samples) it fits,
    reaches the verifier, and is refused there as off-terms with full evidence: slashable."""
    w = world()
    side = coordinator_side(tmp_path)
    honest = w.honest[0]
    group = honest.strategy.group_size
    first = [honest.samples[i] for i in range(0, len(honest.samples), group)]
    short = [dataclasses.replace(s, completion_ids=s.completion_ids[:1], logprobs=s.logprobs[:1]) for s in first]
    def inflated(size):
        return resign(honest, w.nodes[0], strategy=dataclasses.replace(honest.strategy, group_size=size),
                      samples=tuple(s for s in short for _ in range(size)))

    assert asyncio.run(send(side.service, w.nodes[0], encode_message(inflated(1024)))).reason == "oversized"
    receipt = asyncio.run(send(side.service, w.nodes[0], encode_message(inflated(64))))
    assert not receipt.accepted and receipt.detail.startswith("verification: off-terms"), receipt
    rejected = side.intake.current.rejected[honest.node_key]
    assert rejected.verified.slashable and not rejected.verified.short
    assert keccak256(rejected.verified.evidence_path.read_bytes()) == rejected.verified.evidence_hash


def test_an_unslashable_verdict_gets_a_short_record_not_an_evidence_file(tmp_path):
    """A key that left the registry between header and verification: unknown-node, which nobody
    can be slashed for, so a few hundred bytes are written instead of the contribution."""
    w = world()
    side = coordinator_side(tmp_path)
    side.verifier._read_registry = lambda: {}
    side.verifier.registered = {}
    side.verifier._registry_read_at = float("-inf")
    verified = side.verifier.verify(w.round, w.honest[0])
    assert verified.report.reason == "unknown-node" and verified.short and not verified.slashable
    assert verified.evidence_path.name.endswith(".verdict.json")
    assert verified.evidence_path.stat().st_size < 2048
    assert keccak256(verified.evidence_path.read_bytes()) == verified.evidence_hash


def test_streams_that_announce_a_body_and_hold_are_closed_and_their_room_returned(tmp_path):
    """A registered node announces its body, sends most of it and holds; another sends only a
    header-less stream. Both closed within their timeouts, the budget and in-flight set emptied,
    and the holder's honest upload afterwards is accepted."""
    w = world()
    side = coordinator_side(tmp_path)
    body = encode_message(w.honest[0])

    async def hold_then_send():
        started = time.monotonic()
        held = await send(side.service, w.nodes[0], body, body_part=0.6)
        idle_reader = asyncio.StreamReader()
        await side.service._receive_contribution(PeerInfo(w.nodes[2].peer_id), idle_reader, MemoryWriter(idle_reader))
        return held, time.monotonic() - started

    held, seconds = asyncio.run(hold_then_send())
    assert held.reason == RefusalReason.LATE.value and "body" in held.detail, held
    assert seconds < FAST.frame_timeout_s + FAST.header_timeout_s + 1.0
    assert side.service.budget.uploads == side.service.budget.bytes == 0
    assert side.intake.current.in_flight == set() and len(side.service.streams) == 0
    assert side.service.counters.by_reason["timeout"] == 2
    assert side.intake.current.refusals.counts["timeout"] == 2
    assert asyncio.run(send(side.service, w.nodes[0], body)).accepted


def test_bodies_in_flight_are_capped_and_a_waiting_header_gets_the_freed_room(tmp_path):
    w = world()
    one = len(encode_message(w.honest[0]))
    limits = dataclasses.replace(FAST, max_uploads=1, max_upload_bytes=one + 1, slot_wait_s=10.0, frame_timeout_s=1.0)
    side = coordinator_side(tmp_path, limits)

    async def two():
        return await asyncio.gather(*(send(side.service, w.nodes[i], encode_message(w.honest[i])) for i in (0, 1)))

    assert all(r.accepted for r in asyncio.run(two()))
    assert side.service.budget.uploads == 0


def test_a_crowd_of_idle_streams_cannot_keep_an_honest_upload_out(tmp_path):
    """100 streams that never send a header against a table of 16: each new one closes the oldest
    idle one, so the honest upload gets in at once; the crowd never holds more than 16 streams."""
    w = world()
    side = coordinator_side(tmp_path, dataclasses.replace(FAST, max_streams=16, header_timeout_s=2.0))
    body = encode_message(w.honest[0])
    most = []

    async def idle():
        reader = asyncio.StreamReader()
        most.append(len(side.service.streams))
        await side.service._receive_contribution(PeerInfo(NodeIdentity.generate().peer_id), reader, MemoryWriter(reader))

    async def crowd_then_upload():
        crowd = [asyncio.ensure_future(idle()) for _ in range(100)]
        while len(most) < 100:
            await asyncio.sleep(0)
        started = time.monotonic()
        receipt = await send(side.service, w.nodes[0], body)
        seconds = time.monotonic() - started
        await asyncio.gather(*crowd)
        return receipt, seconds

    receipt, seconds = asyncio.run(crowd_then_upload())
    assert receipt.accepted and seconds < FAST.frame_timeout_s + 2.0
    assert max(most) <= 16 and side.service.streams.evicted == 85
    assert side.service.counters.by_reason["evicted"] == 85 and len(side.service.streams) == 0
