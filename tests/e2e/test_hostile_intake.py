"""End to end on loopback, real p2pd daemons: honest uploads get through a hostile flood.

The coordinator side runs in its own process (this file run as a module, `serve`): the real
`CoordinatorService`, intake and verifier, wired by the daemon's own `wire_intake`, on the
verification world's model with a registry of four keys, serving one open round on its p2pd.
The test process then starts eight p2pd peers and, all at once:

- 30 uploads from 5 unregistered keys, each announcing a size the round allows and streaming junk;
- 10 uploads from those keys announcing 49 MiB and streaming 2 MiB of junk;
- 10 streams that open and never send a header;
- a registered key that announces its contribution, sends 60% of it and holds;
- and the three registered, honest nodes, uploading with the node's own client
  (`node.work.p2p_client.upload_contribution`).

Every honest upload must be accepted before the round's deadline; every hostile stream refused
or closed; the coordinator's resident memory may grow by at most `RSS_GROWTH_BOUND` over its
ready state and its evidence directory hold at most one verdict per honest node (each within the
round's byte bound); its log and refusal record stay bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]
RUN, ROUND = "verify-test", 2  # the verification world's run and round
DEADLINE_S = 60.0  # the round's deadline, from the coordinator's ready state
HOLDER_SEED = b"\x77" * 32  # a registered key that holds its upload half-sent
LIMITS = dict(header_timeout_s=3.0, frame_timeout_s=3.0)  # the defaults' 10/20 s, shortened to keep the test short
RSS_GROWTH_BOUND = 96 * 1024 * 1024  # bytes: the coordinator's resident memory over its ready state
EVIDENCE_SLACK = 64 * 1024  # bytes per honest verdict above the round's byte bound


# ---- the coordinator side (a separate process) ------------------------------------------------------


def _rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _unique_bytes(directory: Path) -> int:
    """Bytes on disk under `directory`, each hard-linked file counted once."""
    seen, total = set(), 0
    for path in directory.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


class _CountRecords(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        self.count += 1


async def serve(directory: Path) -> None:
    from hivemind.p2p import P2P

    from tests.verification_world import world
    from thinkmesh.coordinator.config import IntakeConfig
    from thinkmesh.coordinator.work.daemon import wire_intake
    from thinkmesh.coordinator.work.p2p_service import CoordinatorService
    from thinkmesh.coordinator.work.stream_guard import StreamLimits
    from thinkmesh.coordinator.work.verifier import ContributionArchive, ContributionVerifier
    from thinkmesh.protocol.rules.audit import AuditPolicy
    from thinkmesh.protocol.rules.identity import NodeIdentity
    from thinkmesh.protocol.rules.messages import encode_message, sign_message

    records = _CountRecords()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    w = world()
    keys = (*w.nodes, NodeIdentity.from_seed(HOLDER_SEED))
    registry = {key.public_key: f"0x{i + 1:040x}" for i, key in enumerate(keys)}
    verifier = ContributionVerifier(
        model=w.model, tokenizer=w.tokenizer, policy=AuditPolicy(), coordinator_seed=b"\xc0" * 32,
        evidence_dir=directory / "evidence", archive=ContributionArchive(directory / "contributions"),
        registry=lambda: dict(registry),
    )
    intake = wire_intake(IntakeConfig(), chain_id=31337, run_id=RUN, shapes=w.shapes, verifier=verifier)
    key_file = directory / "coordinator.key"
    key_file.write_bytes(w.coordinator.libp2p_private_key_bytes())
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(key_file),
                           check_if_identity_free=False)
    service = CoordinatorService(p2p, RUN, intake, StreamLimits(**LIMITS))
    await service.start()
    await asyncio.to_thread(verifier.open_round, ROUND)
    announcement = sign_message(dataclasses.replace(w.round, deadline_ms=int((time.time() + DEADLINE_S) * 1000)),
                                w.coordinator)
    intake.open(announcement)
    for i, contribution in enumerate(w.honest):
        (directory / f"honest-{i}.bin").write_bytes(encode_message(contribution))
    baseline = _rss()
    (directory / "coordinator.json").write_text(json.dumps({
        "maddrs": [str(m) for m in await p2p.get_visible_maddrs()], "peer_id": w.coordinator.peer_id,
        "deadline_ms": announcement.deadline_ms, "byte_bound": intake.current.byte_bound,
    }))
    print("ready", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the test writes a line when it is done
    peak, records_at_ready = baseline, records.count
    while not stop.is_set() and time.time() * 1000 < announcement.deadline_ms:
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            peak = max(peak, _rss())
    current = intake.current
    (directory / "result.json").write_text(json.dumps({
        "accepted": sorted(c.peer_id for c in current.accepted.values()),
        "rejected": sorted(c.peer_id for c in current.rejected.values()),
        "refusals": current.refusals.as_record(), "refusal_record_bytes": len(json.dumps(current.refusals.as_record())),
        "by_reason": service.counters.by_reason, "upload_bytes_received": service.counters.upload_bytes_received,
        "streams_open": len(service.streams), "streams_evicted": service.streams.evicted,
        "budget": [service.budget.uploads, service.budget.bytes], "in_flight": len(current.in_flight),
        "pending": len(verifier.pending), "baseline_rss": baseline, "peak_rss": max(peak, _rss()),
        "evidence_bytes": _unique_bytes(directory / "evidence"),
        "evidence_files": sorted(p.name for p in (directory / "evidence").rglob("*") if p.is_file()),
        "log_records": records.count - records_at_ready, "log_suppressed": service.log.suppressed_total,
    }))
    print("done", flush=True)
    await service.stop()
    await p2p.shutdown()


# ---- the peers (this process) -------------------------------------------------------------------------


async def _peer(root: Path, identity, maddr: str):
    from hivemind.p2p import P2P

    key_file = root / f"peer-{identity.peer_id}.key"
    key_file.write_bytes(identity.libp2p_private_key_bytes())
    return await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=[maddr],
                            identity_path=str(key_file), check_if_identity_free=False)


async def _hostile_upload(p2p, identity, coordinator: str, total_bytes: int, send_bytes: int,
                          hold: bool = False) -> str:
    """Announces `total_bytes`, sends `send_bytes` of junk (or of nothing when 0), then waits for
    the receipt; says how the stream ended."""
    from hivemind.p2p import PeerID

    from thinkmesh.protocol.rules.errors import ProtocolError
    from thinkmesh.protocol.p2p.transport import FRAME_BYTES, Receipt, UploadHeader, contribute_handler, read_record
    from thinkmesh.protocol.p2p.transport import write_frame, write_record

    _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(coordinator), contribute_handler(RUN))
    try:
        if total_bytes:
            await write_record(writer, UploadHeader(RUN, ROUND, identity.public_key, total_bytes))
            try:
                sent = 0
                while sent < send_bytes:
                    chunk = min(FRAME_BYTES, send_bytes - sent)
                    await write_frame(writer, b"\xa5" * chunk)
                    sent += chunk
            except ConnectionError:
                pass  # refused from the header: the receipt says why
        elif not hold:  # a stream that never sends a header: wait for the coordinator to close it
            await asyncio.wait_for(reader.read(), 30)
            return "closed"
        receipt = await asyncio.wait_for(read_record(reader, Receipt), 30)
        return receipt.reason
    except (ConnectionError, asyncio.IncompleteReadError, ProtocolError) as exc:
        return f"broken: {type(exc).__name__}"
    finally:
        writer.close()


async def _holder_upload(p2p, identity, coordinator: str, body: bytes) -> str:
    """A registered key's upload of 60% of a real body, then silence."""
    from hivemind.p2p import PeerID

    from thinkmesh.protocol.p2p.transport import Receipt, UploadHeader, contribute_handler, read_record, write_record

    _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(coordinator), contribute_handler(RUN))
    try:
        await write_record(writer, UploadHeader(RUN, ROUND, identity.public_key, len(body)))
        part = body[: int(len(body) * 0.6)]
        writer.write(len(body).to_bytes(8, "big") + part)  # one frame's header, most of its bytes
        await writer.drain()
        return (await asyncio.wait_for(read_record(reader, Receipt), 30)).reason
    finally:
        writer.close()


async def _scenario(root: Path, info: dict) -> dict:
    from thinkmesh.node.work.p2p_client import upload_contribution
    from thinkmesh.protocol.rules.encoding import decode_message
    from thinkmesh.protocol.rules.identity import NodeIdentity
    from thinkmesh.protocol.rules.messages import Contribution, MiB

    maddr = next(m for m in info["maddrs"] if "/tcp/" in m)
    maddr = maddr if "/p2p/" in maddr else f"{maddr}/p2p/{info['peer_id']}"
    coordinator = info["peer_id"]
    honest_keys = [NodeIdentity.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    attacker_keys = [NodeIdentity.generate() for _ in range(5)]
    holder_key = NodeIdentity.from_seed(HOLDER_SEED)
    peers = await asyncio.gather(*(_peer(root, k, maddr) for k in (*honest_keys, *attacker_keys, holder_key)))
    honest_p2p, attacker_p2p, holder_p2p = peers[:3], peers[3:8], peers[8]
    try:
        contributions = [decode_message((root / f"honest-{i}.bin").read_bytes(), Contribution) for i in range(3)]
        plausible = info["byte_bound"] // 2
        hostile = []
        for p2p, key in zip(attacker_p2p, attacker_keys):
            hostile += [("unregistered", _hostile_upload(p2p, key, coordinator, plausible, plausible)) for _ in range(6)]
            hostile += [("oversized", _hostile_upload(p2p, key, coordinator, 49 * MiB, 2 * MiB)) for _ in range(2)]
            hostile += [("idle", _hostile_upload(p2p, key, coordinator, 0, 0)) for _ in range(2)]
        body = (root / "honest-0.bin").read_bytes()  # any body of the right size: it is never finished
        hostile.append(("holder", _holder_upload(holder_p2p, holder_key, coordinator, body)))
        kinds = [kind for kind, _ in hostile]
        started = time.monotonic()
        attack = asyncio.gather(*(task for _, task in hostile), return_exceptions=True)

        async def honest(p2p, contribution):
            receipt, _ = await upload_contribution(p2p, coordinator, contribution, timeout=DEADLINE_S)
            return receipt, time.time() * 1000, time.monotonic() - started

        receipts = await asyncio.gather(*(honest(p, c) for p, c in zip(honest_p2p, contributions)))
        outcomes = await asyncio.wait_for(attack, 60)
        return {"honest": receipts, "hostile": list(zip(kinds, outcomes)), "seconds": time.monotonic() - started,
                "honest_peers": sorted(k.peer_id for k in honest_keys)}
    finally:
        await asyncio.gather(*(p.shutdown() for p in peers), return_exceptions=True)


def _read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for the coordinator side to be {what}")
    return proc.stdout.readline().strip()


def test_honest_uploads_are_accepted_under_a_hostile_flood_with_bounded_memory_and_disk(tmp_path):
    log = open(tmp_path / "coordinator.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.test_hostile_intake", str(tmp_path)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert _read_line(proc, 90, "ready") == "ready", (tmp_path / "coordinator.log").read_text()[-3000:]
        info = json.loads((tmp_path / "coordinator.json").read_text())
        outcome = asyncio.run(_scenario(tmp_path, info))
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert _read_line(proc, 30, "done") == "done"
        result = json.loads((tmp_path / "result.json").read_text())
        proc.wait(timeout=30)
    except Exception:
        print((tmp_path / "coordinator.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()

    print(json.dumps({"seconds": round(outcome["seconds"], 1),
                      "honest_s": [round(s, 2) for _, _, s in outcome["honest"]],
                      **{k: result[k] for k in ("by_reason", "baseline_rss", "peak_rss", "evidence_bytes",
                                                "log_records", "log_suppressed", "refusal_record_bytes")}}))
    # Every honest upload accepted, before the deadline.
    for receipt, arrived_ms, _ in outcome["honest"]:
        assert receipt.accepted, receipt
        assert arrived_ms < info["deadline_ms"]
    assert result["accepted"] == outcome["honest_peers"] and result["rejected"] == []
    # Every hostile stream refused for its own reason, or closed (the coordinator's count is exact;
    # a peer still writing when its stream is closed may see a reset instead of the receipt).
    assert result["by_reason"] == {"ok": 3, "unknown-node": 30, "oversized": 10, "timeout": 11}, result["by_reason"]
    expected = {"unregistered": {"unknown-node"}, "oversized": {"oversized"}, "idle": {"closed"}, "holder": {"late"}}
    for kind, ended in outcome["hostile"]:
        assert ended in expected[kind] or (kind != "holder" and str(ended).startswith("broken")), (kind, ended)
    assert result["upload_bytes_received"] == sum(len((tmp_path / f"honest-{i}.bin").read_bytes()) for i in range(3))
    # Nothing of the flood stays: no streams, budget, in-flight uploads or pending verdicts.
    assert result["streams_open"] == 0 and result["budget"] == [0, 0]
    assert result["in_flight"] == 0 and result["pending"] == 0
    # Bounded memory, disk and logs.
    assert result["peak_rss"] - result["baseline_rss"] < RSS_GROWTH_BOUND, result
    assert result["evidence_bytes"] <= 3 * (info["byte_bound"] + EVIDENCE_SLACK), result
    assert result["refusal_record_bytes"] < 8 * 1024
    assert result["log_records"] < 200, result
    assert outcome["seconds"] < DEADLINE_S


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
