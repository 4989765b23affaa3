"""Clear refusals: 400 naming the bad field, 404 for another model, 429 when the queue is full,
503 while the model loads or after it failed; and the event loop stays free while a batch runs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from thinkmesh.node.serve.engine import ServedModel, ServeEngine
from thinkmesh.protocol.rules.prefix_scoring import cache_keyword

from tests.node.serve.conftest import MODEL_NAME, running_server

pytestmark = pytest.mark.timeout(120)


def request(url: str, body=None, raw: bytes | None = None, method: str = "POST"):
    """(status, JSON body, headers) of one HTTP request; error statuses are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 4}


@pytest.mark.parametrize("path, body, param", [
    ("completions", {**COMPLETION, "temperature": 2.5}, "temperature"),
    ("completions", {**COMPLETION, "top_p": 0}, "top_p"),
    ("completions", {**COMPLETION, "max_tokens": 0}, "max_tokens"),
    ("completions", {**COMPLETION, "max_tokens": 10_000}, "max_tokens"),
    ("completions", {**COMPLETION, "prompt": "x" * 600, "max_tokens": 500}, "max_tokens"),
    ("completions", {**COMPLETION, "n": 99}, "n"),
    ("completions", {**COMPLETION, "seed": "seven"}, "seed"),
    ("completions", {**COMPLETION, "stream": "yes"}, "stream"),
    ("completions", {**COMPLETION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("completions", {**COMPLETION, "prompt": ["one", "two"]}, "prompt"),
    ("completions", {**COMPLETION, "prompt": [1, 2, 100_000]}, "prompt"),
    ("completions", {**COMPLETION, "logprobs": 3}, "logprobs"),
    ("completions", {**COMPLETION, "frequency_penalty": 0.5}, "frequency_penalty"),
    ("completions", {**COMPLETION, "temprature": 0.5}, "temprature"),
    ("chat/completions", {**CHAT, "messages": []}, "messages"),
    ("chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ("chat/completions", {**CHAT, "tools": [{"type": "function"}]}, "tools"),
    ("chat/completions", {**CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
])
def test_a_bad_request_is_refused_with_400_naming_the_field(micro_server, path, body, param):
    status, answer, _ = request(f"{micro_server[0]}/v1/{path}", body)
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]


def test_a_body_that_is_not_json_is_400_and_another_model_is_404(micro_server):
    status, answer, _ = request(f"{micro_server[0]}/v1/completions", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    status, answer, _ = request(f"{micro_server[0]}/v1/completions", {**COMPLETION, "model": "gpt-9"})
    assert status == 404 and answer["error"]["code"] == "model_not_found" and answer["error"]["param"] == "model"


def test_the_openai_client_sees_a_bad_request_error(openai_client):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.completions.create(model=MODEL_NAME, prompt="x", temperature=-1)
    assert caught.value.body["param"] == "temperature"


def test_503_while_the_model_loads_then_200(served_micro, server_identity):
    import openai

    release = threading.Event()

    def slow_load():
        assert release.wait(30)
        return served_micro

    with running_server(ServeEngine(slow_load), server_identity, wait_ready=False) as (url, server):
        status, answer, headers = request(f"{url}/v1/models", method="GET")
        assert status == 503 and answer["error"]["code"] == "model_loading" and headers["Retry-After"]
        status, answer, _ = request(f"{url}/v1/chat/completions", CHAT)
        assert status == 503 and "loading" in answer["error"]["message"]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
        assert caught.value.status_code == 503
        release.set()
        assert server.engine.wait_ready(30)
        assert client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2).choices


def test_503_names_the_reason_when_the_model_failed_to_load(server_identity, tmp_path):
    def broken_load():
        raise FileNotFoundError(f"no model in {tmp_path}")

    engine = ServeEngine(broken_load)
    with running_server(engine, server_identity, wait_ready=False) as (url, _):
        assert not engine.wait_ready(30)
        status, answer, _ = request(f"{url}/v1/completions", COMPLETION)
        assert status == 503 and "no model in" in answer["error"]["message"]
        assert request(f"{url}/health", method="GET")[1]["state"] == "failed"


class _GatedModel(torch.nn.Module):
    """A test plug: the micro model, whose first forward waits until the test opens the gate."""

    def __init__(self, inner, gate: threading.Event, entered: threading.Event):
        super().__init__()
        self.inner, self.gate, self.entered, self.config = inner, gate, entered, inner.config
        self._keyword = cache_keyword(inner)

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, cache=None, **kwargs):
        self.entered.set()
        assert self.gate.wait(30)
        return self.inner(input_ids=input_ids, **{self._keyword: cache}, **kwargs)


def test_a_full_queue_answers_429_and_the_loop_stays_free(served_micro, server_identity):
    import aiohttp

    gate, entered = threading.Event(), threading.Event()
    gated = ServedModel(_GatedModel(served_micro.model, gate, entered), served_micro.tokenizer,
                        served_micro.model_hash, "float32", MODEL_NAME)
    engine = ServeEngine(lambda: gated, max_queue=1, max_batch=1)

    async def scenario(url: str):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def post(body):
                async with session.post(f"{url}/v1/completions", json=body) as response:
                    return response.status, await response.json()

            running = asyncio.create_task(post({**COMPLETION, "seed": 1}))
            assert await asyncio.to_thread(entered.wait, 30)  # the worker holds the first request
            started = time.monotonic()
            async with session.get(f"{url}/health") as response:  # the loop is not waiting on the model
                assert response.status == 200
            assert time.monotonic() - started < 2.0
            waiting = asyncio.create_task(post({**COMPLETION, "seed": 2}))
            while engine.queued < 1:
                await asyncio.sleep(0.02)
            status, answer = await post({**COMPLETION, "seed": 3})
            assert status == 429 and answer["error"]["code"] == "queue_full", answer
            gate.set()
            assert [(await running)[0], (await waiting)[0]] == [200, 200]

    with running_server(engine, server_identity) as (url, _):
        asyncio.run(asyncio.wait_for(scenario(url), 60))
