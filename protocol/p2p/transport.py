"""The wire between nodes and the coordinator over hivemind P2P streams.

Two stream protocols, each named per run so two runs on one swarm never cross:

    model_handler(run)       node -> coordinator: `ModelRequest`; coordinator -> node: `ModelOffer`
                             (the signed manifest), then one `ModelChunk` frame per chunk.
    contribute_handler(run)  node -> coordinator: `UploadHeader`, then the canonical bytes of a
                             signed `Contribution` in frames of at most `FRAME_BYTES`;
                             coordinator -> node: one `Receipt`.

A frame is an 8-byte big-endian length (hivemind's `P2P.send_raw_data` layout) and that many
bytes. `read_frame` refuses a frame over its limit *from the header*, before reading the body,
so an oversized upload costs the receiver 8 bytes. The header of an upload names its round,
node and total size, so late, wrong-round, unknown-node and oversized uploads are refused
before any of the body is read; every refusal is a `Receipt` with a `RefusalReason`.

Model chunks may be zlib-compressed (lossless; weights must hash exactly), decompressed with a
hard output bound so a small frame can never expand past the manifest's chunk size.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from enum import Enum

from thinkmesh.protocol.rules.encoding import Hash32, PublicKey32, decode_record, encode_record
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.messages import KiB, MiB
from thinkmesh.protocol.rules.slashing import SlashReason

HEADER_BYTES = 8
FRAME_BYTES = 1 * MiB  # body frames of an upload; a model chunk frame is chunk_size + overhead
CONTROL_FRAME_BYTES = 64 * KiB  # requests, headers, receipts
MANIFEST_FRAME_BYTES = 4 * MiB + 64 * KiB
CHUNK_FRAME_OVERHEAD = 1 * KiB
ZLIB_LEVEL = 1


def model_handler(run_id: str) -> str:
    return f"thinkmesh/{run_id}/model/v1"


def contribute_handler(run_id: str) -> str:
    return f"thinkmesh/{run_id}/contribute/v1"


class RefusalReason(str, Enum):
    """Why the coordinator refused an upload or a model request (wire value: `.value`).

    Most refusals happen before any verdict (late, oversized, a duplicate). The three a verdict
    can also give are spelled by the verdict's own enum, `SlashReason`, so a receipt and a verdict
    never name one failure two ways; every other failed verdict is reported as `malformed`, the
    verdict named in the detail (`refusal_for_verdict`).
    """

    OK = "ok"
    LATE = "late"  # after the round's deadline, or no round open
    OVERSIZED = "oversized"  # over the size limit
    WRONG_ROUND = SlashReason.WRONG_ROUND.verdict_reason  # for a round other than the open one
    UNKNOWN_NODE = SlashReason.UNKNOWN_NODE.verdict_reason  # a node key the coordinator does not admit
    WRONG_PEER = "wrong-peer"  # sent from a libp2p peer other than the node key's PeerID
    BAD_SIGNATURE = SlashReason.BAD_SIGNATURE.verdict_reason
    MALFORMED = "malformed"  # not the canonical encoding, or a gradient that does not decode
    WRONG_MODEL = "wrong-model"  # computed on a model other than the announced one
    DUPLICATE = "duplicate"  # this node already contributed to this round
    UNKNOWN_MODEL = "unknown-model"  # a model hash the coordinator does not serve


def refusal_for_verdict(reason: str) -> RefusalReason:
    """The receipt's reason for a failed verdict: its own where the wire has one, else `malformed`."""
    try:
        return RefusalReason(reason)
    except ValueError:
        return RefusalReason.MALFORMED


class TransportError(ProtocolError):
    """A frame or record that breaks the transport rules, or a refusal received from the peer."""

    def __init__(self, message: str, reason: RefusalReason = RefusalReason.MALFORMED):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModelRequest:
    run_id: str
    model_hash: Hash32


@dataclass(frozen=True)
class ModelOffer:
    reason: str  # RefusalReason value; "ok" when a manifest follows
    manifest: bytes  # canonical ModelManifest message bytes, empty when refused


@dataclass(frozen=True)
class ModelChunk:
    index: int
    compressed: bool
    data: bytes


@dataclass(frozen=True)
class UploadHeader:
    run_id: str
    round_id: int
    node_key: PublicKey32
    total_bytes: int


@dataclass(frozen=True)
class Receipt:
    round_id: int
    reason: str  # RefusalReason value
    detail: str

    @property
    def accepted(self) -> bool:
        return self.reason == RefusalReason.OK.value


def refusal(round_id: int, reason: RefusalReason, detail: str) -> Receipt:
    return Receipt(round_id=round_id, reason=reason.value, detail=detail[:1000])


def parse_reason(value: str) -> RefusalReason:
    try:
        return RefusalReason(value)
    except ValueError:
        raise TransportError(f"unknown refusal reason {value!r}") from None


def pack_chunk(index: int, chunk: bytes) -> bytes:
    """A model chunk frame: zlib-compressed when that is smaller, else raw."""
    squeezed = zlib.compress(chunk, ZLIB_LEVEL)
    if len(squeezed) < len(chunk):
        return encode_record(ModelChunk(index=index, compressed=True, data=squeezed))
    return encode_record(ModelChunk(index=index, compressed=False, data=chunk))


def unpack_chunk(frame: bytes, chunk_size: int) -> tuple[int, bytes]:
    """(index, chunk bytes); decompression never produces more than `chunk_size` bytes."""
    record = decode_record(frame, ModelChunk, chunk_size + CHUNK_FRAME_OVERHEAD)
    if not record.compressed:
        return record.index, record.data
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(record.data, chunk_size)
    except zlib.error as exc:
        raise TransportError(f"model chunk {record.index}: bad zlib data ({exc})") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise TransportError(f"model chunk {record.index}: inflates past {chunk_size} bytes or is truncated")
    return record.index, data


async def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(len(payload).to_bytes(HEADER_BYTES, "big"))
    writer.write(payload)
    await writer.drain()


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes:
    """One frame of at most `limit` bytes; TransportError(OVERSIZED) from the header alone."""
    try:
        header = await reader.readexactly(HEADER_BYTES)
        length = int.from_bytes(header, "big")
        if length > limit:
            raise TransportError(f"frame of {length} bytes, over the limit of {limit}", RefusalReason.OVERSIZED)
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TransportError(f"stream ended after {len(exc.partial)} bytes of a frame") from exc


async def read_record(reader: asyncio.StreamReader, record_type: type, limit: int = CONTROL_FRAME_BYTES):
    return decode_record(await read_frame(reader, limit), record_type, limit)


async def write_record(writer: asyncio.StreamWriter, record) -> None:
    await write_frame(writer, encode_record(record))


def body_frames(data: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    return [data[i:i + frame_bytes] for i in range(0, len(data), frame_bytes)]


async def read_body(reader: asyncio.StreamReader, total_bytes: int, frame_bytes: int = FRAME_BYTES) -> bytes:
    """Exactly `total_bytes` in frames of at most `frame_bytes`; never reads more."""
    parts, received = [], 0
    while received < total_bytes:
        frame = await read_frame(reader, min(frame_bytes, total_bytes - received))
        if not frame:
            raise TransportError("empty body frame")
        parts.append(frame)
        received += len(frame)
    return b"".join(parts)
