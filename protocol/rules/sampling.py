"""Sampling streams, the draw rule and the sampling proof: a node's samples are computed, not chosen.

**Streams.** Every row of a round's rollouts has its own stream of uniforms, a pure function of
public values only:

    row key   = sha256(SAMPLING_DOMAIN, round seed, node key, prompt index u32, row u32)
    block j   = sha256(row key, j u32)                       (32 bytes: four 64-bit words)
    u_t       = (word t of the concatenated blocks >> 11) / 2**53        in [0, 1)

No device generator is involved (a CUDA generator's stream differs from the CPU's), so a node on
any GPU and a verifier on any CPU draw the same u_t. The row index is the sample's position in its
prompt's group (0..G-1).

**Draw.** At step t the node turns its logits into the round's distribution (`token_distribution`:
softmax(logits.float() / T), then the nucleus of top_p: tokens sorted by probability, kept while
the mass before them is < top_p, the rest zeroed) and takes the inverse CDF at u_t in vocabulary
order: the first token whose float64 cumulative mass exceeds u_t times the total (`draw_token`).

**Proof.** The verifier recomputes the same distribution from its own forward (the one it already
runs to re-score logprobs) and checks that u_t * total lies inside the claimed token's interval
[cdf before it, cdf through it] (`draw_gaps`: how far outside, as a share of the total mass; 0 when
inside). Two machines' logits differ by kernel order, so a draw that lands within that noise of an
interval edge may resolve differently: a gap up to `SAMPLING_TOLERANCE_FP32` (float32 models) is
accepted. A node that sampled at another temperature or top_p, picked tokens by hand, or skipped
sampling altogether leaves gaps of order 1 at its first forged token: `sampling-mismatch`.

**Stop.** A completion ends at its first stop token (EOS or a single-token stop string) or at a
multi-token stop string, or else has exactly max_new_tokens tokens (`stop_findings`): a node cannot
cut a sample short or run it past a stop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SAMPLING_DOMAIN = b"thinkmesh/sampling-stream/v1"
SAMPLING_TOLERANCE_FP32 = 1e-4  # share of probability mass; measured honest gaps: docs/verification.md
SAMPLING_TOLERANCE_BF16 = 2e-2
_WORDS_PER_BLOCK = 4
_UNIFORM_SCALE = float(1 << 53)


def row_key(round_seed: bytes, node_key: bytes, prompt_index: int, row: int) -> bytes:
    """The 32-byte key of one row's stream (see the module docstring)."""
    if prompt_index < 0 or row < 0:
        raise ValueError(f"prompt index and row must be non-negative, got {prompt_index}, {row}")
    return hashlib.sha256(
        SAMPLING_DOMAIN + len(round_seed).to_bytes(4, "big") + round_seed + len(node_key).to_bytes(4, "big")
        + node_key + prompt_index.to_bytes(4, "big") + row.to_bytes(4, "big")
    ).digest()


def stream_uniforms(key: bytes, steps: int) -> list[float]:
    """The first `steps` uniforms of the stream keyed by `key`, each a multiple of 2**-53 in [0, 1)."""
    return uniforms_tensor([key], steps)[0].tolist()


def uniforms_tensor(keys: Sequence[bytes], steps: int) -> Tensor:
    """[len(keys), steps] float64: row i holds the first `steps` uniforms of the stream keyed by
    `keys[i]`: block b of a stream is sha256(key, b as 4 big-endian bytes), read as four big-endian
    64-bit words, each word's top 53 bits times 2**-53 (exact in float64)."""
    blocks = -(-steps // _WORDS_PER_BLOCK)
    digests = b"".join(hashlib.sha256(key + block.to_bytes(4, "big")).digest() for key in keys for block in range(blocks))
    words = np.frombuffer(digests, dtype=">u8").reshape(len(keys), blocks * _WORDS_PER_BLOCK)[:, :steps]
    return torch.from_numpy((words >> np.uint64(11)).astype(np.float64) / _UNIFORM_SCALE)


def group_row_keys(round_seed: bytes, node_key: bytes, prompts: int, group_size: int) -> list[bytes]:
    """Keys of a node's rows in contribution order: prompt 0 rows 0..G-1, prompt 1, ..."""
    return [row_key(round_seed, node_key, p, r) for p in range(prompts) for r in range(group_size)]


def token_distribution(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """The round's distribution over the last axis of `logits` [..., V]: float32, sums to the nucleus'
    mass (not renormalised: `draw_token` scales its uniform by the total instead)."""
    if not temperature > 0:
        raise ValueError(f"sampling needs temperature > 0, got {temperature!r}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p  # keeps at least the top token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return probs


def draw_token(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse CDF in vocabulary order: probs [B, V], uniforms [B] -> tokens [B]."""
    cdf = probs.double().cumsum(dim=-1)
    target = (uniforms.to(cdf.device, torch.float64) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def draw_gaps(probs: Tensor, tokens: Tensor, uniforms: Tensor) -> Tensor:
    """How far each u * total lies outside its token's CDF interval, as a share of the total mass.

    probs [N, V] (one row per drawn token), tokens [N], uniforms [N] -> float64 [N], 0 inside."""
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1]
    high = cdf.gather(-1, tokens[:, None]).squeeze(-1)
    low = high - probs.double().gather(-1, tokens[:, None]).squeeze(-1)
    target = uniforms.to(cdf.device, torch.float64) * total
    gap = torch.clamp(torch.maximum(low - target, target - high), min=0.0)
    return (gap / total.clamp(min=1e-300)).cpu()


@dataclass(frozen=True)
class DrawCheck:
    """What the verifier's forward needs to replay draws: the round's terms and each row's uniforms."""

    temperature: float
    top_p: float
    uniforms: Tensor  # [N, T] float64, row i for completion i


GAP_CHUNK_ELEMENTS = 1 << 22  # positions x vocabulary per step: bounds the float64 CDF's memory (32 MiB)


def completion_draw_gaps(logits: Tensor, targets: Tensor, mask: Tensor, check: DrawCheck) -> Tensor:
    """`draw_gaps` of every completion token: logits [N, T, V] at the positions that drew targets
    [N, T] -> float64 [N, T], 0 on padding. The real positions of all rows are taken together and
    replayed in chunks of positions, so a 150k-token vocabulary costs a bounded float64 CDF, not one
    of N x T x V, and a small one costs a few calls, not a few per row."""
    n, width = targets.shape
    gaps = torch.zeros((n, width), dtype=torch.float64)
    step = max(1, GAP_CHUNK_ELEMENTS // logits.shape[-1])
    with torch.no_grad():
        real = mask.to("cpu").bool()
        rows, columns = real.nonzero(as_tuple=True)
        device_rows, device_columns = rows.to(logits.device), columns.to(logits.device)
        uniforms = check.uniforms[rows, columns]
        for start in range(0, len(rows), step):
            at = slice(start, start + step)
            probs = token_distribution(logits[device_rows[at], device_columns[at]], check.temperature, check.top_p)
            gaps[rows[at], columns[at]] = draw_gaps(probs, targets[device_rows[at], device_columns[at]], uniforms[at])
    return gaps


@dataclass(frozen=True)
class StopRule:
    """Token ids that end a sample, plus stop strings that span several tokens (checked on text)."""

    token_ids: frozenset[int]
    multi_token_strings: tuple[str, ...] = ()


STOP_STRINGS = ("</answer>",)


def stop_rule_for(tokenizer, stop_strings: Sequence[str] = STOP_STRINGS) -> StopRule:
    """EOS plus each stop string: a single-token string stops by id, a longer one by text."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    strings = []
    for text in stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
        else:
            strings.append(text)
    return StopRule(frozenset(ids), tuple(strings))


TEXT_STOP_WINDOW = 16  # tokens of tail decoded to look for a multi-token stop string


def text_stopped(tokenizer, token_ids: Sequence[int], rule: StopRule) -> bool:
    """True when the last `TEXT_STOP_WINDOW` tokens' text holds a multi-token stop string."""
    if not rule.multi_token_strings:
        return False
    tail = tokenizer.decode(list(token_ids[-TEXT_STOP_WINDOW:]))
    return any(s in tail for s in rule.multi_token_strings)


def stop_violation(token_ids: Sequence[int], rule: StopRule, max_new_tokens: int, tokenizer=None) -> str | None:
    """None when the completion ends as the rollout engine ends one; else what is wrong:
    "stop-inside" (a stop token before the last position: the sample ran past its end) or
    "cut-short" (no stop at the end, fewer than max_new_tokens tokens). Multi-token stop strings
    are checked only at the end (`tokenizer` needed for them)."""
    for position, token in enumerate(token_ids[:-1]):
        if token in rule.token_ids:
            return f"stop-inside:{position}"
    if token_ids and token_ids[-1] in rule.token_ids:
        return None
    if len(token_ids) >= max_new_tokens:
        return None
    if tokenizer is not None and text_stopped(tokenizer, token_ids, rule):
        return None
    return "cut-short"
