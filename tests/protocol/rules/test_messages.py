import dataclasses
import hashlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.errors import EncodingError, ProtocolError, SignatureError
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import (
    Contribution,
    GradientPayload,
    ModelManifest,
    RoundAnnouncement,
    Sample,
    TensorBlob,
    TensorEntry,
    decode_message,
    message_hash,
    sign_message,
    samples_root,
    unsigned_payload_hash,
    verify_message,
)
from thinkmesh.protocol.rules.rewards import RewardBreakdown
from thinkmesh.protocol.rules.strategies import PRESETS
from thinkmesh.protocol.rules.tasks import TaskSpec

NODE = NodeIdentity.from_seed(b"\x01" * 32)
COORDINATOR = NodeIdentity.from_seed(b"\x02" * 32)
H = b"\xab" * 32

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_int = st.integers(min_value=0, max_value=2**40)
hash32 = st.binary(min_size=32, max_size=32)


@st.composite
def samples(draw):
    n = draw(st.integers(0, 12))
    return Sample(
        prompt_index=draw(st.integers(0, 1000)),
        completion_ids=tuple(draw(st.lists(st.integers(0, 50_000), min_size=n, max_size=n))),
        logprobs=tuple(draw(st.lists(finite, min_size=n, max_size=n))),
        rewards=RewardBreakdown(*(draw(finite) for _ in range(4))),
    )


@st.composite
def contributions(draw):
    names = sorted(set(draw(st.lists(st.text(min_size=1, max_size=8), max_size=4))))
    return Contribution(
        chain_id=draw(small_int), run_id=draw(st.text(max_size=16)), round_id=draw(small_int),
        node_key=NODE.public_key, model_hash=draw(hash32),
        strategy=draw(st.sampled_from(sorted(PRESETS.values(), key=lambda s: s.name))),
        samples=tuple(draw(st.lists(samples(), min_size=1, max_size=4))),
        samples_root=draw(hash32),
        gradient=GradientPayload(
            compression=draw(st.sampled_from(["none", "fp16", "uniform8", "blockwise8"])),
            tensors=tuple(TensorBlob(n, draw(st.binary(max_size=64))) for n in names),
        ),
        signature=draw(st.binary(min_size=64, max_size=64)),
    )


announcements = st.builds(
    RoundAnnouncement, chain_id=small_int, run_id=st.text(max_size=16), round_id=small_int,
    model_version=small_int, model_hash=hash32,
    task=st.builds(TaskSpec, family=st.sampled_from(["arithmetic", "countdown", "linear"]),
                   difficulty=st.integers(1, 5)),
    prompts_per_node=st.integers(1, 4096), seed=hash32, deadline_ms=small_int,
    coordinator_key=hash32, prompt_template=st.sampled_from(["r1", "r1-compact"]),
    signature=st.binary(min_size=64, max_size=64),
)
manifests = st.builds(
    ModelManifest, chain_id=small_int, run_id=st.text(max_size=16), version=small_int,
    round_id=small_int, parent_hash=hash32, model_hash=hash32, architecture=st.text(max_size=40),
    tensors=st.lists(st.builds(TensorEntry, name=st.text(max_size=10), dtype=st.sampled_from(["float32", "bfloat16"]),
                               shape=st.lists(st.integers(1, 64), max_size=3).map(tuple),
                               offset=small_int, nbytes=small_int), max_size=4).map(tuple),
    chunk_size=st.integers(1, 2**24), chunk_hashes=st.lists(hash32, max_size=4).map(tuple),
    signature=st.binary(min_size=64, max_size=64),
)
ANY_MESSAGE = st.one_of(announcements, contributions(), manifests)
TYPES = (RoundAnnouncement, Contribution, ModelManifest)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_MESSAGE)
def test_encode_decode_round_trips_to_the_same_object_and_bytes(message):
    data = encode_message(message)
    decoded = decode_message(data, type(message))
    assert decoded == message
    assert encode_message(decoded) == data


@settings(max_examples=20_000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256), st.sampled_from(TYPES))
def test_arbitrary_bytes_decode_to_a_valid_message_or_a_protocol_error(data, cls):
    try:
        message = decode_message(data, cls)
    except ProtocolError:
        return
    assert encode_message(message) == data  # anything accepted is canonical


@settings(max_examples=1_500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_MESSAGE, st.data())
def test_mutated_encodings_decode_cleanly_or_raise_protocol_error(message, data):
    """Mutations of valid bytes reach deep into the decoder, unlike uniformly random bytes."""
    raw = bytearray(encode_message(message))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del raw[i:]
    elif kind == "insert":
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        del raw[i]
    try:
        decoded = decode_message(bytes(raw), type(message))
    except ProtocolError:
        return
    assert encode_message(decoded) == bytes(raw)


def _announcement(**changes) -> RoundAnnouncement:
    base = RoundAnnouncement(
        chain_id=31337, run_id="run", round_id=3, model_version=2, model_hash=H,
        task=TaskSpec("countdown", 2), prompts_per_node=8, seed=H, deadline_ms=1_700_000_000_000,
        coordinator_key=COORDINATOR.public_key,
    )
    return dataclasses.replace(base, **changes)


def _raw_envelope(body, tag="round-announcement", version=RoundAnnouncement.VERSION) -> bytes:
    import msgpack

    return msgpack.packb([tag, version, body], use_bin_type=True)


def _body(message) -> list:
    import msgpack

    return msgpack.unpackb(encode_message(message), raw=False)[2]


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda b: b[:-1], "has 15 fields, got 14"),
        (lambda b: b + [0], "has 15 fields, got 16"),
        (lambda b: [str(b[0])] + b[1:], "chain_id: expected int, got str"),
        (lambda b: b[:4] + [b[4][:31]] + b[5:], "model_hash: expected 32 bytes, got 31"),
        (lambda b: b[:5] + [["arithmetic", 9]] + b[6:], "difficulty"),
        (lambda b: b[:6] + [True] + b[7:], "prompts_per_node: expected int, got bool"),
    ],
    ids=["missing-field", "extra-field", "wrong-type", "short-hash", "bad-task", "bool-for-int"],
)
def test_strict_decoding_names_the_problem(mangle, error):
    data = _raw_envelope(mangle(_body(_announcement())))
    with pytest.raises(EncodingError, match=error):
        decode_message(data, RoundAnnouncement)


def test_unknown_version_type_and_non_canonical_bytes_are_refused():
    body = _body(_announcement())
    with pytest.raises(EncodingError, match="version 5"):
        decode_message(_raw_envelope(body, version=5), RoundAnnouncement)
    with pytest.raises(EncodingError, match="expected a 'round-announcement' message, got 'model-manifest'"):
        decode_message(_raw_envelope(body, tag="model-manifest"), RoundAnnouncement)
    canonical = encode_message(_announcement())
    wide = canonical.replace(b"\xcd\x7a\x69", b"\xce\x00\x00\x7a\x69", 1)  # chain id 31337 as uint32
    assert wide != canonical
    with pytest.raises(EncodingError, match="canonical"):
        decode_message(wide, RoundAnnouncement)


def test_an_adapter_round_announcement_round_trips_and_names_its_base():
    from thinkmesh.protocol.rules.adapters import AdapterSpec, adapter_architecture

    spec = AdapterSpec(base_hash=H, rank=4, alpha=8.0)
    announcement = _announcement(adapter=spec)
    assert decode_message(encode_message(announcement), RoundAnnouncement) == announcement
    assert _announcement().adapter is None  # a full-model round
    assert H.hex() in adapter_architecture(spec) and '"rank":4' in adapter_architecture(spec)
    with pytest.raises(EncodingError, match="rank"):
        AdapterSpec(base_hash=H, rank=0)
    with pytest.raises(EncodingError, match="sorted distinct"):
        AdapterSpec(base_hash=H, target_modules=("v_proj", "q_proj"))


def test_oversize_payload_is_refused_before_parsing():
    with pytest.raises(EncodingError, match="over the limit"):
        decode_message(b"\x00" * (RoundAnnouncement.MAX_BYTES + 1), RoundAnnouncement)
    huge = _announcement(run_id="x" * RoundAnnouncement.MAX_BYTES)
    with pytest.raises(EncodingError, match="over its limit"):
        encode_message(huge)


def test_contribution_refuses_an_invalid_strategy_and_mismatched_sample():
    with pytest.raises(ProtocolError, match="loss"):
        dataclasses.replace(PRESETS["grpo"], loss="ppo")  # constructing is fine ...
        Contribution(
            chain_id=1, run_id="r", round_id=0, node_key=H, model_hash=H,
            strategy=dataclasses.replace(PRESETS["grpo"], loss="ppo"),
            samples=(Sample(0, (1,), (-0.5,), RewardBreakdown(1.0, 1.0, 1.0, 0.0)),),
            samples_root=H, gradient=GradientPayload("none", ()),
        )
    with pytest.raises(EncodingError, match="one logprob per token"):
        Sample(0, (1, 2), (-0.5,), RewardBreakdown(1.0, 1.0, 1.0, 0.0))


def test_signatures_bind_message_round_and_run():
    signed = sign_message(_announcement(), COORDINATOR)
    verify_message(signed, COORDINATOR.public_key)
    decoded = decode_message(encode_message(signed), RoundAnnouncement)
    verify_message(decoded, COORDINATOR.public_key)
    for tampered in (
        dataclasses.replace(signed, round_id=4),
        dataclasses.replace(signed, run_id="other"),
        dataclasses.replace(signed, chain_id=1),
        dataclasses.replace(signed, seed=b"\x00" * 32),
    ):
        with pytest.raises(SignatureError):
            verify_message(tampered, COORDINATOR.public_key)
    with pytest.raises(SignatureError):
        verify_message(signed, NODE.public_key)


def test_sample_commitments_change_with_any_sample():
    a = Sample(0, (5, 6), (-0.1, -0.2), RewardBreakdown(1.0, 1.0, 1.0, 0.0))
    b = dataclasses.replace(a, logprobs=(-0.1, -0.3))
    assert samples_root((a, b)) != samples_root((a, a))
    # OpenZeppelin's sorted pairs commit to the set of a pair, not its order; a sample's place
    # is bound by its own prompt_index instead.
    c = dataclasses.replace(b, prompt_index=1)
    assert samples_root((a, c)) != samples_root((a, b))


def test_encoding_is_identical_in_a_fresh_process():
    message = sign_message(_announcement(), COORDINATOR)
    code = (
        "import dataclasses;"
        "from tests.protocol.rules.test_messages import _announcement, COORDINATOR;"
        "from thinkmesh.protocol.rules.messages import sign_message, message_hash;"
        "print(message_hash(sign_message(_announcement(), COORDINATOR)).hex())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == message_hash(message).hex()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(announcements, contributions(), manifests))
def test_verifying_from_the_encoded_bytes_checks_exactly_what_re_encoding_checks(message):
    signer = NODE if isinstance(message, Contribution) else COORDINATOR
    signed = sign_message(message, signer)
    verify_message(signed, signer.public_key, encode_message(signed))
    unsigned = encode_message(dataclasses.replace(signed, signature=bytes(64)))
    assert unsigned_payload_hash(signed, encode_message(signed)) == unsigned_payload_hash(signed) == hashlib.sha256(unsigned).digest()
    verify_message(signed, signer.public_key, payload_sha256=hashlib.sha256(unsigned).digest())
    with pytest.raises(SignatureError):
        verify_message(signed, signer.public_key, payload_sha256=hashlib.sha256(unsigned + b"\x00").digest())
    forged = dataclasses.replace(signed, signature=bytes(64 - len(b"x")) + b"x")
    with pytest.raises(SignatureError):
        verify_message(forged, signer.public_key, encode_message(forged))
    with pytest.raises(SignatureError):
        verify_message(signed, (NODE if signer is COORDINATOR else COORDINATOR).public_key, encode_message(signed))


def test_bytes_that_are_not_the_message_s_encoding_are_refused_not_trusted():
    signed = sign_message(_announcement(), COORDINATOR)
    other = sign_message(_announcement(round_id=4), COORDINATOR)
    with pytest.raises(ValueError, match="not the canonical encoding"):
        verify_message(signed, COORDINATOR.public_key, encode_message(other))
    with pytest.raises(ValueError, match="not the canonical encoding"):
        unsigned_payload_hash(signed, encode_message(other))


def test_a_contribution_from_before_gradient_wire_format_v2_is_refused_at_the_envelope():
    from thinkmesh.protocol.rules.gradient_codec import WIRE_FORMAT

    assert Contribution.VERSION == 2 and WIRE_FORMAT == 2  # bump both together
    with pytest.raises(EncodingError, match="unsupported contribution version 1; this node speaks 2"):
        decode_message(_raw_envelope([], tag="contribution", version=1), Contribution)
