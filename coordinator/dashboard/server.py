"""The rewards dashboard: a read-only aiohttp app over one ledger contract.

It serves the page (static files shipped in the package, Chart.js included, so it works offline)
and a JSON API under /api/ with the same data the page draws. Snapshots are read from the chain
at most once per `refresh_s`, whatever the number of open pages, and a chain that stops answering
turns into a 503 with the reason rather than a hung request.

Serving nodes are the one thing not read from the chain: with a `ServerLookup` (`--find-servers`),
each refresh also looks the chain's model versions up in the DHT (`server_lookup.py`); a lookup
that fails leaves them unknown, with the reason, and never fails the page.

`/evidence/0x<keccak256>` serves the evidence file a slash on chain cites, from the coordinator's
evidence directory (`--evidence-dir`): found through the slash's round and node (the coordinator
files it as `round-NNNNNN/<node key hex>.evidence`), served only when its bytes hash to the cited
value and only from inside that directory, read-only, as a download.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from thinkmesh.coordinator.dashboard.ledger_snapshot import read_snapshot
from thinkmesh.coordinator.dashboard.ledger_view import SERVING_UNKNOWN, LedgerSnapshot, LedgerSummary, build_summary
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.hashing import keccak_256
from thinkmesh.coordinator.dashboard.server_lookup import JoiningLookup, ServerLookup, UnstartedLookup
from thinkmesh.coordinator.work.stream_guard import RateLimitedLog

STATIC_DIR = Path(__file__).with_name("static")
EVIDENCE_NAME = re.compile(r"^0x[0-9a-f]{64}$")
log = logging.getLogger(__name__)
JOIN_WAIT_S = 120  # on the way out, for a DHT join still under way (its process must not outlive us)


HASH_CHUNK = 1 << 20


@dataclass
class _Cache:
    summary: LedgerSummary | None = None
    read_at: float = 0.0
    error: str | None = None
    snapshot: LedgerSnapshot | None = None


class EvidenceFiles:
    """The evidence files under `root`, found by the keccak256 that the chain cites. Read-only;
    paths come from the chain's record (a round id, a node key) or from listing a round's directory,
    never from the request, and a path that resolves outside `root` is never opened. Hashes are
    cached per (path, size, mtime); thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._hashes: dict[tuple[str, int, int], bytes] = {}
        self._lock = threading.Lock()

    def find(self, digest: bytes, citations: Iterable[tuple[int, bytes | None]]) -> Path | None:
        """The file whose bytes hash to `digest`, among those filed for the citing (round, node key)s."""
        for path in self._candidates(digest, citations):
            if self._inside(path) and self._digest(path) == digest:
                return path
        return None

    def _candidates(self, digest: bytes, citations: Iterable[tuple[int, bytes | None]]) -> Iterable[Path]:
        name = "0x" + digest.hex()
        yield from (self.root / name, self.root / f"{name}.evidence")  # a flat directory named by hash
        for round_id, node_key in citations:
            directory = self.root / f"round-{round_id:06d}"
            if node_key is not None:
                yield directory / f"{node_key.hex()}.evidence"
            if directory.is_dir():  # the contribution-hash names (a node judged twice keeps both)
                yield from sorted(directory.glob("*.evidence"))

    def _inside(self, path: Path) -> bool:
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        return resolved.is_file() and resolved.is_relative_to(self.root)

    def _digest(self, path: Path) -> bytes | None:
        try:
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
            with self._lock:
                if key in self._hashes:
                    return self._hashes[key]
            hasher = keccak_256()
            with open(path, "rb") as handle:
                while chunk := handle.read(HASH_CHUNK):
                    hasher.update(chunk)
        except OSError:
            return None
        with self._lock:
            self._hashes[key] = hasher.digest()
        return self._hashes[key]


class Dashboard:
    """Holds one chain client and a cached summary; `app()` builds the aiohttp application."""

    def __init__(self, client, evidence_dir: Path | None = None, refresh_s: float = 2.0,
                 servers: ServerLookup | UnstartedLookup | JoiningLookup | None = None) -> None:
        self._client = client
        self.servers = servers
        self._evidence_dir = evidence_dir
        self._evidence_files = EvidenceFiles(evidence_dir) if evidence_dir is not None else None
        self._refresh_s = refresh_s
        self._cache = _Cache()
        self._lock = asyncio.Lock()
        self._warn = RateLimitedLog(log, interval_s=60.0, burst=2)  # a chain or DHT that stays away: not a record per refresh

    async def summary(self) -> LedgerSummary:
        return (await self._read())[0]

    async def _read(self) -> tuple[LedgerSummary, LedgerSnapshot]:
        async with self._lock:
            if self._cache.summary is None or time.monotonic() - self._cache.read_at > self._refresh_s:
                try:
                    snapshot = await asyncio.wait_for(asyncio.to_thread(read_snapshot, self._client), timeout=20)
                    found, serving = await self._find_servers(snapshot)
                    self._cache = _Cache(build_summary(snapshot, found, serving), time.monotonic(), snapshot=snapshot)
                except (ProtocolError, asyncio.TimeoutError) as exc:
                    reason = str(exc) or "the chain did not answer within 20 s"
                    self._warn(logging.WARNING, "chain", "dashboard: cannot read the chain: %s", reason)
                    raise web.HTTPServiceUnavailable(text=f"cannot read the chain: {reason}") from exc
            return self._cache.summary, self._cache.snapshot

    async def _find_servers(self, snapshot: LedgerSnapshot) -> tuple[dict | None, str]:
        """The DHT's serve records of the snapshot's model versions, and how they were found."""
        servers = self.servers
        if servers is None:
            return None, SERVING_UNKNOWN
        if isinstance(servers, JoiningLookup):  # not a failure: the page says so, nothing to log
            return None, servers.description
        try:
            return await servers.find(r.model_hash for r in snapshot.rounds), servers.description
        except Exception as exc:  # the DHT is best effort: the chain's figures are shown without it
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._warn(logging.WARNING, "dht", "dashboard: cannot look serving nodes up in the DHT: %s", reason)
            return None, f"unknown: the DHT lookup failed ({reason})"

    async def _json(self, request: web.Request) -> web.Response:
        summary = (await self.summary()).to_json()
        part = request.match_info.get("part", "summary")
        if part != "summary" and part not in summary:
            raise web.HTTPNotFound(text=f"no /api/{part}; try /api/summary, /api/nodes, /api/rounds, /api/versions, "
                                        "/api/slashes, /api/strategies")
        return web.json_response(summary if part == "summary" else summary[part])

    async def _evidence(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["hash"].lower()
        if not EVIDENCE_NAME.match(name):
            raise web.HTTPBadRequest(text="evidence is named by its 0x-prefixed keccak256 hash (64 hex digits)")
        if self._evidence_files is None:
            raise web.HTTPNotFound(text="this dashboard was started without --evidence-dir")
        digest = bytes.fromhex(name[2:])
        _, snapshot = await self._read()
        keys = {n.address: n.ed25519_key for n in snapshot.nodes}
        citations = [(s.round_id, keys.get(s.node)) for s in snapshot.slashes if s.evidence_hash == digest]
        if not citations:
            raise web.HTTPNotFound(text=f"no slash on the ledger cites evidence {name}")
        path = await asyncio.to_thread(self._evidence_files.find, digest, citations)
        if path is None:
            rounds = sorted({round_id for round_id, _ in citations})
            raise web.HTTPNotFound(text=f"expected a file hashing to {name} for round(s) {rounds} under "
                                        f"{self._evidence_dir}; none there does")
        return web.FileResponse(path, headers={
            "Content-Type": "application/octet-stream", "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'attachment; filename="{name}.evidence"',
            "Cache-Control": "public, max-age=31536000, immutable",  # named by its hash: it never changes
        })

    async def _index(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC_DIR)
        app.router.add_get("/api/{part}", self._json)
        app.router.add_get("/api/", self._json)
        app.router.add_get("/evidence/{hash}", self._evidence)
        return app


async def serve_dashboard(client, host: str, port: int, evidence_dir: Path | None, stop: asyncio.Event,
                          find_servers: Callable[[], ServerLookup | UnstartedLookup] | None = None) -> None:
    """Serves until `stop`. `find_servers` starts the DHT lookup in a thread once the page is
    listening (joining the DHT takes seconds; meanwhile the page says so), and the lookup it
    returns is shut down on the way out, even if it finished joining only after `stop`."""
    dashboard = Dashboard(client, evidence_dir, servers=JoiningLookup() if find_servers else None)
    runner = web.AppRunner(dashboard.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"dashboard on http://{host}:{port}/ (ledger {client.deployment.ledger})", flush=True)
    joined: Future | None = None
    if find_servers is not None:
        joined = Future()
        joined.add_done_callback(lambda done: setattr(dashboard, "servers", done.result()))
        threading.Thread(target=lambda: joined.set_result(find_servers()), name="dht-join", daemon=True).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if joined is not None:
            lookup = await asyncio.to_thread(joined.result, JOIN_WAIT_S)
            lookup.shutdown()
