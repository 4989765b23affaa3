"""Observability for a long-running role: `/status` (JSON), `/metrics` (Prometheus exposition,
written by `prometheus_client`) and structured (JSON lines) logs.

Shared by the node and the coordinator daemons, which may not import each other; it holds no
role logic: each role passes two callables, one returning its status document and one its
numeric gauges. The server runs on the caller's event loop (aiohttp) and binds where it is told
(127.0.0.1 by default); port 0 picks a free port, reported by `start()`.

Metrics: every gauge `name` of a role becomes the Prometheus gauge `<prefix>_<name>` (characters
outside `[a-zA-Z0-9_:]` become `_`), carrying the server's constant labels (run id, peer id).
Each `StatusServer` owns its own `CollectorRegistry`, never the library's global one, so several
servers in one process (tests, a devnet in one interpreter) do not collide. The gauges callable
is read at scrape time, on the event loop; label values are escaped by the library.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(prefix: str, name: str) -> str:
    """`<prefix>_<name>` with every character Prometheus' classic names forbid replaced by `_`."""
    return _METRIC_NAME.sub("_", f"{prefix}_{name}")


class GaugesCollector(Collector):
    """A `prometheus_client` collector reading a role's gauges callable at each scrape."""

    def __init__(self, prefix: str, gauges: Callable[[], Mapping[str, float]], labels: Mapping[str, str] | None = None):
        self.prefix = prefix
        self._gauges = gauges
        self._labels = dict(sorted((labels or {}).items()))

    def collect(self) -> Iterator[Metric]:
        label_names, label_values = list(self._labels), [str(v) for v in self._labels.values()]
        for name, value in sorted(self._gauges().items()):
            family = GaugeMetricFamily(metric_name(self.prefix, name), f"{self.prefix} {name}", labels=label_names)
            family.add_metric(label_values, float(value))
            yield family


def metrics_registry(prefix: str, gauges: Callable[[], Mapping[str, float]],
                     labels: Mapping[str, str] | None = None) -> CollectorRegistry:
    """A fresh registry holding one `GaugesCollector` (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GaugesCollector(prefix, gauges, labels))
    return registry


def render_prometheus(prefix: str, gauges: Mapping[str, float], labels: Mapping[str, str] | None = None) -> str:
    """Gauges as Prometheus text exposition 0.0.4, one `# HELP`/`# TYPE` pair each."""
    return generate_latest(metrics_registry(prefix, lambda: gauges, labels)).decode()


class StatusServer:
    """An aiohttp app with `/status` and `/metrics`; `start()` returns the bound port."""

    def __init__(self, prefix: str, status: Callable[[], dict], gauges: Callable[[], Mapping[str, float]],
                 labels: Mapping[str, str] | None = None):
        self.prefix = prefix
        self._status = status
        self.registry = metrics_registry(prefix, gauges, labels)
        self._runner = None
        self.port: int | None = None

    async def _handle_status(self, request):
        from aiohttp import web

        return web.Response(text=json.dumps(self._status(), default=str), content_type="application/json")

    async def _handle_metrics(self, request):
        """The format the scraper's `Accept` asks for (OpenMetrics or text), with its content type."""
        from aiohttp import web

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

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
