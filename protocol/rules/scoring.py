"""Token-logprob scoring: the verifier's one prefill over (prompt, completion) pairs.

Definition (the node's rollout engine records exactly this): the logprob of completion token
y_t is `log_softmax(logits_t.float() / temperature)[y_t]`, where logits_t is the model's output
at the position just before y_t given the prompt and y_<t. Temperature is part of the claim: a
node that sampled at T=0.7 is scored at T=0.7. Arithmetic after the logits is float32.

Layout: prompts left-padded to one width P, completions right-padded to one width T, position
ids counting real tokens only. This is the layout the rollout engine uses, so the two differ only
by kernel order (cached decode vs one prefill): on CPU in float32 the measured gap is ~1e-6
(`SCORING_TOLERANCE_FP32`); in bf16 expect ~1e-2 and compare at that scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from thinkmesh.protocol.rules.errors import ProtocolError

SCORING_TOLERANCE_FP32 = 1e-4  # max |recorded - rescored| / max(1, |rescored|) for float32 models
SCORING_TOLERANCE_BF16 = 5e-2


class ScoringError(ProtocolError):
    """Inputs that cannot be scored: mismatched lengths, empty completions, bad temperature."""


@dataclass(frozen=True)
class ScoredBatch:
    """Per-token logprobs [N, T] (float32; differentiable when computed with grad), the
    completion mask [N, T] (1 on real completion tokens), and, when draws were replayed
    (`protocol.rules.sampling.DrawCheck`), each token's draw gap [N, T] (float64, 0 on padding)."""

    logprobs: Tensor
    mask: Tensor
    draw_gaps: Tensor | None = None


def _check(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], temperature: float) -> None:
    if len(prompt_ids) != len(completion_ids):
        raise ScoringError(f"expected one completion per prompt, got {len(prompt_ids)} prompts and {len(completion_ids)} completions")
    if not prompt_ids:
        raise ScoringError("expected at least one (prompt, completion) pair, got none")
    if not temperature > 0:
        raise ScoringError(f"expected temperature > 0, got {temperature!r}")
    for index, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        if not prompt or not completion:
            raise ScoringError(f"pair {index}: expected a non-empty prompt and completion, got lengths {len(prompt)} and {len(completion)}")


def completion_logprobs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    temperature: float,
    pad_token_id: int = 0,
) -> ScoredBatch:
    """Logprobs of every completion token in one batched forward; keeps the autograd graph.

    The training step differentiates through this; the verifier calls `token_logprobs`.
    Only the last T+1 positions' logits are materialised (`logits_to_keep`), so memory is
    O(N * T * vocab), not O(N * (P + T) * vocab).
    """
    _check(prompt_ids, completion_ids, temperature)
    device = next(model.parameters()).device
    n = len(prompt_ids)
    width_p = max(len(p) for p in prompt_ids)
    width_c = max(len(c) for c in completion_ids)
    ids = torch.full((n, width_p + width_c), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, width_p + width_c), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
        ids[row, width_p - len(prompt): width_p] = torch.as_tensor(list(prompt))
        ids[row, width_p: width_p + len(completion)] = torch.as_tensor(list(completion))
        attention[row, width_p - len(prompt): width_p + len(completion)] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False, logits_to_keep=width_c + 1)
    logits = out.logits[:, :-1].float() / temperature
    targets = ids[:, width_p:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    mask = attention[:, width_p:].to(torch.float32)
    return ScoredBatch(logprobs=logprobs * mask, mask=mask)


@torch.no_grad()
def token_logprobs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    temperature: float,
    pad_token_id: int = 0,
    micro_batch_size: int = 64,
) -> list[list[float]]:
    """Per-token logprobs of each completion (one list per pair, its own length), no gradient.

    Scored in micro-batches of `micro_batch_size` pairs to bound memory on large vocabularies.
    """
    _check(prompt_ids, completion_ids, temperature)
    result: list[list[float]] = []
    for start in range(0, len(prompt_ids), micro_batch_size):
        chunk_p = prompt_ids[start: start + micro_batch_size]
        chunk_c = completion_ids[start: start + micro_batch_size]
        scored = completion_logprobs(model, chunk_p, chunk_c, temperature, pad_token_id)
        rows = scored.logprobs.cpu().tolist()
        result.extend(row[: len(c)] for row, c in zip(rows, chunk_c))
    return result


def max_logprob_gap(recorded: Sequence[Sequence[float]], rescored: Sequence[Sequence[float]]) -> float:
    """Largest |recorded - rescored| over all tokens; a verifier compares it to a tolerance."""
    if len(recorded) != len(rescored):
        raise ScoringError(f"expected {len(rescored)} recorded rows, got {len(recorded)}")
    gap = 0.0
    for index, (a, b) in enumerate(zip(recorded, rescored)):
        if len(a) != len(b):
            raise ScoringError(f"row {index}: expected {len(b)} recorded logprobs, got {len(a)}")
        gap = max([gap, *(abs(x - y) for x, y in zip(a, b))])
    return gap


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """The canonical token ids of a rendered prompt: the tokenizer's own special-token policy
    (`add_special_tokens=True`, e.g. a leading BOS where the model expects one). Node, verifier
    and cold start all encode prompts through this one function, so their ids agree."""
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def completion_text(tokenizer, completion_ids: Sequence[int]) -> str:
    """The text rewards are computed on: special tokens (pad, EOS) dropped, R1 tags kept."""
    return tokenizer.decode(list(completion_ids), skip_special_tokens=True)


def load_tokenizer(directory):
    """A model directory's tokenizer as every party must load it, left-padded.

    A `tokenizer.json` loads as exactly that (`PreTrainedTokenizerFast`): transformers 5's
    `AutoTokenizer` picks a class from the model's `model_type` instead, which for a character
    tokenizer in a Qwen2 directory silently drops spaces and newlines, and node and verifier must
    decode completions to the same text.
    """
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
