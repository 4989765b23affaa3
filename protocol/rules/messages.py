"""Every wire message of a round, as typed, versioned records with a canonical encoding.

The encoding rules (canonical msgpack, strict decoding, per-type size limits) live in
`protocol/rules/encoding.py`; this module names the records and the rules that bind them together:
what a signature covers, how a sample is hashed, and what a model hash commits to.

Signed messages carry their signature as the last field; the signed payload is the message's
canonical encoding with that field emptied, under a `SigningDomain` of (chain, run, type, round).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TypeVar

from thinkmesh.protocol.rules.adapters import AdapterSpec
from thinkmesh.protocol.rules.hashing import keccak256

from thinkmesh.protocol.rules.encoding import (
    Hash32,
    Message,
    PublicKey32,
    Signature64,
    decode_message,
    encode_message,
    encode_record,
)
from thinkmesh.protocol.rules.errors import EncodingError
from thinkmesh.protocol.rules.generation import ROUND_KIND_TRAINING, ROUND_KINDS
from thinkmesh.protocol.rules.identity import NodeIdentity, SigningDomain, payload_hash, verify_signature_of_hash
from thinkmesh.protocol.rules.merkle import merkle_root
from thinkmesh.protocol.rules.rewards import RewardBreakdown
from thinkmesh.protocol.rules.strategies import StrategySpec, validate_strategy
from thinkmesh.protocol.rules.tasks import TEMPLATES, TaskSpec
from thinkmesh.protocol.rules.terms import RoundTerms

KiB = 1024
MiB = 1024 * KiB
EMPTY_SIGNATURE = b"\x00" * 64
ZERO_HASH = b"\x00" * 32
COMPRESSIONS = ("none", "fp16", "uniform8", "blockwise8")

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class RoundAnnouncement(Message):
    """The coordinator's call for work: which model, which tasks, under which terms, until when."""

    TYPE = "round-announcement"
    VERSION = 4  # 2: the round's sampling terms; 3: the adapter of an adapter round; 4: the round kind
    MAX_BYTES = 16 * KiB

    chain_id: int
    run_id: str
    round_id: int
    model_version: int
    model_hash: Hash32
    task: TaskSpec
    prompts_per_node: int
    seed: Hash32  # revealed here; the chain holds keccak256(seed) from the round's opening
    deadline_ms: int  # unix milliseconds; contributions arriving later are refused
    coordinator_key: PublicKey32
    prompt_template: str = "r1"  # a key of protocol.tasks.TEMPLATES: prompts are rebuilt exactly
    terms: RoundTerms = RoundTerms()
    # None: a full-model round (`model_hash` names all the weights). Set: an adapter round on the
    # frozen base `adapter.base_hash`; `model_hash` names the adapter manifest (protocol/rules/adapters.py).
    adapter: AdapterSpec | None = None
    # "training" (samples + gradient, the model steps) or "generation" (samples only, an empty
    # gradient, the model stays; accepted traces are the correct, well-formed ones): protocol/rules/generation.py
    kind: str = ROUND_KIND_TRAINING
    signature: Signature64 = EMPTY_SIGNATURE

    def __post_init__(self) -> None:
        if self.kind not in ROUND_KINDS:
            raise EncodingError(f"kind must be one of {ROUND_KINDS}, got {self.kind!r}")
        if self.round_id < 0 or self.model_version < 0:
            raise EncodingError("round_id and model_version must be non-negative")
        if not 0 < self.prompts_per_node <= 4096:
            raise EncodingError(f"prompts_per_node must be in 1..4096, got {self.prompts_per_node}")
        if self.prompt_template not in TEMPLATES:
            raise EncodingError(f"prompt_template must be one of {sorted(TEMPLATES)}, got {self.prompt_template!r}")


@dataclass(frozen=True)
class Sample:
    """One completion: its prompt (by index), its tokens, their logprobs and the claimed rewards.

    `logprobs[i]` is log_softmax(logits / temperature) of `completion_ids[i]` under the round's
    model, which the verifier recomputes in one prefill.
    """

    prompt_index: int
    completion_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    rewards: RewardBreakdown

    def __post_init__(self) -> None:
        if len(self.completion_ids) != len(self.logprobs):
            raise EncodingError(
                f"a sample has one logprob per token: {len(self.completion_ids)} tokens, "
                f"{len(self.logprobs)} logprobs"
            )
        if self.prompt_index < 0 or any(t < 0 for t in self.completion_ids):
            raise EncodingError("prompt_index and token ids must be non-negative")


@dataclass(frozen=True)
class TensorBlob:
    """One gradient tensor as hivemind's serialized `runtime_pb2.Tensor` bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class GradientPayload:
    compression: str
    tensors: tuple[TensorBlob, ...]

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise EncodingError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        names = [t.name for t in self.tensors]
        if names != sorted(set(names)):
            raise EncodingError("gradient tensors must be sorted by name, without repeats")

    @property
    def nbytes(self) -> int:
        return sum(len(t.data) for t in self.tensors)


@dataclass(frozen=True)
class Contribution(Message):
    """A node's work for one round: samples, the gradient they produce, and a commitment."""

    TYPE = "contribution"
    VERSION = 2  # 2: gradient wire format v2 (gradient_codec); a v1 node is refused at the envelope
    MAX_BYTES = 256 * MiB

    chain_id: int
    run_id: str
    round_id: int
    node_key: PublicKey32
    model_hash: Hash32
    strategy: StrategySpec
    samples: tuple[Sample, ...]
    samples_root: Hash32  # Merkle root over `sample_hash` of each sample, in order
    gradient: GradientPayload
    signature: Signature64 = EMPTY_SIGNATURE

    def __post_init__(self) -> None:
        if not self.samples:
            raise EncodingError("a contribution carries at least one sample")
        validate_strategy(self.strategy)


@dataclass(frozen=True)
class Finding:
    """One check that failed: which sample, which check, what was expected and what was claimed."""

    sample_index: int
    check: str
    expected: float
    claimed: float


@dataclass(frozen=True)
class TensorEntry:
    """Where one parameter tensor lies in the model's canonical byte stream."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ModelManifest(Message):
    """A model version: its layout, the hashes of its chunks, and its lineage.

    `model_hash` commits to (architecture, tensors, chunk_size, chunk_hashes) alone — see
    `model_content_hash` — so the same weights have the same hash in any round or run.
    """

    TYPE = "model-manifest"
    VERSION = 1
    MAX_BYTES = 4 * MiB

    chain_id: int
    run_id: str
    version: int
    round_id: int
    parent_hash: Hash32
    model_hash: Hash32
    architecture: str  # the transformers config, as canonical JSON text
    tensors: tuple[TensorEntry, ...]
    chunk_size: int
    chunk_hashes: tuple[Hash32, ...]  # sha256 of each chunk of the byte stream
    signature: Signature64 = EMPTY_SIGNATURE

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class _ModelContent:
    architecture: str
    tensors: tuple[TensorEntry, ...]
    chunk_size: int
    chunk_hashes: tuple[Hash32, ...]


def model_content_hash(
    architecture: str, tensors: tuple[TensorEntry, ...], chunk_size: int, chunk_hashes: tuple[bytes, ...]
) -> bytes:
    return keccak256(encode_record(_ModelContent(architecture, tensors, chunk_size, chunk_hashes)))


def sample_hash(sample: Sample) -> bytes:
    return keccak256(encode_record(sample))


def samples_root(samples: tuple[Sample, ...]) -> bytes:
    return merkle_root([sample_hash(s) for s in samples])


def message_hash(message: Message) -> bytes:
    """keccak256 of the canonical encoding, signature included: names one exact message."""
    return keccak256(encode_message(message))


def signing_domain(message: Message) -> SigningDomain:
    return SigningDomain(
        chain_id=message.chain_id,
        run_id=message.run_id,
        message_type=type(message).TYPE,
        round_id=message.round_id,
    )


def _unsigned_bytes(message: Message) -> bytes:
    return encode_message(dataclasses.replace(message, signature=EMPTY_SIGNATURE))


# msgpack bin8 of 64 bytes: the signature is the body's last field and the body the envelope's last
# element, so a signed encoding ends with these two bytes and the signature.
_SIGNATURE_HEADER = b"\xc4\x40"


def unsigned_payload_hash(message: Message, encoded: bytes | None = None) -> bytes:
    """sha256 of what `message`'s signature covers: its canonical encoding with the signature
    emptied (`identity.payload_hash` of it). `encoded`: `encode_message(message)` when the caller
    holds it (a contribution's encoding is megabytes; re-walking or copying it costs more than
    hashing it). Array headers count elements, not bytes, and the empty signature has the
    signature's length, so the unsigned encoding is `encoded` with its last 64 bytes zeroed: hashed
    in place, no copy. Bytes that cannot be that encoding raise ValueError: a caller's mistake, not
    the signer's."""
    if encoded is None:
        return payload_hash(_unsigned_bytes(message))
    if not encoded.endswith(_SIGNATURE_HEADER + message.signature):
        raise ValueError("unsigned_payload_hash: `encoded` is not the canonical encoding of this signed message")
    digest = hashlib.sha256(memoryview(encoded)[: -len(EMPTY_SIGNATURE)])
    digest.update(EMPTY_SIGNATURE)
    return digest.digest()


def sign_message(message: M, identity: NodeIdentity) -> M:
    signature = identity.sign(signing_domain(message), _unsigned_bytes(message))
    return dataclasses.replace(message, signature=signature)


def verify_message(
    message: Message, public_key: bytes, encoded: bytes | None = None, payload_sha256: bytes | None = None,
) -> None:
    """Raises SignatureError unless `message` is signed by `public_key` in its own domain.

    `payload_sha256`: `unsigned_payload_hash(message)` when the caller has it (the coordinator
    derives the contribution hash from it, so one pass over the bytes serves both); else it is
    computed, from `encoded` when given (see `unsigned_payload_hash`)."""
    if payload_sha256 is None:
        payload_sha256 = unsigned_payload_hash(message, encoded)
    verify_signature_of_hash(public_key, signing_domain(message), payload_sha256, message.signature)


__all__ = [
    "AdapterSpec", "Contribution", "Finding", "GradientPayload", "ModelManifest", "RoundAnnouncement", "RoundTerms", "Sample",
    "TensorBlob", "TensorEntry", "decode_message", "encode_message", "message_hash",
    "model_content_hash", "sample_hash", "samples_root", "sign_message", "unsigned_payload_hash", "verify_message",
]
