"""Event scans are paged: an endpoint that refuses wide `eth_getLogs` ranges still yields every event.

A small JSON-RPC proxy in front of anvil stands in for a public endpoint with a block-range cap: it
refuses any `eth_getLogs` over more than `CAP` blocks with the wording such endpoints use.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient
from thinkmesh.protocol.chain.errors import ChainError
from thinkmesh.protocol.chain.events import LedgerEvents
from thinkmesh.protocol.chain.ledger import Deployment, seed_commitment

from .conftest import Actors

pytestmark = pytest.mark.timeout(60)
CAP = 3


class CappedRpc:
    """Forwards JSON-RPC to `upstream`; `eth_getLogs` over more than `cap` blocks gets an error reply."""

    def __init__(self, upstream: str, cap: int | None) -> None:
        self.upstream, self.cap, self.widest = upstream, cap, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = proxy.answer(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, body: dict) -> dict:
        if body.get("method") == "eth_getLogs":
            query = body["params"][0]
            span = int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1
            self.widest = max(self.widest, span)
            if self.cap is not None and span > self.cap:
                return {"jsonrpc": "2.0", "id": body["id"],
                        "error": {"code": -32005, "message": f"block range is too large (max {self.cap})"}}
        request = urllib.request.Request(self.upstream, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def capped(anvil: Anvil) -> Iterator[CappedRpc]:
    proxy = CappedRpc(anvil.rpc_url, CAP)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()


def open_rounds(actors: Actors, count: int) -> None:
    for round_id in range(1, count + 1):  # one block each (automine)
        actors.coordinator.open_round(round_id, b"\x3d" * 32, seed_commitment(round_id.to_bytes(32, "big")))


def test_a_scan_asks_for_at_most_max_block_range_blocks(actors: Actors, deployment: Deployment, capped) -> None:
    open_rounds(actors, 7)
    capped.cap = None  # nothing refused: only our own page size limits the ranges
    reader = LedgerClient.connect(capped.url, deployment)
    events = LedgerEvents(reader.ledger, capped.url, from_block=deployment.block_number, max_block_range=2)
    assert [o.round_id for o in events.round_openings()] == list(range(1, 8))
    assert capped.widest == 2


def test_a_refused_range_is_split_until_the_endpoint_accepts(actors: Actors, deployment: Deployment, capped) -> None:
    open_rounds(actors, 7)
    reader = LedgerClient.connect(capped.url, deployment)  # default page: 10,000 blocks, refused here
    assert [o.round_id for o in reader.events.round_openings()] == list(range(1, 8))
    assert [o.round_id for o in reader.events.round_openings(round_id=5)] == [5]


def test_a_refusal_of_a_single_block_is_raised_with_what_was_asked(actors: Actors, deployment: Deployment,
                                                                   capped) -> None:
    capped.cap = 0  # refuses everything
    reader = LedgerClient.connect(capped.url, deployment)
    with pytest.raises(ChainError, match=r"expected the RoundOpened logs of blocks \d+\.\.\d+ .* refused"):
        reader.events.round_openings()
