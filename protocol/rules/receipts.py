"""Inference receipts: what a server signs about one answer, and how anyone re-checks it.

A server that answers through `thinkmesh serve` draws every token exactly as a mesh node does
(`protocol/rules/sampling.py`), from a stream that is a pure function of public values, and signs an
`InferenceReceipt` that names everything the draw depended on. So an answer is computed, not
chosen, and anyone holding the model directory can replay it.

The rules, in the order of a receipt's life:

1. **Seed.** A client that passes an integer `seed` gets the public seed
   `public_seed(seed) = sha256(SEED_DOMAIN || seed as 8-byte signed big-endian)`, and the receipt
   records its integer (`client_seed`), so the client knows the server did not pick the
   randomness. Without one, the server picks 32 random bytes and publishes them (`client_seed`
   None): such a server could grind seeds until it likes an answer, within the model's
   distribution, so a client that cares passes its own seed.
2. **Streams.** Choice `r` of a request (its row) draws from the stream keyed by
   `receipt_row_key(seed, r) = sha256(ROW_DOMAIN || u32 len(seed) || seed || u32 r)`, turned into
   uniforms by `sampling.stream_uniforms` and into tokens by the round's draw rule
   (`sampling.token_distribution`, `sampling.draw_token`). Temperature 0 is greedy: the argmax,
   no draw.
3. **Receipt.** `InferenceReceipt` holds the server key, the model hash
   (`served_model_hash`: the same `parameters_hash` a model manifest commits to), the prompt's
   and every choice's token ids in full, the sampling settings, the stop rule, the seed, and the
   server's compute dtype. The ids travel in full, not as a hash: the re-check needs them, a
   receipt must stand alone as evidence, and their size is bounded by the context window.
   Signed with `messages.sign_message` under the domain (chain 0, run "serve",
   "inference-receipt", round 0): a receipt's signature verifies as nothing else.
4. **Re-check** (`recheck_receipt`), in order, stopping at the first failure:
   `bad-signature` (not the server key's signature), `seed-mismatch` (a client seed whose public
   seed is not the receipt's seed), `model-hash` (the local model hashes to
   something else), `token-range` (an id outside the vocabulary), `stop-rule` (a choice runs past
   a stop or ends short of one, or its finish reason says otherwise), then the replay:
   `draw-mismatch` (a sampled token whose draw lands more than the dtype's tolerance outside its
   interval, `sampling.draw_gaps`) or `not-argmax` (a greedy token more than the tolerance, in
   nats, below the best token's logprob). The result names the first differing token.

Encoding: the canonical msgpack of `protocol/rules/encoding.py` on the wire and for signatures; the
JSON form (`receipt_to_json`, `receipt_from_json`) is a faithful mapping of the same fields
(bytes as 0x-hex), so a receipt read back from JSON re-encodes to the bytes that were signed.
Pure: no I/O, no clock (a caller passes `created_ms`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from thinkmesh.protocol.rules.encoding import (
    Hash32, Message, PublicKey32, Signature64, record_from_json, record_to_json,
)
from thinkmesh.protocol.rules.errors import EncodingError, ProtocolError, SignatureError
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import EMPTY_SIGNATURE, KiB, MiB, sign_message, verify_message
from thinkmesh.protocol.rules.sampling import (
    SAMPLING_TOLERANCE_BF16, SAMPLING_TOLERANCE_FP32, DrawCheck, StopRule, draw_token, text_stopped,
    token_distribution, uniforms_tensor,
)

SEED_DOMAIN = b"thinkmesh/serve-seed/v1"
ROW_DOMAIN = b"thinkmesh/serve-stream/v1"
SERVE_RUN_ID = "serve"
FINISH_REASONS = ("stop", "length")
# Per compute dtype: (draw tolerance as a share of probability mass, greedy tolerance in nats).
TOLERANCES = {
    "float32": (SAMPLING_TOLERANCE_FP32, 1e-4),
    "bfloat16": (SAMPLING_TOLERANCE_BF16, 5e-2),
    "float16": (SAMPLING_TOLERANCE_BF16, 5e-2),
}
MAX_URL_CHARS = 512

# Re-check reasons, in the order they are checked.
OK = "ok"
BAD_SIGNATURE = "bad-signature"
SEED_MISMATCH = "seed-mismatch"
MODEL_HASH = "model-hash"
TOKEN_RANGE = "token-range"
STOP_RULE = "stop-rule"
DRAW_MISMATCH = "draw-mismatch"
NOT_ARGMAX = "not-argmax"


class ReceiptError(ProtocolError):
    """A receipt or server record that is malformed, or JSON that does not map to one."""


# ---- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceiptChoice:
    """One choice of an answer: its row (stream index), its token ids, why it ended."""

    row: int
    completion_ids: tuple[int, ...]
    finish_reason: str


@dataclass(frozen=True)
class InferenceReceipt(Message):
    """A server's signed statement of how one answer was computed (see the module docstring)."""

    TYPE = "inference-receipt"
    VERSION = 1
    MAX_BYTES = 8 * MiB
    chain_id: ClassVar[int] = 0  # the signing domain: no chain, the "serve" run, no round
    run_id: ClassVar[str] = SERVE_RUN_ID
    round_id: ClassVar[int] = 0

    server_key: PublicKey32
    model_hash: Hash32
    request_id: str
    created_ms: int
    prompt_ids: tuple[int, ...]
    temperature: float
    top_p: float
    max_new_tokens: int
    stop_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]  # the multi-token stop strings (single-token ones are ids)
    seed: Hash32
    client_seed: int | None
    dtype: str
    choices: tuple[ReceiptChoice, ...]
    signature: Signature64 = EMPTY_SIGNATURE

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise EncodingError("prompt_ids: expected at least one token")
        if not self.temperature >= 0:
            raise EncodingError(f"temperature: expected >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise EncodingError(f"top_p: expected in (0, 1], got {self.top_p!r}")
        if self.max_new_tokens < 1:
            raise EncodingError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.dtype not in TOLERANCES:
            raise EncodingError(f"dtype: expected one of {sorted(TOLERANCES)}, got {self.dtype!r}")
        if not self.choices:
            raise EncodingError("choices: expected at least one")
        for index, choice in enumerate(self.choices):
            if choice.row != index:
                raise EncodingError(f"choices[{index}].row: expected {index}, got {choice.row}")
            if not 1 <= len(choice.completion_ids) <= self.max_new_tokens:
                raise EncodingError(f"choices[{index}].completion_ids: expected 1..{self.max_new_tokens} tokens, "
                                    f"got {len(choice.completion_ids)}")
            if choice.finish_reason not in FINISH_REASONS:
                raise EncodingError(f"choices[{index}].finish_reason: expected one of {FINISH_REASONS}, "
                                    f"got {choice.finish_reason!r}")

    @property
    def stop_rule(self) -> StopRule:
        return StopRule(frozenset(self.stop_token_ids), tuple(self.stop_strings))


@dataclass(frozen=True)
class ServerAnnouncement(Message):
    """A server's signed offer, kept in the DHT: this key serves this model at this URL until then."""

    TYPE = "serve-announcement"
    VERSION = 1
    MAX_BYTES = 2 * KiB
    chain_id: ClassVar[int] = 0
    run_id: ClassVar[str] = SERVE_RUN_ID
    round_id: ClassVar[int] = 0

    server_key: PublicKey32
    model_hash: Hash32
    url: str
    expires_ms: int  # unix milliseconds
    signature: Signature64 = EMPTY_SIGNATURE

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")) or len(self.url) > MAX_URL_CHARS:
            raise EncodingError(f"url: expected an http(s) URL of at most {MAX_URL_CHARS} characters, got {self.url!r}")
        if self.expires_ms < 0:
            raise EncodingError(f"expires_ms: expected >= 0, got {self.expires_ms}")


# ---- seeds and streams ---------------------------------------------------------------------
def public_seed(client_seed: int) -> bytes:
    """The 32-byte public seed of a client's integer seed (rule 1)."""
    if not -(1 << 63) <= client_seed < (1 << 63):
        raise ReceiptError(f"seed: expected a signed 64-bit integer, got {client_seed}")
    return hashlib.sha256(SEED_DOMAIN + client_seed.to_bytes(8, "big", signed=True)).digest()


def receipt_row_key(seed: bytes, row: int) -> bytes:
    """The 32-byte stream key of choice `row` of an answer drawn under `seed` (rule 2)."""
    if row < 0:
        raise ReceiptError(f"row: expected >= 0, got {row}")
    return hashlib.sha256(ROW_DOMAIN + len(seed).to_bytes(4, "big") + seed + row.to_bytes(4, "big")).digest()


def served_model_hash(model) -> bytes:
    """The model hash a receipt names: `parameters_hash` of the model's parameters and canonical
    architecture, as a `ModelManifest` commits to it (so a mesh model version and a served one
    have the same hash). Hash the model as loaded in float32."""
    from thinkmesh.protocol.rules.model_manifest import model_hash

    return model_hash(model)


# ---- signing -------------------------------------------------------------------------------
def sign_receipt(receipt: InferenceReceipt, identity: NodeIdentity) -> InferenceReceipt:
    if receipt.server_key != identity.public_key:
        raise ReceiptError("server_key: a receipt is signed by the key it names")
    return sign_message(receipt, identity)


def sign_announcement(announcement: ServerAnnouncement, identity: NodeIdentity) -> ServerAnnouncement:
    if announcement.server_key != identity.public_key:
        raise ReceiptError("server_key: an announcement is signed by the key it names")
    return sign_message(announcement, identity)


def check_announcement(announcement: ServerAnnouncement, *, model_hash: bytes, now_ms: int) -> None:
    """Raises ProtocolError unless the announcement offers `model_hash`, is unexpired at `now_ms`
    and is signed by the key it names."""
    if announcement.model_hash != model_hash:
        raise ReceiptError(f"announcement offers model 0x{announcement.model_hash.hex()}, expected 0x{model_hash.hex()}")
    if announcement.expires_ms <= now_ms:
        raise ReceiptError(f"announcement expired at {announcement.expires_ms} ms (now {now_ms})")
    verify_message(announcement, announcement.server_key)


# ---- JSON form -----------------------------------------------------------------------------
def receipt_to_json(record: Any) -> Any:
    """A receipt (or any record of this module) as JSON-ready values: encoding.py's `record_to_json`."""
    return record_to_json(record)


def receipt_from_json(doc: Any, cls: type = InferenceReceipt) -> Any:
    """The inverse of `receipt_to_json`: ReceiptError names the field that does not map."""
    return record_from_json(doc, cls, ReceiptError)


# ---- re-check ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceiptCheck:
    """The re-check's verdict. On disagreement: the first failing choice and position, the
    receipt's token there and the token the replay gives (None where not computed)."""

    agrees: bool
    reason: str
    detail: str
    choice: int | None = None
    position: int | None = None
    claimed_token: int | None = None
    expected_token: int | None = None


def check_stop_rule(receipt: InferenceReceipt, tokenizer=None) -> ReceiptCheck | None:
    """None when every choice ends as the rollout engine ends one under the receipt's stop rule
    (`tokenizer` needed when the rule has multi-token strings); else the `stop-rule` failure."""
    rule = receipt.stop_rule
    if rule.multi_token_strings and tokenizer is None:
        raise ReceiptError("checking multi-token stop strings needs the model's tokenizer")
    for index, choice in enumerate(receipt.choices):
        ids = choice.completion_ids
        for position in range(len(ids) - 1):
            if ids[position] in rule.token_ids or text_stopped(tokenizer, ids[: position + 1], rule):
                return _failure(STOP_RULE, f"choice {index} runs past a stop at token {position}", index, position, ids)
        stopped = ids[-1] in rule.token_ids or text_stopped(tokenizer, ids, rule)
        if stopped != (choice.finish_reason == "stop"):
            return _failure(STOP_RULE, f"choice {index} says finish_reason {choice.finish_reason!r}, its tokens "
                            f"{'end at' if stopped else 'do not end at'} a stop", index, len(ids) - 1, ids)
        if not stopped and len(ids) != receipt.max_new_tokens:
            return _failure(STOP_RULE, f"choice {index} ends after {len(ids)} tokens without a stop "
                            f"(max_new_tokens {receipt.max_new_tokens})", index, len(ids) - 1, ids)
    return None


def recheck_receipt(receipt: InferenceReceipt, model, model_hash: bytes, tokenizer=None,
                    pad_token_id: int = 0) -> ReceiptCheck:
    """Re-checks `receipt` against `model` (whose `served_model_hash` the caller computed once:
    `model_hash`), in the order of the module docstring. Never raises on a bad receipt; raises
    ReceiptError only when the receipt's stop rule has multi-token strings and no `tokenizer` came."""
    try:
        verify_message(receipt, receipt.server_key)
    except SignatureError as exc:
        return ReceiptCheck(False, BAD_SIGNATURE, f"the receipt is not signed by its server key: {exc}")
    if receipt.client_seed is not None and public_seed(receipt.client_seed) != receipt.seed:
        return ReceiptCheck(False, SEED_MISMATCH, f"the receipt's seed 0x{receipt.seed.hex()} is not the public seed "
                            f"of its client seed {receipt.client_seed}")
    if model_hash != receipt.model_hash:
        return ReceiptCheck(False, MODEL_HASH, f"the model hashes to 0x{model_hash.hex()}, "
                            f"the receipt claims 0x{receipt.model_hash.hex()}")
    vocab = int(model.get_input_embeddings().num_embeddings)
    for index, ids in enumerate([receipt.prompt_ids] + [c.completion_ids for c in receipt.choices]):
        bad = [p for p, t in enumerate(ids) if not 0 <= t < vocab]
        if bad:
            where = "the prompt" if index == 0 else f"choice {index - 1}"
            return ReceiptCheck(False, TOKEN_RANGE, f"{where} has token {ids[bad[0]]} at {bad[0]}, outside 0..{vocab - 1}")
    stop = check_stop_rule(receipt, tokenizer)
    if stop is not None:
        return stop
    with torch.no_grad():
        if receipt.temperature > 0:
            return _replay_draws(receipt, model, pad_token_id)
        return _replay_greedy(receipt, model)


def _failure(reason: str, detail: str, choice: int, position: int, ids: Sequence[int],
             expected: int | None = None) -> ReceiptCheck:
    return ReceiptCheck(False, reason, detail, choice, position, int(ids[position]), expected)


def _choice_uniforms(receipt: InferenceReceipt) -> torch.Tensor:
    width = max(len(c.completion_ids) for c in receipt.choices)
    return uniforms_tensor([receipt_row_key(receipt.seed, c.row) for c in receipt.choices], width)


def _next_logits(model, prompt: Sequence[int], completion: Sequence[int]) -> torch.Tensor:
    """Logits [len(completion), V] at the positions that produced each completion token."""
    device = next(model.parameters()).device
    ids = torch.as_tensor([list(prompt) + list(completion[:-1])], dtype=torch.long, device=device)
    return model(input_ids=ids).logits[0, len(prompt) - 1:].float().cpu()


def _replay_draws(receipt: InferenceReceipt, model, pad_token_id: int) -> ReceiptCheck:
    from thinkmesh.protocol.rules.prefix_scoring import shared_prefix_logprobs

    tolerance = TOLERANCES[receipt.dtype][0]
    uniforms = _choice_uniforms(receipt)
    completions = [c.completion_ids for c in receipt.choices]
    scored = shared_prefix_logprobs(model, [receipt.prompt_ids] * len(completions), completions,
                                    receipt.temperature, pad_token_id,
                                    draw=DrawCheck(receipt.temperature, receipt.top_p, uniforms))
    for index, ids in enumerate(completions):
        gaps = scored.draw_gaps[index, : len(ids)]
        over = (gaps > tolerance).nonzero()
        if len(over):
            position = int(over[0, 0])
            logits = _next_logits(model, receipt.prompt_ids, ids[: position + 1])[-1:]
            expected = int(draw_token(token_distribution(logits, receipt.temperature, receipt.top_p),
                                      uniforms[index, position: position + 1])[0])
            return _failure(DRAW_MISMATCH, f"choice {index} token {position}: the receipt has {ids[position]}, the draw "
                            f"from the receipt's stream gives {expected} (gap {float(gaps[position]):.3g} of the "
                            f"mass, tolerance {tolerance:g})", index, position, ids, expected)
    tokens = sum(len(ids) for ids in completions)
    return ReceiptCheck(True, OK, f"all {tokens} tokens of {len(completions)} choice(s) replay from the receipt's streams")


def _replay_greedy(receipt: InferenceReceipt, model) -> ReceiptCheck:
    tolerance = TOLERANCES[receipt.dtype][1]
    tokens = 0
    for index, choice in enumerate(receipt.choices):
        ids = choice.completion_ids
        logprobs = torch.log_softmax(_next_logits(model, receipt.prompt_ids, ids), dim=-1)
        claimed = logprobs.gather(-1, torch.as_tensor(ids)[:, None]).squeeze(-1)
        best, argmax = logprobs.max(dim=-1)
        over = ((best - claimed) > tolerance).nonzero()
        if len(over):
            position = int(over[0, 0])
            return _failure(NOT_ARGMAX, f"choice {index} token {position}: the receipt has {ids[position]}, greedy "
                            f"decoding gives {int(argmax[position])} ({float(best[position] - claimed[position]):.3g} "
                            f"nats better, tolerance {tolerance:g})", index, position, ids, int(argmax[position]))
        tokens += len(ids)
    return ReceiptCheck(True, OK, f"all {tokens} tokens of {len(receipt.choices)} choice(s) are the greedy argmax")


__all__ = [
    "InferenceReceipt", "ReceiptCheck", "ReceiptChoice", "ReceiptError", "ServerAnnouncement", "check_announcement",
    "check_stop_rule", "public_seed", "receipt_from_json", "receipt_row_key", "receipt_to_json", "recheck_receipt",
    "served_model_hash", "sign_announcement", "sign_receipt",
]
