"""Token logprobs with each distinct prompt run once: the verifier's cheaper prefill.

A contribution holds G completions of each prompt, and `completion_logprobs` runs the prompt's
tokens G times. Here the distinct prompts run once (left-padded, KV cache kept), the cache rows
are gathered to one per completion, and the completions run against it: the same definition of a
token logprob (`protocol/rules/scoring.py`), the same [N, T] layout and mask, the same autograd graph
in value (the gather's backward sums each prompt's gradient over its completions), at the cost of
U prompts + N completions of tokens instead of N (prompt + completion). With G = 8 and prompts as
long as completions that is ~45% fewer tokens through the model.

Numerically this is a chunked prefill: it differs from one full prefill by float32 kernel order
(~1e-6 per token on CPU), which is the gap the node's own cached decode already has, far below
`SCORING_TOLERANCE_FP32`; gradients agree to cosine 1 - 1e-9 (tests/protocol/rules/test_verification.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from thinkmesh.protocol.rules.sampling import DrawCheck, completion_draw_gaps
from thinkmesh.protocol.rules.scoring import ScoredBatch, ScoringError, _check

# What one more completion batch costs, in padded completion tokens (its model call's fixed
# overhead; measured on CPU, tiny Qwen2: a few ms per call against ~0.05-0.1 ms per token).
BUCKET_CALL_TOKENS = 64


def cache_keyword(model) -> str:
    """transformers >= 5.2x names the KV cache argument `cache`; older releases `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def distinct_prompts(prompt_ids: Sequence[Sequence[int]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """(distinct prompts in first-seen order, row -> index into them)."""
    seen: dict[tuple[int, ...], int] = {}
    rows = [seen.setdefault(tuple(p), len(seen)) for p in prompt_ids]
    return list(seen), rows


def length_buckets(lengths: Sequence[int], call_tokens: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length: rows sorted by length, cut into runs
    minimising (rows x longest) summed over runs plus `call_tokens` per run (exact dynamic
    programme, O(N^2)). Deterministic; every row in exactly one bucket."""
    order = sorted(range(len(lengths)), key=lambda row: (lengths[row], row))
    best, cut = [0] + [None] * len(order), [0] * (len(order) + 1)  # best[j]: cost of the first j rows
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + call_tokens
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], len(order)
    while j > 0:
        buckets.append(order[cut[j]:j])
        j = cut[j]
    return buckets[::-1]


def shared_prefix_logprobs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    temperature: float,
    pad_token_id: int = 0,
    draw: DrawCheck | None = None,
) -> ScoredBatch:
    """`completion_logprobs` (same value, layout and graph) with each distinct prompt run once.

    Keeps the autograd graph when called with grad enabled; wrap in `torch.no_grad()` to score.
    `draw`: also replay every token's draw from these logits (the sampling proof; no extra forward).
    """
    from transformers import DynamicCache

    _check(prompt_ids, completion_ids, temperature)
    device = next(model.parameters()).device
    prompts, rows = distinct_prompts(prompt_ids)
    width_p = max(len(p) for p in prompts)
    width_c = max(len(c) for c in completion_ids)
    n = len(completion_ids)
    prompt_tokens = torch.full((len(prompts), width_p), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), width_p), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        prompt_tokens[row, width_p - len(prompt):] = torch.as_tensor(prompt)
        prompt_mask[row, width_p - len(prompt):] = 1
    targets = torch.full((n, width_c), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((n, width_c), dtype=torch.long)
    for row, completion in enumerate(completion_ids):
        targets[row, : len(completion)] = torch.as_tensor(list(completion))
        completion_mask[row, : len(completion)] = 1
    prompt_tokens, prompt_mask = prompt_tokens.to(device), prompt_mask.to(device)
    targets, completion_mask = targets.to(device), completion_mask.to(device)
    index = torch.as_tensor(rows, dtype=torch.long, device=device)

    cache = DynamicCache()
    keyword = cache_keyword(model)
    prompt_positions = (prompt_mask.cumsum(dim=-1) - 1).clamp(min=0)
    first = model(input_ids=prompt_tokens, attention_mask=prompt_mask, position_ids=prompt_positions,
                  use_cache=True, logits_to_keep=1, **{keyword: cache}).logits[:, -1]
    if cache.get_seq_length() != width_p:
        raise ScoringError(f"expected a KV cache of {width_p} prompt positions, got {cache.get_seq_length()}")
    prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
    attention = torch.cat([prompt_mask[index], completion_mask], dim=1)
    positions = prompt_mask.sum(dim=-1)[index, None] + torch.arange(width_c, device=device)[None, :]
    logits = first[index, None]
    if width_c > 1:
        lengths = [len(c) for c in completion_ids]
        parts, placed = [], []
        for bucket in length_buckets(lengths, BUCKET_CALL_TOKENS):
            chosen = torch.as_tensor(bucket, dtype=torch.long, device=device)
            width = max(lengths[r] for r in bucket)
            rows_cache = DynamicCache([(k[index[chosen]], v[index[chosen]]) for k, v in prompt_kv])
            part = logits[chosen]
            if width > 1:
                rest = model(input_ids=targets[chosen, : width - 1], attention_mask=attention[chosen, : width_p + width - 1],
                             position_ids=positions[chosen, : width - 1], use_cache=True, **{keyword: rows_cache}).logits
                part = torch.cat([part, rest], dim=1)
            parts.append(torch.nn.functional.pad(part, (0, 0, 0, width_c - width)))
            placed += bucket
        logits = torch.cat(parts)
        if placed != list(range(n)):
            inverse = torch.empty(n, dtype=torch.long)
            inverse[torch.as_tensor(placed)] = torch.arange(n)
            logits = logits.index_select(0, inverse.to(device))
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    mask = completion_mask.to(torch.float32)
    gaps = None if draw is None else completion_draw_gaps(logits.detach(), targets, completion_mask, draw)
    return ScoredBatch(logprobs=logprobs * mask, mask=mask, draw_gaps=gaps)
