"""Serving found through the DHT, on loopback with real p2pd: two servers announce the same model
hash, one of them serves another model under it; `thinkmesh ask` catches the liar by re-checking
its receipt and answers from the honest server.

The honest server is the real `thinkmesh serve --announce` in its own process; the liar is a test
plug in this process (a served model whose claimed hash is not its own), announced with its own
valid signature, since a DHT record cannot tell what a server really serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from thinkmesh.node.serve.ask import server_order
from thinkmesh.protocol.p2p.serve_records import ServerAnnouncer, start_dht, wait_for_servers
from thinkmesh.node.serve.engine import ServeEngine, load_served_model
from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir
from thinkmesh.protocol.rules.identity import NodeIdentity

from tests.node.serve.conftest import running_server

MICRO = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)


class _Lines:
    """A process's stdout lines, read by a thread, each wait bounded."""

    def __init__(self, process: subprocess.Popen):
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in process.stdout], daemon=True).start()

    def event(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} event from `thinkmesh serve` within {timeout:.0f} s") from None
            if line.startswith("{") and json.loads(line).get("event") == name:
                return json.loads(line)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_ask_finds_both_servers_passes_over_the_liar_and_answers_from_the_honest_one(tmp_path):
    honest_dir, other_dir = tmp_path / "honest", tmp_path / "other"
    init_model_dir(honest_dir, MICRO, seed=0)
    init_model_dir(other_dir, MICRO, seed=1)
    cli = [sys.executable, "-m", "thinkmesh.protocol.cli.main"]
    honest = subprocess.Popen(
        [*cli, "serve", "--model", str(honest_dir), "--port", "0", "--device", "cpu", "--threads", "1",
         "--identity", str(tmp_path / "honest.key"), "--announce", "--announce-ttl", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    liar_dht = client_dht = None
    try:
        lines = _Lines(honest)
        listening = lines.event("listening", 60)
        model_hash = bytes.fromhex(lines.event("ready", 60)["model_hash"][2:])
        lines.event("announced", 30)
        peers = listening["dht_maddrs"]

        liar = NodeIdentity.generate()
        lying = dataclasses.replace(load_served_model(other_dir, name="honest"), model_hash=model_hash)
        assert lying.model_hash == model_hash  # it claims the honest hash while serving other weights
        liar_dht = start_dht([model_hash], peers, identity=liar)
        with running_server(ServeEngine(lambda: lying), liar) as (liar_url, _):
            assert asyncio.run(ServerAnnouncer(liar_dht, liar, model_hash, liar_url, 120).announce_once())

            client_dht = start_dht([model_hash], peers, client_mode=True)
            servers = asyncio.run(wait_for_servers(client_dht, model_hash, 30, at_least=2))
            assert {s.url for s in servers} == {listening["url"], liar_url}
            assert {s.server_key.hex() for s in servers} == {listening["server_key"][2:], liar.public_key.hex()}
            seed = next(s for s in range(1000) if server_order(servers, s)[0].url == liar_url)  # the liar first

            asked = subprocess.run(
                [*cli, "ask", "What is 2+2?", "--model-hash", "0x" + model_hash.hex(), "--initial-peers", *peers,
                 "--model", str(honest_dir), "--seed", str(seed), "--max-tokens", "16", "--json"],
                capture_output=True, text=True, timeout=90)
            assert asked.returncode == 0, asked.stderr[-3000:]
            result = json.loads(asked.stdout.strip().splitlines()[-1])
            assert result["server_url"] == listening["url"] and result["replayed"] is True
            assert [f["url"] for f in result["failures"]] == [liar_url]
            assert result["failures"][0]["reason"].startswith("draw-mismatch"), result["failures"]
    finally:
        for dht in (client_dht, liar_dht):
            if dht is not None:
                dht.shutdown()
        _stop(honest)
