"""The coordinator's two hivemind P2P stream handlers: model serving and contribution intake.

Both run on the event loop of the coordinator's main thread, on the P2P replica of its DHT's
daemon (so they answer at the coordinator's own PeerID). CPU work (decoding a gradient) goes to
a worker thread; the round state changes only on the loop (see `intake.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from thinkmesh.coordinator.intake import ContributionIntake
from thinkmesh.protocol.encoding import encode_message
from thinkmesh.protocol.errors import ProtocolError
from thinkmesh.protocol.messages import ZERO_HASH, ModelManifest
from thinkmesh.protocol.transport import (
    CONTROL_FRAME_BYTES,
    ModelOffer,
    ModelRequest,
    RefusalReason,
    TransportError,
    UploadHeader,
    contribute_handler,
    model_handler,
    pack_chunk,
    read_body,
    read_record,
    refusal,
    write_frame,
    write_record,
)

logger = logging.getLogger(__name__)
KEEP_VERSIONS = 2  # the head and its parent: a node syncing to the announced model mid-aggregation


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
    by_reason: dict[str, int] = field(default_factory=dict)


class CoordinatorService:
    """Registers the handlers on `p2p` and serves whatever `publish` was last given."""

    def __init__(self, p2p, run_id: str, intake: ContributionIntake):
        self.p2p = p2p
        self.run_id = run_id
        self.intake = intake
        self.models: dict[bytes, ServedModel] = {}
        self.head: bytes = ZERO_HASH
        self.counters = TransferCounters()
        self.on_accept = asyncio.Event()

    async def start(self) -> None:
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

    async def _serve_model(self, stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_record(reader, ModelRequest)
            wanted = self.head if request.model_hash == ZERO_HASH else request.model_hash
            served = self.models.get(wanted) if request.run_id == self.run_id else None
            if served is None:
                await write_record(writer, ModelOffer(RefusalReason.UNKNOWN_MODEL.value, b""))
                return
            await write_record(writer, ModelOffer(RefusalReason.OK.value, served.manifest_bytes))
            want = await read_record(reader, ModelRequest)  # the node says whether to send chunks
            if want.model_hash != served.manifest.model_hash:
                return
            for index, chunk in enumerate(served.chunks):
                frame = pack_chunk(index, chunk)
                await write_frame(writer, frame)
                self.counters.model_bytes_served += len(frame)
            self.counters.models_served += 1
        except (ProtocolError, ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.info("model request from %s ended: %s", stream_info.peer_id, exc)
        finally:
            writer.close()

    async def _receive_contribution(self, stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender = stream_info.peer_id.to_base58()
        header = None
        try:
            header = await read_record(reader, UploadHeader, CONTROL_FRAME_BYTES)
            receipt = self.intake.check_header(header, sender, _now_ms())
            if receipt is None:
                body = await read_body(reader, header.total_bytes)
                self.counters.upload_bytes_received += len(body)
                outcome = await asyncio.to_thread(self.intake.decode, header, body, _now_ms())
                receipt = self.intake.admit(header, sender, outcome, _now_ms())
            self.counters.uploads += 1
            self.counters.by_reason[receipt.reason] = self.counters.by_reason.get(receipt.reason, 0) + 1
            log = logger.info if receipt.accepted else logger.warning
            log("contribution from %s for round %d: %s (%s)", sender, header.round_id, receipt.reason, receipt.detail)
            await write_record(writer, receipt)
            if receipt.accepted:
                self.on_accept.set()
        except ProtocolError as exc:
            round_id = header.round_id if header is not None else 0
            reason = exc.reason if isinstance(exc, TransportError) else RefusalReason.MALFORMED
            self.counters.by_reason[reason.value] = self.counters.by_reason.get(reason.value, 0) + 1
            logger.warning("upload from %s refused: %s (%s)", sender, reason.value, exc)
            try:
                await write_record(writer, refusal(round_id, reason, str(exc)))
            except (ConnectionError, RuntimeError):
                pass
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.info("upload from %s broke off: %s", sender, exc)
        finally:
            writer.close()


def _now_ms() -> int:
    return int(time.time() * 1000)
