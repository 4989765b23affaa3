"""`thinkmesh ask`: one question to the servers of one model, trusting none of them.

The client picks its own seed (so no server chooses the randomness), asks the servers one at a
time in an order that is a pure function of that seed (`server_order`), and takes the first
answer that checks:

1. always (cheap, no model): the receipt is signed by the announced server key, names the asked
   model hash, the client's seed and the asked settings;
2. with the model directory (`LocalModel`): the receipt's prompt is the question as the client
   renders it, the answer's text is its token ids' text, and, for a `verify_share` of answers
   drawn at random, every token replays (`receipts.recheck_receipt`: one forward on the client).

A server that fails (unreachable, an error, a malformed answer) or lies (any check above) is
noted with the reason and the next one is asked. So one honest server among liars is enough, as
long as the client re-checks; with `verify_share` p < 1, a server that lies on every answer is
caught on the first question with probability p.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from thinkmesh.node.serve.openai_schema import answer_text, render_chat
from thinkmesh.protocol.rules.errors import ProtocolError, SignatureError
from thinkmesh.protocol.rules.messages import verify_message
from thinkmesh.protocol.rules.receipts import (
    InferenceReceipt, ServerAnnouncement, public_seed, receipt_from_json, recheck_receipt,
)
from thinkmesh.protocol.rules.sampling import stop_rule_for


class AskError(ProtocolError):
    """No server gave an answer that checks."""


class AnswerRefused(ProtocolError):
    """One server's answer failed a check (the message says which)."""


@dataclass(frozen=True)
class AskSettings:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 64
    verify_share: float = 1.0
    timeout_s: float = 60.0


@dataclass(frozen=True)
class LocalModel:
    """The client's copy of the model: what the re-check runs on."""

    model: object
    tokenizer: object
    model_hash: bytes


@dataclass
class AskResult:
    answer: str
    server: ServerAnnouncement
    receipt: InferenceReceipt
    replayed: bool  # True when every token was re-checked on the local model
    failures: list[tuple[str, str]] = field(default_factory=list)  # (server URL, why it was passed over)

    def summary(self) -> dict:
        return {"answer": self.answer, "server_url": self.server.url, "server_key": "0x" + self.server.server_key.hex(),
                "replayed": self.replayed, "failures": [{"url": u, "reason": r} for u, r in self.failures]}


def server_order(servers: Sequence[ServerAnnouncement], seed: int) -> list[ServerAnnouncement]:
    """The servers in the order a client with `seed` asks them: by sha256(public seed || key)."""
    base = public_seed(seed)
    return sorted(servers, key=lambda s: hashlib.sha256(base + s.server_key).digest())


def check_answer(body: dict, server: ServerAnnouncement, messages: list[dict], settings: AskSettings, seed: int,
                 local: LocalModel | None) -> tuple[InferenceReceipt, str]:
    """(receipt, answer text) of a chat completion body, or AnswerRefused with the reason."""
    try:
        receipt = receipt_from_json(body["thinkmesh_receipt"])
        text = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise AnswerRefused(f"malformed answer: no {exc}") from exc
    except ProtocolError as exc:
        raise AnswerRefused(f"malformed receipt: {exc}") from exc
    try:
        verify_message(receipt, receipt.server_key)
    except SignatureError as exc:
        raise AnswerRefused(f"bad receipt signature: {exc}") from exc
    expected = {
        "server_key": (receipt.server_key, server.server_key), "model_hash": (receipt.model_hash, server.model_hash),
        "client_seed": (receipt.client_seed, seed), "seed": (receipt.seed, public_seed(seed)),
        "temperature": (receipt.temperature, settings.temperature), "top_p": (receipt.top_p, settings.top_p),
        "max_new_tokens": (receipt.max_new_tokens, settings.max_tokens), "choices": (len(receipt.choices), 1),
    }
    for name, (got, want) in expected.items():
        if got != want:
            show = (lambda v: "0x" + v.hex()) if isinstance(want, bytes) else repr
            raise AnswerRefused(f"the receipt's {name} is {show(got)}, expected {show(want)}")
    if local is not None:
        tokenizer = local.tokenizer
        if receipt.prompt_ids != tuple(render_chat(tokenizer, messages)):
            raise AnswerRefused("the receipt's prompt is not the question asked")
        if receipt.stop_rule != stop_rule_for(tokenizer, ()):
            raise AnswerRefused("the receipt's stop rule is not the one asked for (EOS only)")
        if text != answer_text(tokenizer, receipt.choices[0].completion_ids, receipt.stop_rule):
            raise AnswerRefused("the answer's text is not the text of the receipt's tokens")
    return receipt, text


async def ask(question: str, servers: Sequence[ServerAnnouncement], settings: AskSettings = AskSettings(),
              local: LocalModel | None = None, seed: int | None = None, rng: random.Random | None = None) -> AskResult:
    """Asks `servers` in `server_order` until an answer checks (see the module docstring)."""
    import aiohttp

    if settings.verify_share > 0 and local is None:
        raise AskError("re-checking answers (verify_share > 0) needs the model directory (--model DIR)")
    rng = rng or random.SystemRandom()
    seed = rng.randrange(-(1 << 63), 1 << 63) if seed is None else seed
    messages = [{"role": "user", "content": question}]
    request = {"model": "0x" + (servers[0].model_hash.hex() if servers else ""), "messages": messages,
               "temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens,
               "seed": seed}
    failures: list[tuple[str, str]] = []
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for server in server_order(servers, seed):
            try:
                async with session.post(server.url.rstrip("/") + "/v1/chat/completions", json=request) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200:
                        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
                        raise AnswerRefused(f"HTTP {response.status}: {message or body!r}")
                receipt, text = check_answer(body, server, messages, settings, seed, local)
                replayed = local is not None and rng.random() < settings.verify_share
                if replayed:
                    check = await asyncio.to_thread(recheck_receipt, receipt, local.model, local.model_hash,
                                                    local.tokenizer, local.tokenizer.pad_token_id)
                    if not check.agrees:
                        raise AnswerRefused(f"{check.reason}: {check.detail}")
                return AskResult(text, server, receipt, replayed, failures)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AnswerRefused) as exc:
                failures.append((server.url, str(exc) or type(exc).__name__))
    detail = "; ".join(f"{url}: {reason}" for url, reason in failures) or "no server of this model was found"
    raise AskError(f"no server gave an answer that checks ({detail})")
