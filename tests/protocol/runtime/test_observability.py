"""`/metrics` through prometheus_client: names, labels (escaped by the library), content type,
and several status servers in one process."""

from __future__ import annotations

import asyncio
import math

import aiohttp
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from thinkmesh.protocol.runtime.observability import StatusServer, render_prometheus

HOSTILE = 'say "hi"\\there\nnext line'


async def _scrape(server: StatusServer, accept: str | None = None) -> tuple[str, str]:
    port = await server.start()
    try:
        headers = {"Accept": accept} if accept else {}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as response:
                assert response.status == 200
                return response.headers["Content-Type"], await response.text()
    finally:
        await server.stop()


def _samples(text: str) -> dict[str, tuple[dict, float]]:
    return {s.name: (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples}


def test_label_value_with_quote_backslash_and_newline_round_trips_through_the_parser():
    server = StatusServer("thinkmesh_node", dict, lambda: {"model_version": 3, "uptime_seconds": 1.5},
                          {"run": HOSTILE, "peer_id": "12D3KooW"})
    content_type, body = asyncio.run(_scrape(server))
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    assert "\nnext line" not in body  # the newline is escaped, not written raw
    samples = _samples(body)
    assert samples["thinkmesh_node_model_version"] == ({"peer_id": "12D3KooW", "run": HOSTILE}, 3.0)
    assert samples["thinkmesh_node_uptime_seconds"] == ({"peer_id": "12D3KooW", "run": HOSTILE}, 1.5)
    families = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert families == {"thinkmesh_node_model_version": "gauge", "thinkmesh_node_uptime_seconds": "gauge"}


def test_gauge_names_are_sanitised_and_non_finite_values_survive():
    text = render_prometheus("thinkmesh_coordinator", {"uploads_bad-shape": 2, "heldout.accuracy": math.nan,
                                                       "limit": math.inf})
    samples = _samples(text)
    assert samples["thinkmesh_coordinator_uploads_bad_shape"] == ({}, 2.0)
    assert math.isnan(samples["thinkmesh_coordinator_heldout_accuracy"][1])
    assert samples["thinkmesh_coordinator_limit"] == ({}, math.inf)


def test_two_servers_in_one_process_keep_their_own_metrics():
    async def both():
        a = StatusServer("thinkmesh_node", dict, lambda: {"model_version": 1}, {"peer_id": "a"})
        b = StatusServer("thinkmesh_node", dict, lambda: {"model_version": 2}, {"peer_id": "b"})
        return (await _scrape(a))[1], (await _scrape(b))[1]

    first, second = asyncio.run(both())
    assert _samples(first) == {"thinkmesh_node_model_version": ({"peer_id": "a"}, 1.0)}
    assert _samples(second) == {"thinkmesh_node_model_version": ({"peer_id": "b"}, 2.0)}


def test_gauges_are_read_at_each_scrape_and_openmetrics_is_negotiated():
    values = {"rounds_completed": 0}
    server = StatusServer("thinkmesh_coordinator", dict, lambda: dict(values))

    async def twice():
        port = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/metrics"
                async with session.get(url) as response:
                    before = await response.text()
                values["rounds_completed"] = 4
                async with session.get(url, headers={"Accept": "application/openmetrics-text"}) as response:
                    return before, response.headers["Content-Type"], await response.text()
        finally:
            await server.stop()

    before, content_type, after = asyncio.run(twice())
    assert _samples(before)["thinkmesh_coordinator_rounds_completed"] == ({}, 0.0)
    assert content_type.startswith("application/openmetrics-text")
    assert "thinkmesh_coordinator_rounds_completed 4.0" in after and after.endswith("# EOF\n")
