"""The rewards dashboard: a read-only aiohttp app over one ledger contract.

It serves the page (static files shipped in the package, Chart.js included, so it works offline)
and a JSON API under /api/ with the same data the page draws. Snapshots are read from the chain
at most once per `refresh_s`, whatever the number of open pages, and a chain that stops answering
turns into a 503 with the reason rather than a hung request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from thinkmesh.coordinator.ledger_snapshot import read_snapshot
from thinkmesh.coordinator.ledger_view import LedgerSummary, build_summary
from thinkmesh.protocol.errors import ProtocolError

STATIC_DIR = Path(__file__).with_name("static")
EVIDENCE_NAME = re.compile(r"^0x[0-9a-f]{64}$")
log = logging.getLogger(__name__)


@dataclass
class _Cache:
    summary: LedgerSummary | None = None
    read_at: float = 0.0
    error: str | None = None


class Dashboard:
    """Holds one chain client and a cached summary; `app()` builds the aiohttp application."""

    def __init__(self, client, evidence_dir: Path | None = None, refresh_s: float = 2.0) -> None:
        self._client = client
        self._evidence_dir = evidence_dir
        self._refresh_s = refresh_s
        self._cache = _Cache()
        self._lock = asyncio.Lock()

    async def summary(self) -> LedgerSummary:
        async with self._lock:
            if self._cache.summary is None or time.monotonic() - self._cache.read_at > self._refresh_s:
                try:
                    snapshot = await asyncio.wait_for(asyncio.to_thread(read_snapshot, self._client), timeout=20)
                    self._cache = _Cache(build_summary(snapshot), time.monotonic())
                except (ProtocolError, asyncio.TimeoutError) as exc:
                    reason = str(exc) or "the chain did not answer within 20 s"
                    log.warning("dashboard: cannot read the chain: %s", reason)
                    raise web.HTTPServiceUnavailable(text=f"cannot read the chain: {reason}") from exc
            return self._cache.summary

    async def _json(self, request: web.Request) -> web.Response:
        summary = (await self.summary()).to_json()
        part = request.match_info.get("part", "summary")
        if part != "summary" and part not in summary:
            raise web.HTTPNotFound(text=f"no /api/{part}; try /api/summary, /api/nodes, /api/rounds, /api/slashes, /api/strategies")
        return web.json_response(summary if part == "summary" else summary[part])

    async def _evidence(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["hash"].lower()
        if not EVIDENCE_NAME.match(name):
            raise web.HTTPBadRequest(text="evidence is named by its 0x-prefixed keccak256 hash")
        if self._evidence_dir is None:
            raise web.HTTPNotFound(text="this dashboard was started without --evidence-dir")
        for candidate in (self._evidence_dir / f"{name}.json", self._evidence_dir / name):
            if candidate.is_file():
                return web.FileResponse(candidate)
        raise web.HTTPNotFound(text=f"no evidence file {name} in {self._evidence_dir}")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", lambda _: web.FileResponse(STATIC_DIR / "index.html"))
        app.router.add_static("/static/", STATIC_DIR)
        app.router.add_get("/api/{part}", self._json)
        app.router.add_get("/api/", self._json)
        app.router.add_get("/evidence/{hash}", self._evidence)
        return app


async def serve_dashboard(client, host: str, port: int, evidence_dir: Path | None, stop: asyncio.Event) -> None:
    runner = web.AppRunner(Dashboard(client, evidence_dir).app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"dashboard on http://{host}:{port}/ (ledger {client.deployment.ledger})", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
