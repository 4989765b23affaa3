"""A `thinkmesh serve` on loopback, in this process: the engine's worker thread and an aiohttp
site on an event loop of its own thread, so tests talk to it as any client would."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from thinkmesh.node.serve.app import ServeServer
from thinkmesh.node.serve.engine import ServeEngine, load_served_model
from thinkmesh.node.serve.openai_schema import ServeLimits
from thinkmesh.protocol.rules.identity import NodeIdentity

MODEL_NAME = "micro"


@contextlib.contextmanager
def running_server(engine: ServeEngine, identity: NodeIdentity, limits: ServeLimits = ServeLimits(),
                   wait_ready: bool = True):
    """Yields (base URL, server); stops it (bounded) on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="serve-test-loop", daemon=True)
    thread.start()
    server = ServeServer(engine, identity, limits, request_timeout=60.0)
    try:
        url = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(30)
        if wait_ready:
            assert engine.wait_ready(30), engine.error
        yield url, server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="session")
def served_micro(micro_model_dir):
    return load_served_model(micro_model_dir, "cpu", "float32", MODEL_NAME)


@pytest.fixture(scope="session")
def server_identity():
    return NodeIdentity.from_seed(b"\x07" * 32)


@pytest.fixture(scope="module")
def micro_server(served_micro, server_identity):
    """(base URL, ServeServer) over the micro model, shared by a module's tests."""
    with running_server(ServeEngine(lambda: served_micro, max_queue=32, max_batch=8), server_identity) as running:
        yield running


@pytest.fixture
def openai_client(micro_server):
    import openai

    return openai.OpenAI(base_url=micro_server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
