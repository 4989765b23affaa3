"""The coordinator's two hivemind P2P stream handlers: model serving and contribution intake.

Both run on the event loop of the coordinator's main thread, on the P2P replica of its DHT's
daemon (so they answer at the coordinator's own PeerID). CPU work (decoding a gradient,
verification) goes to a worker thread; the round state changes only on the loop (see `intake.py`).

What a peer can make an upload cost is bounded at each step (`stream_guard.py` holds the limits):
a stream waits at most `header_timeout_s` for its first record and may be closed to make room
for a new one until then; the header is judged before any of the body is read (an unregistered
key waits at most for one shared, rate-limited registry read, then is refused); an admitted body
needs room in the `UploadBudget` (bodies in flight, by count and bytes), and must arrive frame by
frame within `frame_timeout_s` and whole before its deadline. Refusals are counted and logged
through a `RateLimitedLog`; nothing a peer sends is logged once per event without limit, and no
exception escapes a handler into hivemind's (whose loop would log each one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from thinkmesh.coordinator.work.intake import ContributionIntake, clip_text
from thinkmesh.coordinator.work.round_close import UploadLog
from thinkmesh.coordinator.work.stream_guard import (
    OpenStream,
    RateLimitedLog,
    StreamLimits,
    StreamTable,
    StreamTimeout,
    UploadBudget,
    guard_accept_errors,
    raise_open_file_limit,
    read_body_within,
)
from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.messages import ZERO_HASH, ModelManifest
from thinkmesh.protocol.p2p.transport import (
    CONTROL_FRAME_BYTES,
    ModelOffer,
    ModelRequest,
    Receipt,
    RefusalReason,
    TransportError,
    UploadHeader,
    contribute_handler,
    model_handler,
    pack_chunk,
    read_record,
    refusal,
    write_frame,
    write_record,
)

logger = logging.getLogger(__name__)
KEEP_VERSIONS = 2  # the head and its parent: a node syncing to the announced model mid-aggregation
REPLY_TIMEOUT_S = 5.0  # a receipt is a few hundred bytes: a peer that does not read it is dropped


@dataclass
class ServedModel:
    manifest: ModelManifest
    manifest_bytes: bytes
    chunks: tuple[bytes, ...]


@dataclass
class TransferCounters:
    model_bytes_served: int = 0
    models_served: int = 0
    upload_bytes_received: int = 0
    uploads: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)  # receipt reasons, and timeout / busy / evicted


class CoordinatorService:
    """Registers the handlers on `p2p` and serves whatever `publish` was last given."""

    def __init__(self, p2p, run_id: str, intake: ContributionIntake | None, limits: StreamLimits = StreamLimits()):
        self.p2p = p2p
        self.run_id = run_id
        self.intake = intake
        self.limits = limits
        self.models: dict[bytes, ServedModel] = {}
        self.pinned: dict[bytes, ServedModel] = {}  # an adapter round's frozen base: served for good
        self.head: bytes = ZERO_HASH
        self.counters = TransferCounters()
        self.on_accept = asyncio.Event()
        self.log = RateLimitedLog(logger)
        self.streams = StreamTable(limits.max_streams)
        largest = intake.max_bytes if intake is not None else 0
        self.budget = UploadBudget(limits.max_uploads, max(limits.max_upload_bytes, largest))
        self._registry_read: asyncio.Future | None = None
        self.uploads = UploadLog()  # who uploaded for which round lately: the round close rule's input

    async def start(self) -> None:
        """Installs the stream guards, then the handlers (hivemind starts its listener with the first)."""
        open_files = raise_open_file_limit()
        self.streams.max_streams = min(self.limits.max_streams, max(16, open_files // 4))
        guard_accept_errors(asyncio.get_running_loop(), self.log)
        await self._add_handlers()

    async def rebind(self, p2p) -> None:
        """Serves on `p2p` from now on: the replica of a restarted DHT process's new p2pd (the
        handlers died with the old daemon; what is published and the round's state are kept)."""
        self.p2p = p2p
        await self._add_handlers()

    async def _add_handlers(self) -> None:
        await self.p2p.add_binary_stream_handler(model_handler(self.run_id), self._serve_model)
        await self.p2p.add_binary_stream_handler(contribute_handler(self.run_id), self._receive_contribution)

    async def stop(self) -> None:
        for name in (model_handler(self.run_id), contribute_handler(self.run_id)):
            try:
                await self.p2p.remove_binary_stream_handler(name)
            except Exception:  # the daemon may already be gone at shutdown
                logger.debug("could not remove handler %s", name, exc_info=True)

    def publish(self, manifest: ModelManifest, chunks: tuple[bytes, ...]) -> None:
        """Serves this version from now on; keeps the previous one for nodes still syncing."""
        self.models.pop(manifest.model_hash, None)
        self.models[manifest.model_hash] = ServedModel(manifest, encode_message(manifest), chunks)
        self.head = manifest.model_hash
        while len(self.models) > KEEP_VERSIONS:
            del self.models[next(iter(self.models))]

    def pin(self, manifest: ModelManifest, chunks: tuple[bytes, ...]) -> None:
        """Serves this model by its hash for as long as the service runs (never the head, never
        evicted): the base of adapter rounds, which a node without it fetches once."""
        self.pinned[manifest.model_hash] = ServedModel(manifest, encode_message(manifest), chunks)

    # ---- shared pieces -------------------------------------------------------------------------
    def _count(self, reason: str) -> None:
        self.counters.by_reason[reason] = self.counters.by_reason.get(reason, 0) + 1

    def _open(self, writer, sender: str) -> OpenStream | None:
        stream = self.streams.open(writer)
        if stream is None:
            writer.close()
            self._count("busy")
            self.log(logging.WARNING, "busy", "stream from %s closed at once: %d streams open, none idle",
                     sender, len(self.streams))
        return stream

    async def _first_record(self, reader: asyncio.StreamReader, record_type: type):
        try:
            async with asyncio.timeout(self.limits.header_timeout_s):
                return await read_record(reader, record_type, CONTROL_FRAME_BYTES)
        except TimeoutError:
            raise StreamTimeout(f"no {record_type.__name__} within {self.limits.header_timeout_s:g}s") from None

    async def _reply(self, writer: asyncio.StreamWriter, receipt: Receipt) -> None:
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await write_record(writer, receipt)
        except (ConnectionError, RuntimeError, TimeoutError):
            pass

    # ---- model serving -------------------------------------------------------------------------
    async def _serve_model(self, stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = stream_info.peer_id.to_base58()
        stream = self._open(writer, peer)
        if stream is None:
            return
        try:
            request = await self._first_record(reader, ModelRequest)
            stream.idle = False
            wanted = self.head if request.model_hash == ZERO_HASH else request.model_hash
            served = self.models.get(wanted) or self.pinned.get(wanted) if request.run_id == self.run_id else None
            if served is None:
                await write_record(writer, ModelOffer(RefusalReason.UNKNOWN_MODEL.value, b""))
                return
            await write_record(writer, ModelOffer(RefusalReason.OK.value, served.manifest_bytes))
            async with asyncio.timeout(self.limits.frame_timeout_s):
                want = await read_record(reader, ModelRequest)  # the node says whether to send chunks
            if want.model_hash != served.manifest.model_hash:
                return
            for index, chunk in enumerate(served.chunks):
                frame = pack_chunk(index, chunk)
                async with asyncio.timeout(max(self.limits.frame_timeout_s, len(frame) / self.limits.min_body_rate)):
                    await write_frame(writer, frame)  # a reader that stops reading is dropped
                self.counters.model_bytes_served += len(frame)
            self.counters.models_served += 1
        except (ProtocolError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            if not stream.evicted:
                self.log(logging.INFO, "model-ended", "model request from %s ended: %s", peer, clip_text(str(exc)))
        except Exception:  # never into hivemind's handler, whose loop would report each one
            if self.log.admit("model-error") is not None:
                logger.exception("model request from %s failed", peer)
        finally:
            self.streams.close(stream)
            writer.close()

    # ---- contribution intake -------------------------------------------------------------------
    async def _receive_contribution(self, stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender = stream_info.peer_id.to_base58()
        stream = self._open(writer, sender)
        if stream is None:
            return
        header = None
        try:
            header = await self._first_record(reader, UploadHeader)
            stream.idle = False
            receipt = await self._judge(header, sender, reader)
            self.counters.uploads += 1
            self._count(receipt.reason)
            if receipt.accepted:
                logger.info("contribution from %s for round %d: %s (%s)", sender, header.round_id, receipt.reason, receipt.detail)
            else:
                self.log(logging.WARNING, receipt.reason, "contribution from %s for round %d: %s (%s)", sender,
                         header.round_id, receipt.reason, receipt.detail)
            await self._reply(writer, receipt)
            if receipt.accepted:
                self.on_accept.set()
        except ProtocolError as exc:  # a stream timeout, or a frame or record that breaks the transport rules
            if stream.evicted:
                self._count("evicted")
                return
            round_id = header.round_id if header is not None else 0
            reason = exc.reason if isinstance(exc, TransportError) else RefusalReason.MALFORMED
            code = "timeout" if isinstance(exc, StreamTimeout) else reason.value
            self._count(code)
            detail = self.intake.record_refusal(sender, round_id, code, str(exc)) if self.intake else clip_text(str(exc))
            self.log(logging.WARNING, code, "upload from %s refused: %s (%s)", sender, code, detail)
            await self._reply(writer, refusal(round_id, reason, detail))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.log(logging.INFO, "broke-off", "upload from %s broke off: %s", sender, clip_text(str(exc)))
        except Exception:  # never into hivemind's handler, whose loop would report each one
            if self.log.admit("upload-error") is not None:
                logger.exception("upload from %s failed", sender)
        finally:
            self.streams.close(stream)
            writer.close()
            if header is not None:
                self.uploads.ended(sender, header.round_id)

    async def _judge(self, header: UploadHeader, sender: str, reader: asyncio.StreamReader) -> Receipt:
        """The receipt of one upload whose header was read: header checks, then the body."""
        intake = self.intake
        wait = intake.registry_wait(header, sender)
        if wait is not None:
            await self._await_registry_read(header.node_key, wait)
        receipt = intake.check_header(header, sender, _now_ms())
        if receipt is not None:
            return receipt
        intake.start_upload(header)
        try:
            deadline_ms = intake.current.announcement.deadline_ms
            if not await self.budget.acquire(header.total_bytes, min(self.limits.slot_wait_s, _left_s(deadline_ms))):
                return intake.refuse(sender, header.round_id, RefusalReason.LATE,
                                     f"no upload slot free within {self.limits.slot_wait_s:g}s (coordinator busy)")
            try:
                loop = asyncio.get_running_loop()
                body_s = max(self.limits.header_timeout_s, header.total_bytes / self.limits.min_body_rate)
                deadline = loop.time() + min(body_s, _left_s(deadline_ms))  # past the round's deadline it is late anyway
                body = await read_body_within(reader, header.total_bytes, self.limits.frame_timeout_s, deadline)
                self.counters.upload_bytes_received += len(body)
                outcome = await self._decode(header, body)
                del body
                return intake.admit(header, sender, outcome, _now_ms())
            finally:
                await self.budget.release(header.total_bytes)
        finally:
            intake.end_upload(header)

    async def _decode(self, header: UploadHeader, body: bytes):
        """`intake.decode` in a worker thread; if this task is cancelled meanwhile, the outcome
        is discarded when it comes (a verdict is never left pending in the verifier)."""
        work = asyncio.ensure_future(asyncio.to_thread(self.intake.decode, header, body, _now_ms()))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._discard_outcome)
            raise

    def _discard_outcome(self, work: asyncio.Future) -> None:
        if not work.cancelled() and work.exception() is None:
            self.intake.discard(work.result())

    async def _await_registry_read(self, node_key: bytes, wait_s: float) -> None:
        """One registry read shared by every header waiting on it, started `wait_s` from now at
        the earliest (the verifier's rate limit), awaited at most `registry_wait_s`."""
        registry = self.intake.registry
        registry.note_registry_read_for(node_key)
        if self._registry_read is None or self._registry_read.done():
            self._registry_read = asyncio.ensure_future(self._read_registry(wait_s))
        try:
            await asyncio.wait_for(asyncio.shield(self._registry_read), self.limits.registry_wait_s)
        except asyncio.TimeoutError:
            self.log(logging.WARNING, "registry-slow", "registry read still running after %gs", self.limits.registry_wait_s)

    async def _read_registry(self, wait_s: float) -> None:
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        try:
            await asyncio.to_thread(self.intake.registry.refresh_registry)
        except Exception as exc:  # a chain error: the key stays unknown, the next read may work
            self.log(logging.WARNING, "registry-error", "registry read failed: %s", clip_text(str(exc)))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _left_s(deadline_ms: int) -> float:
    return max(0.0, deadline_ms / 1000 - time.time())
