"""Observability for a long-running role: `/status` (JSON), `/metrics` (Prometheus text
exposition 0.0.4) and structured (JSON lines) logs.

Shared by the node and the coordinator daemons, which may not import each other; it holds no
role logic: each role passes two callables, one returning its status document and one its
numeric gauges. The server runs on the caller's event loop (aiohttp) and binds where it is told
(127.0.0.1 by default); port 0 picks a free port, reported by `start()`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_:]")


def render_prometheus(prefix: str, gauges: Mapping[str, float], labels: Mapping[str, str] | None = None) -> str:
    """Gauges as Prometheus text: `prefix_name{labels} value`, one `# TYPE` line each."""
    label_text = ""
    if labels:
        escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in sorted(labels.items()))
        label_text = "{" + ",".join(escaped) + "}"
    lines = []
    for name in sorted(gauges):
        value = float(gauges[name])
        metric = _METRIC_NAME.sub("_", f"{prefix}_{name}")
        rendered = "NaN" if math.isnan(value) else ("+Inf" if value == math.inf else ("-Inf" if value == -math.inf else repr(value)))
        lines.append(f"# TYPE {metric} gauge")
        lines.append(f"{metric}{label_text} {rendered}")
    return "\n".join(lines) + "\n"


class StatusServer:
    """An aiohttp app with `/status` and `/metrics`; `start()` returns the bound port."""

    def __init__(self, prefix: str, status: Callable[[], dict], gauges: Callable[[], Mapping[str, float]],
                 labels: Mapping[str, str] | None = None):
        self.prefix = prefix
        self._status = status
        self._gauges = gauges
        self._labels = dict(labels or {})
        self._runner = None
        self.port: int | None = None

    async def _handle_status(self, request):
        from aiohttp import web

        return web.Response(text=json.dumps(self._status(), default=str), content_type="application/json")

    async def _handle_metrics(self, request):
        from aiohttp import web

        body = render_prometheus(self.prefix, self._gauges(), self._labels)
        return web.Response(text=body, content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/status", self._handle_status)
        app.router.add_get("/metrics", self._handle_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ts (unix s), level, logger, msg, and any `extra=` fields."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        doc.update({k: v for k, v in record.__dict__.items() if k not in self._STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def install_json_log(path: Path, level: int = logging.INFO) -> logging.Handler:
    """Appends every log record of this process to `path` as JSON lines; returns the handler."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonLogFormatter())
    handler.setLevel(level)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level or root.level == logging.NOTSET:
        root.setLevel(level)
    return handler
