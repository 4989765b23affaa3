"""The rollout engine: batched sampling with a KV cache, recording each token's logprob.

A protocol rule, not a node detail: it is the generation a verifier replays, the one a node's
contributions come from, and the one the held-out evaluation (`protocol.rules.evaluation`) uses, so the
coordinator's on-chain figure and a node's local one are computed by the same loop. One loop over
`past_key_values` (no `model.generate`), so every choice a verifier must reproduce is visible here:

- Layout: prompts are left-padded to a common length, position ids count real tokens only
  (`cumsum(mask) - 1`), exactly as `thinkmesh.protocol.rules.scoring` lays out its prefill.
- Recorded logprob: `log_softmax(logits.float() / temperature)[token]` — the tempered
  distribution *before* top-p truncation. Top-p changes which tokens can be drawn, not the value
  recorded, so the verifier needs only (model, prompt, completion, temperature) to reproduce it.
  Greedy decoding (temperature 0) records logprobs at temperature 1.
- Stop: a sample ends after emitting EOS or any stop string (the stop token is kept in the
  completion and has a logprob); otherwise at `max_new_tokens` ("length").
- Determinism: every row draws from its own public stream of uniforms
  (`thinkmesh.protocol.rules.sampling`: keyed by round seed, node key, prompt and row in the mesh), and
  a token is the inverse CDF of the round's distribution at the step's uniform. So a row's sample
  does not depend on which other rows share its batch, nor on the device: generating in smaller
  batches (`batch_size`, or after an out-of-memory fallback) or on another GPU gives the same
  completions, up to float-order noise in the logits, and a verifier replays each draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from thinkmesh.protocol.rules.prefix_scoring import cache_keyword
from thinkmesh.protocol.rules.sampling import (  # noqa: F401  (StopRule, stop_rule_for: the engine's public surface)
    TEXT_STOP_WINDOW, StopRule, draw_token, stop_rule_for, text_stopped, token_distribution, uniforms_tensor,
)

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample. `temperature` 0 means greedy; `top_p` 1.0 disables nucleus truncation."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64


@dataclass(frozen=True)
class Completion:
    """One sampled completion. `logprobs[i]` belongs to `token_ids[i]` (see module docstring)."""

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str  # FINISH_STOP or FINISH_LENGTH


ROW_SEED_BITS = 62


def row_keys(generator: torch.Generator | None, count: int) -> list[bytes]:
    """Private row stream keys drawn from `generator` (local training, benches); a mesh node uses
    the public `sampling.group_row_keys` instead."""
    device = generator.device if generator is not None else "cpu"
    draws = torch.randint(0, 1 << ROW_SEED_BITS, (count,), generator=generator, device=device)
    return [int(x).to_bytes(8, "big") for x in draws.tolist()]


def sample_next_token(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [B], recorded logprob [B]) from last-position logits [B, V] and the step's uniforms [B]."""
    logits = logits.float()
    if temperature <= 0:
        token = logits.argmax(dim=-1)
        return token, torch.log_softmax(logits, dim=-1).gather(-1, token[:, None]).squeeze(-1)
    token = draw_token(token_distribution(logits, temperature, top_p), uniforms)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return token, logprobs.gather(-1, token[:, None]).squeeze(-1)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L], attention mask [B, L]) with every sequence right-aligned at column L."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    stop: StopRule,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    tokenizer=None,
    batch_size: int | None = None,
    keys: Sequence[bytes] | None = None,
) -> list[Completion]:
    """Samples one completion per prompt (repeat a prompt G times for a group).

    `tokenizer` is needed only when `stop` has multi-token strings. `keys` (one stream key per
    prompt, see `thinkmesh.protocol.rules.sampling`) replace keys drawn from `generator`, so a caller can
    generate a slice of a batch on its own and a mesh node draws from its public streams.
    Cost per `batch_size` rows (default all): one prefill of the padded prompts, then one cached
    forward of width 1 per step until every sample of the batch stopped.
    """
    if not prompts:
        return []
    if stop.multi_token_strings and tokenizer is None:
        raise ValueError("expected a tokenizer to check multi-token stop strings, got None")
    if keys is None:  # greedy decoding draws nothing, so it leaves the generator untouched
        keys = row_keys(generator, len(prompts)) if settings.temperature > 0 else [b""] * len(prompts)
    if len(keys) != len(prompts):
        raise ValueError(f"expected one stream key per prompt ({len(prompts)}), got {len(keys)}")
    size = len(prompts) if not batch_size or batch_size < 1 else batch_size
    completions: list[Completion] = []
    for start in range(0, len(prompts), size):
        completions += _generate_batch(model, prompts[start: start + size], settings, stop, pad_token_id,
                                       _uniforms(keys[start: start + size], settings), tokenizer)
    return completions


def _uniforms(keys: Sequence[bytes], settings: SamplingSettings) -> torch.Tensor:
    if settings.temperature <= 0:
        return torch.zeros((len(keys), settings.max_new_tokens), dtype=torch.float64)
    return uniforms_tensor(keys, settings.max_new_tokens)


def _generate_batch(model, prompts, settings: SamplingSettings, stop: StopRule, pad_token_id: int,
                    uniforms: torch.Tensor, tokenizer) -> list[Completion]:
    from transformers import DynamicCache

    device = next(model.parameters()).device
    input_ids, attention = left_pad(prompts, pad_token_id, device)
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    cache = {cache_keyword(model): DynamicCache()}
    out = model(
        input_ids=input_ids, attention_mask=attention, position_ids=positions,
        use_cache=True, logits_to_keep=1, **cache,
    )
    batch = len(prompts)
    stop_ids = torch.tensor(sorted(stop.token_ids), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs, alive_steps = [], [], []
    next_position = positions[:, -1] + 1
    uniforms = uniforms.to(device)
    for step in range(settings.max_new_tokens):
        token, logprob = sample_next_token(out.logits[:, -1], settings.temperature, settings.top_p, uniforms[:, step])
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        logprobs.append(logprob)
        alive_steps.append(~finished)
        finished = finished | torch.isin(token, stop_ids)
        if stop.multi_token_strings:
            finished = finished | _text_stop(tokenizer, tokens, stop.multi_token_strings, device)
        if bool(finished.all()) or step == settings.max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones((batch, 1), dtype=attention.dtype, device=device)], dim=1)
        out = model(
            input_ids=token[:, None], attention_mask=attention, position_ids=next_position[:, None],
            use_cache=True, **cache,
        )
        next_position = next_position + 1
    return _collect(prompts, tokens, logprobs, alive_steps, stop, tokenizer)


def _text_stop(tokenizer, tokens: list[torch.Tensor], strings: tuple[str, ...], device) -> torch.Tensor:
    tail = torch.stack(tokens[-TEXT_STOP_WINDOW:], dim=1).tolist()
    hits = [any(s in tokenizer.decode(row) for s in strings) for row in tail]
    return torch.tensor(hits, dtype=torch.bool, device=device)


def _collect(prompts, tokens, logprobs, alive_steps, stop: StopRule, tokenizer) -> list[Completion]:
    token_rows = torch.stack(tokens, dim=1).tolist()
    logprob_rows = torch.stack(logprobs, dim=1).tolist()
    alive_rows = torch.stack(alive_steps, dim=1).tolist()
    completions = []
    for prompt, ids, lps, alive in zip(prompts, token_rows, logprob_rows, alive_rows):
        length = sum(alive)
        ids, lps = ids[:length], lps[:length]
        stopped = bool(ids) and (ids[-1] in stop.token_ids or text_stopped(tokenizer, ids, stop))
        completions.append(
            Completion(tuple(prompt), tuple(ids), tuple(lps), FINISH_STOP if stopped else FINISH_LENGTH)
        )
    return completions
