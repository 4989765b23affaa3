"""The node's side of the two stream protocols: fetch a model, upload a contribution.

Everything received is checked before it is used: the manifest must be signed by the
coordinator key the node was configured with and hash to its content, each chunk must match its
hash as it arrives, and the tensors are built only when every chunk checked (`load_state_dict`).

A coordinator that p2pd cannot dial raises `CoordinatorUnreachable`; `rejoin_coordinator` (run in
the DHT process) finds a restarted coordinator again at its bootstrap multiaddrs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from thinkmesh.protocol.rules.encoding import decode_message, encode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.messages import ZERO_HASH, Contribution, ModelManifest, verify_message
from thinkmesh.protocol.rules.model_manifest import check_chunk, check_manifest
from thinkmesh.protocol.p2p.transport import (
    CHUNK_FRAME_OVERHEAD,
    MANIFEST_FRAME_BYTES,
    ModelOffer,
    ModelRequest,
    Receipt,
    TransportError,
    UploadHeader,
    body_frames,
    contribute_handler,
    model_handler,
    parse_reason,
    read_frame,
    read_record,
    unpack_chunk,
    write_frame,
    write_record,
)


class CoordinatorUnreachable(ConnectionError):
    """p2pd could not open a stream to the coordinator: it is down, restarting, or moved."""


@dataclass(frozen=True)
class FetchedModel:
    manifest: ModelManifest
    chunks: tuple[bytes, ...]
    wire_bytes: int  # bytes received for the chunks (after zlib)


def _peer(peer_id: str):
    from hivemind.p2p import PeerID

    return PeerID.from_base58(peer_id)


async def _open_stream(p2p, peer_id: str, handler: str):
    from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError

    try:
        return await p2p.call_binary_stream_handler(_peer(peer_id), handler)
    except P2PDaemonError as exc:
        raise CoordinatorUnreachable(f"cannot reach the coordinator {peer_id}: {exc}") from exc


async def rejoin_coordinator(coordinator_peer: str, maddrs: tuple[str, ...], _dht, node) -> bool:
    """Puts the coordinator back in this node's DHT routing table; True when it is there.

    Runs in the DHT process (`DHT.run_coroutine(partial(rejoin_coordinator, peer, maddrs))`).
    While the coordinator is down, the DHT drops it from the routing table after one unanswered
    request and blacklists it, and a restarted coordinator's DHT starts with no peers: without
    this, a node neither reads the new announcements nor counts among the coordinator's peers.
    Nothing is sent while the coordinator is in the table. Otherwise p2pd is told the bootstrap
    multiaddrs again (the peerstore's may have expired) and the coordinator is pinged: an answer
    adds each side to the other's routing table.
    """
    from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError
    from hivemind.utils.multiaddr import Multiaddr

    peer = _peer(coordinator_peer)
    if node.protocol.routing_table.get(peer_id=peer) is not None and peer not in node.blacklist:
        return True
    if peer in node.blacklist:
        node.blacklist.register_success(peer)  # lift the ban, else gets skip it even once it answers
    own = [m for m in maddrs if m.endswith(f"/p2p/{coordinator_peer}")] or list(maddrs)
    addrs = [Multiaddr(m.split("/p2p/")[0]) for m in own]
    try:
        await node.p2p._client.connect(peer, addrs)  # hivemind 1.1 has no public connect
    except (P2PDaemonError, asyncio.TimeoutError, OSError):
        return False
    return await node.protocol.call_ping(peer) is not None


async def fetch_model(
    p2p, coordinator_peer: str, coordinator_key: bytes, run_id: str, model_hash: bytes = ZERO_HASH,
    *, have_hash: bytes | None = None, timeout: float = 120.0,
) -> ModelManifest | FetchedModel:
    """The coordinator's model `model_hash` (ZERO_HASH: its head).

    Returns just the manifest when its hash equals `have_hash` (nothing else is transferred),
    else the manifest with every chunk checked. Raises ProtocolError on any mismatch.
    """
    return await asyncio.wait_for(
        _fetch(p2p, coordinator_peer, coordinator_key, run_id, model_hash, have_hash), timeout
    )


async def _fetch(p2p, coordinator_peer, coordinator_key, run_id, model_hash, have_hash):
    _info, reader, writer = await _open_stream(p2p, coordinator_peer, model_handler(run_id))
    try:
        await write_record(writer, ModelRequest(run_id=run_id, model_hash=model_hash))
        offer = await read_record(reader, ModelOffer, MANIFEST_FRAME_BYTES)
        reason = parse_reason(offer.reason)
        if offer.reason != "ok":
            raise TransportError(f"coordinator refused model 0x{model_hash.hex()[:16]}: {offer.reason}", reason)
        manifest = decode_message(offer.manifest, ModelManifest)
        verify_message(manifest, coordinator_key)
        check_manifest(manifest)
        if model_hash != ZERO_HASH and manifest.model_hash != model_hash:
            raise TransportError(f"asked for model 0x{model_hash.hex()[:16]}, got 0x{manifest.model_hash.hex()[:16]}")
        if have_hash is not None and manifest.model_hash == have_hash:
            await write_record(writer, ModelRequest(run_id=run_id, model_hash=ZERO_HASH))  # "no chunks"
            return manifest
        await write_record(writer, ModelRequest(run_id=run_id, model_hash=manifest.model_hash))
        chunks, wire = [], 0
        for expected_index in range(len(manifest.chunk_hashes)):
            frame = await read_frame(reader, manifest.chunk_size + CHUNK_FRAME_OVERHEAD)
            wire += len(frame)
            index, chunk = unpack_chunk(frame, manifest.chunk_size)
            if index != expected_index:
                raise TransportError(f"expected model chunk {expected_index}, got {index}")
            check_chunk(manifest, index, chunk)
            chunks.append(chunk)
        return FetchedModel(manifest, tuple(chunks), wire)
    finally:
        writer.close()


async def upload_contribution(
    p2p, coordinator_peer: str, contribution: Contribution, *, timeout: float = 120.0
) -> tuple[Receipt, int]:
    """Streams a signed contribution; returns the coordinator's receipt and the bytes sent."""
    body = encode_message(contribution)

    async def send() -> Receipt:
        _info, reader, writer = await _open_stream(p2p, coordinator_peer, contribute_handler(contribution.run_id))
        try:
            header = UploadHeader(run_id=contribution.run_id, round_id=contribution.round_id,
                                  node_key=contribution.node_key, total_bytes=len(body))
            await write_record(writer, header)
            try:
                for frame in body_frames(body):
                    await write_frame(writer, frame)
            except ConnectionError:
                pass  # refused from the header: the receipt below says why
            receipt = await read_record(reader, Receipt)
            parse_reason(receipt.reason)
            return receipt
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(send(), timeout), len(body)
    except (ProtocolError, CoordinatorUnreachable):
        raise
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise TransportError(f"upload to {coordinator_peer} broke off: {exc}") from exc
