"""The OpenAI wire format: request validation, chat prompts, answer text, response bodies.

Validation is strict and names the field: a request the server cannot honour exactly (a penalty,
logit bias, tools, logprobs, an unknown argument) is refused with 400 rather than silently
answered under other rules, because the receipt must state the rules the answer was drawn under.

Text rule (`answer_text`): the completion's ids decoded with special tokens dropped
(`scoring.completion_text`), minus its stop: a final stop token is not part of the text, and text
from a multi-token stop string on is cut. So the text is a function of the receipt's ids and stop
rule and the model's tokenizer; a client re-derives it to check the server's text.

Chat prompts (`render_chat`): the tokenizer's own chat template when it has one; otherwise one line
per message, `role: content`, then `assistant:` (the tiny model's tokenizer has no template).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from thinkmesh.protocol.rules.rollout import SamplingSettings
from thinkmesh.protocol.rules.sampling import StopRule, stop_rule_for
from thinkmesh.protocol.rules.scoring import completion_text

MAX_STOP_STRINGS = 4
CHAT_ROLES = ("system", "developer", "user", "assistant")
# Arguments accepted and honoured (or harmless: `user`, `metadata`, `store`).
COMMON_ARGS = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed", "user",
               "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "metadata", "store"}
COMPLETION_ARGS = COMMON_ARGS | {"prompt", "echo", "best_of", "suffix"}
CHAT_ARGS = COMMON_ARGS | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                           "tool_choice", "functions", "function_call", "parallel_tool_calls"}


class RequestError(Exception):
    """A request the server refuses; `param` names the field, `status` the HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""

    default_max_tokens: int = 64
    max_tokens_limit: int = 512
    max_n: int = 8


@dataclass(frozen=True)
class ParsedRequest:
    kind: str  # "completion" or "chat"
    prompt_ids: tuple[int, ...]
    settings: SamplingSettings
    stop: StopRule
    n: int
    stream: bool
    include_usage: bool
    client_seed: int | None


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---- parsing ---------------------------------------------------------------------------------
def parse_request(kind: str, body, served, limits: ServeLimits) -> ParsedRequest:
    """The request `body` (decoded JSON) as a `ParsedRequest`, or RequestError naming the field.
    `served`: the `engine.ServedModel` (tokenizer, name, hash, context length, vocabulary)."""
    if not isinstance(body, Mapping):
        raise RequestError(f"expected a JSON object as the request body, got {type(body).__name__}")
    allowed = CHAT_ARGS if kind == "chat" else COMPLETION_ARGS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    _check_model(body.get("model"), served)
    _refuse_unsupported(kind, body)
    tokenizer = served.tokenizer
    if kind == "chat":
        prompt_field, prompt_ids = "messages", render_chat(tokenizer, _messages(body.get("messages")))
    else:
        prompt_field, prompt_ids = "prompt", _prompt_ids(body.get("prompt"), tokenizer, served.vocab_size)
    max_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, max_field, limits.default_max_tokens, 1, limits.max_tokens_limit)
    if len(prompt_ids) >= served.max_positions:
        raise RequestError(f"the prompt is {len(prompt_ids)} tokens; the model's context is {served.max_positions}",
                           prompt_field, code="context_length_exceeded")
    if len(prompt_ids) + max_tokens > served.max_positions:
        raise RequestError(f"the prompt ({len(prompt_ids)} tokens) plus {max_field} ({max_tokens}) exceeds the "
                           f"model's context of {served.max_positions} tokens", max_field, code="context_length_exceeded")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise RequestError(f"top_p: expected a number in (0, 1], got {top_p}", "top_p")
    seed = body.get("seed")
    if seed is not None and (type(seed) is not int or not -(1 << 63) <= seed < (1 << 63)):
        raise RequestError(f"seed: expected a signed 64-bit integer, got {seed!r}", "seed")
    stream = body.get("stream", False)
    if stream is not None and type(stream) is not bool:
        raise RequestError(f"stream: expected a boolean, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, Mapping) or set(options) - {"include_usage"}):
        raise RequestError(f"stream_options: expected {{'include_usage': bool}}, got {options!r}", "stream_options")
    return ParsedRequest(
        kind=kind, prompt_ids=tuple(prompt_ids), settings=SamplingSettings(temperature, top_p, max_tokens),
        stop=stop_rule_for(tokenizer, _stop_strings(body.get("stop"))),
        n=_integer(body, "n", 1, 1, limits.max_n), stream=bool(stream),
        include_usage=bool(options and options.get("include_usage")), client_seed=seed,
    )


def _check_model(model, served) -> None:
    if model is None:
        return
    if not isinstance(model, str):
        raise RequestError(f"model: expected a string, got {type(model).__name__}", "model")
    if model not in (served.name, "0x" + served.model_hash.hex()):
        raise RequestError(f"The model {model!r} does not exist; this server serves {served.name!r}", "model",
                           status=404, code="model_not_found")


def _refuse_unsupported(kind: str, body: Mapping) -> None:
    """Arguments that would change the answer in ways a receipt cannot state."""
    checks = [
        ("logprobs", lambda v: v in (None, False, 0), "token logprobs are not returned"),
        ("top_logprobs", lambda v: v in (None, 0), "token logprobs are not returned"),
        ("presence_penalty", lambda v: v in (None, 0, 0.0), "penalties are not part of the sampling rule"),
        ("frequency_penalty", lambda v: v in (None, 0, 0.0), "penalties are not part of the sampling rule"),
        ("logit_bias", lambda v: v in (None, {}), "logit bias is not part of the sampling rule"),
        ("echo", lambda v: v in (None, False), "echo is not supported"),
        ("best_of", lambda v: v in (None, 1), "best_of is not supported"),
        ("suffix", lambda v: v in (None, ""), "suffix is not supported"),
        ("response_format", lambda v: v is None or v == {"type": "text"}, "only text responses are supported"),
    ]
    for name in ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"):
        checks.append((name, lambda v: v is None, "tool calls are not supported"))
    for name, ok, why in checks:
        if name in body and not ok(body[name]):
            raise RequestError(f"{name}: {why} by this server (got {body[name]!r})", name)


def _integer(body: Mapping, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise RequestError(f"{name}: expected an integer in {low}..{high}, got {value!r}", name)
    return value


def _number(body: Mapping, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise RequestError(f"{name}: expected a number in [{low:g}, {high:g}], got {value!r}", name)
    return float(value)


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    strings = [stop] if isinstance(stop, str) else stop
    if (not isinstance(strings, list) or len(strings) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in strings)):
        raise RequestError(f"stop: expected a non-empty string or a list of up to {MAX_STOP_STRINGS}, got {stop!r}", "stop")
    return tuple(dict.fromkeys(strings))


def _prompt_ids(prompt, tokenizer, vocab_size: int) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt in a list
    if isinstance(prompt, str):
        return list(tokenizer(prompt)["input_ids"])
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(f"prompt: token id {bad[0]} is outside the vocabulary 0..{vocab_size - 1}", "prompt")
        return list(prompt)
    raise RequestError("prompt: expected one prompt (a string or a non-empty list of token ids); "
                       "send several prompts as several requests", "prompt")


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list", "messages")
    out = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping) or message.get("role") not in CHAT_ROLES:
            raise RequestError(f"{where}: expected an object with a role in {CHAT_ROLES}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError(f"{where}.content: only text parts are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content: expected a string, got {type(content).__name__}", f"{where}.content")
        out.append({"role": message["role"], "content": content})
    return out


def render_chat(tokenizer, messages: Sequence[Mapping]) -> list[int]:
    """The prompt token ids of a chat (see the module docstring): the server's and `ask`'s rule."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])


# ---- text ------------------------------------------------------------------------------------
def answer_text(tokenizer, completion_ids: Sequence[int], stop: StopRule) -> str:
    """The text a client gets for these ids under this stop rule (see the module docstring)."""
    ids = list(completion_ids)
    if ids and ids[-1] in stop.token_ids:
        return completion_text(tokenizer, ids[:-1])
    return _cut_at_stop(completion_text(tokenizer, ids), stop.multi_token_strings)


def _cut_at_stop(text: str, strings: Sequence[str]) -> str:
    cuts = [text.find(s) for s in strings if s in text]
    return text[: min(cuts)] if cuts else text


class TextStream:
    """Incremental `answer_text` for streaming: each `push` returns the new text that can no
    longer change (held back: a tail that may begin a stop string, or a partial character)."""

    def __init__(self, tokenizer, stop: StopRule):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.sent = 0

    def push(self, ids: Sequence[int]) -> str:
        self.ids += ids
        if self.ids and self.ids[-1] in self.stop.token_ids:
            return ""  # the row ended; `finish` sends what is left
        text = _cut_at_stop(completion_text(self.tokenizer, self.ids), self.stop.multi_token_strings)
        hold = max([k for s in self.stop.multi_token_strings for k in range(1, len(s)) if text.endswith(s[:k])],
                   default=0)
        safe = text[: len(text) - hold]
        if safe.endswith("\ufffd"):
            safe = safe[:-1]
        return self._advance(safe)

    def finish(self, completion_ids: Sequence[int]) -> str:
        self.ids = list(completion_ids)
        return self._advance(answer_text(self.tokenizer, self.ids, self.stop))

    def _advance(self, text: str) -> str:
        if len(text) <= self.sent:
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta


# ---- responses -------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def response_body(parsed: ParsedRequest, request_id: str, created: int, model_name: str, texts: list[str],
                  finish_reasons: list[str], completion_tokens: int, receipt_json: dict) -> dict:
    if parsed.kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": reason} for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
        kind = "chat.completion"
    else:
        choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                   for i, (text, reason) in enumerate(zip(texts, finish_reasons))]
        kind = "text_completion"
    return {"id": request_id, "object": kind, "created": created, "model": model_name, "choices": choices,
            "usage": usage(len(parsed.prompt_ids), completion_tokens), "thinkmesh_receipt": receipt_json}


def chunk_body(parsed: ParsedRequest, request_id: str, created: int, model_name: str, choices: list[dict]) -> dict:
    kind = "chat.completion.chunk" if parsed.kind == "chat" else "text_completion"
    return {"id": request_id, "object": kind, "created": created, "model": model_name, "choices": choices}


def chunk_choice(parsed: ParsedRequest, index: int, text: str | None, finish_reason: str | None = None,
                 role: bool = False) -> dict:
    if parsed.kind == "chat":
        delta = {} if text is None and not role else {"content": text or ""}
        if role:
            delta["role"] = "assistant"
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
