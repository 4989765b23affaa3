"""The HTTP side of `thinkmesh serve`: OpenAI-compatible routes on aiohttp, each answer signed.

Routes: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (JSON, or server-sent
events with `stream: true`, in OpenAI's chunk format, ending with `data: [DONE]`), and `GET /health`.

Each answer carries `thinkmesh_receipt` (`protocol/rules/receipts.py`): in the JSON body, or in the last
chunk of a stream (`choices: []`, with `usage`). Its rows draw from `receipt_row_key(seed, row)`,
where the seed is the client's `seed` (as `public_seed`) or 32 random bytes the receipt publishes.

Errors, as OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 for a request that
breaks a rule (the field in `param`), 404 for another model, 429 when the queue of waiting
requests is full, 503 while the model loads (with `Retry-After`) or after it failed to load, 504
when an answer took longer than the request timeout. The handlers only parse, queue and relay:
generation runs in the engine's worker thread, so the event loop never waits on the model.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from aiohttp import web

from thinkmesh.node.serve.engine import FAILED, READY, STOPPED, GenerationJob, NotReady, QueueFull, ServeEngine
from thinkmesh.node.serve.openai_schema import (
    ParsedRequest, RequestError, ServeLimits, TextStream, answer_text, chunk_body, chunk_choice, error_body,
    parse_request, response_body, usage,
)
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.receipts import (
    InferenceReceipt, ReceiptChoice, public_seed, receipt_row_key, receipt_to_json, sign_receipt,
)

RETRY_AFTER_LOADING_S = 2


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
           code: str | None = None, headers: dict | None = None) -> web.Response:
    return web.json_response(error_body(message, param, kind, code), status=status, headers=headers)


def _not_ready(engine: ServeEngine, message: str | None = None) -> web.Response:
    loading = engine.state not in (READY, FAILED, STOPPED)
    return _error(503, message or ("the model is loading" if loading else f"the model is not available: {engine.error}"),
                  kind="server_error", code="model_loading" if loading else "model_unavailable",
                  headers={"Retry-After": str(RETRY_AFTER_LOADING_S)} if loading else None)


class ServeApp:
    """The routes over one engine and one signing key. `app` is the aiohttp application."""

    def __init__(self, engine: ServeEngine, identity: NodeIdentity, limits: ServeLimits = ServeLimits(),
                 request_timeout: float = 600.0):
        self.engine, self.identity, self.limits, self.request_timeout = engine, identity, limits, request_timeout
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)

    async def health(self, request: web.Request) -> web.Response:
        served = self.engine.served
        return web.json_response({
            "state": self.engine.state, "error": self.engine.error, "queued": self.engine.queued,
            "batches": self.engine.batches_run, "rows": self.engine.rows_run,
            "server_key": "0x" + self.identity.public_key.hex(),
            "model": served.name if served else None,
            "model_hash": "0x" + served.model_hash.hex() if served else None,
        })

    async def models(self, request: web.Request) -> web.Response:
        if self.engine.state != READY:
            return _not_ready(self.engine)
        served = self.engine.served
        return web.json_response({"object": "list", "data": [{
            "id": served.name, "object": "model", "created": 0, "owned_by": "thinkmesh",
            "thinkmesh_model_hash": "0x" + served.model_hash.hex(),
            "thinkmesh_server_key": "0x" + self.identity.public_key.hex(),
        }]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.generate(request, "completion")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.generate(request, "chat")

    async def generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"the request body is not valid JSON: {exc}")
        if self.engine.state != READY:
            return _not_ready(self.engine)
        served = self.engine.served
        try:
            parsed = parse_request(kind, body, served, self.limits)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.param, code=exc.code)
        if parsed.n > self.engine.max_batch:
            return _error(400, f"n: this server generates at most {self.engine.max_batch} choices at once", "n")
        seed = public_seed(parsed.client_seed) if parsed.client_seed is not None else secrets.token_bytes(32)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = GenerationJob(parsed.prompt_ids, parsed.settings, parsed.stop,
                            tuple(receipt_row_key(seed, row) for row in range(parsed.n)), _poster(loop, events))
        try:
            self.engine.submit(job)
        except QueueFull as exc:
            return _error(429, f"the server is busy: {exc}; retry later", kind="rate_limit_error", code="queue_full")
        except NotReady as exc:
            return _not_ready(self.engine, str(exc))
        answer = _Answer(self, parsed, seed, ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12))
        try:
            if parsed.stream:
                return await answer.stream(request, events, job)
            return await answer.json(events, job)
        finally:
            job.cancelled.set()  # a no-op once done; stops the rows of a client that went away


def _poster(loop: asyncio.AbstractEventLoop, events: asyncio.Queue):
    def post(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop closed: nobody is listening any more
            pass
    return post


class _Answer:
    """One request's answer, as JSON or as a stream of chunks."""

    def __init__(self, server: ServeApp, parsed: ParsedRequest, seed: bytes, request_id: str):
        self.server, self.parsed, self.seed, self.request_id = server, parsed, seed, request_id
        self.served = server.engine.served
        self.created = int(time.time())
        self.deadline = time.monotonic() + server.request_timeout

    async def _next(self, events: asyncio.Queue) -> tuple:
        try:
            return await asyncio.wait_for(events.get(), max(0.0, self.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return ("timeout", f"no answer within {self.server.request_timeout:.0f} s")

    def _receipt(self, completions) -> dict:
        parsed, served, identity = self.parsed, self.served, self.server.identity
        receipt = InferenceReceipt(
            server_key=identity.public_key, model_hash=served.model_hash, request_id=self.request_id,
            created_ms=time.time_ns() // 1_000_000, prompt_ids=parsed.prompt_ids,
            temperature=parsed.settings.temperature, top_p=parsed.settings.top_p,
            max_new_tokens=parsed.settings.max_new_tokens, stop_token_ids=tuple(sorted(parsed.stop.token_ids)),
            stop_strings=parsed.stop.multi_token_strings, seed=self.seed, client_seed=parsed.client_seed,
            dtype=served.dtype,
            choices=tuple(ReceiptChoice(row, c.token_ids, c.finish_reason) for row, c in enumerate(completions)),
        )
        return receipt_to_json(sign_receipt(receipt, identity))

    async def json(self, events: asyncio.Queue, job: GenerationJob) -> web.Response:
        while True:
            event = await self._next(events)
            if event[0] == "tokens":
                continue
            if event[0] == "done":
                completions = event[1]
                texts = [answer_text(self.served.tokenizer, c.token_ids, self.parsed.stop) for c in completions]
                body = response_body(self.parsed, self.request_id, self.created, self.served.name, texts,
                                     [c.finish_reason for c in completions],
                                     sum(len(c.token_ids) for c in completions), self._receipt(completions))
                return web.json_response(body)
            status = 504 if event[0] == "timeout" else 500
            return _error(status, event[1], kind="server_error")

    async def stream(self, request: web.Request, events: asyncio.Queue, job: GenerationJob) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        texts = [TextStream(self.served.tokenizer, self.parsed.stop) for _ in range(self.parsed.n)]
        try:
            if self.parsed.kind == "chat":
                await response.write(self._chunk([chunk_choice(self.parsed, i, None, role=True)
                                                   for i in range(self.parsed.n)]))
            while True:
                # What the worker posted while the last write went out leaves in one write.
                pending = [await self._next(events)]
                while pending[-1][0] == "tokens" and not events.empty():
                    pending.append(events.get_nowait())
                out = b"".join(self._event_chunks(event, texts) for event in pending)
                if out:
                    await response.write(out)
                if pending[-1][0] != "tokens":
                    break
        except ConnectionResetError:
            job.cancelled.set()
        return response

    def _chunk(self, choices: list[dict], **extra) -> bytes:
        body = {**chunk_body(self.parsed, self.request_id, self.created, self.served.name, choices), **extra}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def _event_chunks(self, event: tuple, texts: list[TextStream]) -> bytes:
        """The SSE bytes of one worker event: a text delta; or the finish chunks, the receipt chunk
        and `[DONE]`; or an error and `[DONE]`."""
        parsed = self.parsed
        if event[0] == "tokens":
            delta = texts[event[1]].push(event[2])
            return self._chunk([chunk_choice(parsed, event[1], delta)]) if delta else b""
        if event[0] != "done":
            return b"data: " + json.dumps(error_body(event[1], kind="server_error")).encode() + b"\n\ndata: [DONE]\n\n"
        completions, out = event[1], []
        for index, completion in enumerate(completions):
            tail = texts[index].finish(completion.token_ids)
            out.append(self._chunk([chunk_choice(parsed, index, tail or None, completion.finish_reason)]))
        tokens = sum(len(c.token_ids) for c in completions)
        out.append(self._chunk([], usage=usage(len(parsed.prompt_ids), tokens), thinkmesh_receipt=self._receipt(completions)))
        return b"".join(out) + b"data: [DONE]\n\n"


class ServeServer:
    """The engine and the HTTP site, started and stopped together (an explicit lifecycle)."""

    def __init__(self, engine: ServeEngine, identity: NodeIdentity, limits: ServeLimits = ServeLimits(),
                 request_timeout: float = 600.0):
        self.engine = engine
        self.routes = ServeApp(engine, identity, limits, request_timeout)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8000) -> str:
        """Starts the engine (the model loads in its worker) and listens; returns the base URL."""
        self.engine.start()
        self._runner = web.AppRunner(self.routes.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{bound}"
        return self.url

    async def stop(self) -> None:
        await asyncio.to_thread(self.engine.shutdown)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
