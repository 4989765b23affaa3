"""What one contribution to a round may cost the coordinator: its byte bound and its token terms.

An upload header announces its size before any of the body is read, so the coordinator can refuse
anything larger than an honest contribution to this round could be. The bound is arithmetic over
the round's terms and the model, never over what a node declares:

    samples   prompts_per_node x largest group size x (largest max_new_tokens x TOKEN_WIRE_BYTES
              + SAMPLE_WIRE_BYTES)
    gradient  every parameter tensor at the largest wire size any accepted compression gives it
              (`gradient_byte_bound`: float32 for `none`, codebooks and block scales for 8-bit modes)
    envelope  ENVELOPE_BYTES plus the run id (UTF-8, at most 4 bytes a character)

capped at the configured `max_contribution_bytes`. A generation round's contribution carries an empty
gradient (`protocol/rules/generation.py`), so its bound has no gradient term. The terms (allowed group sizes and generation
budgets) come from `announcement.terms` when the announcement carries them and fall back to the
protocol's own limits (`strategies.MAX_GROUP_SIZE`, `MAX_NEW_TOKENS_LIMIT`) when it does not, so
this module reads announcements from before and after `RoundTerms` alike.

The same terms bound the verifier's work: `terms_violation` names a declared strategy whose group
or generation budget the round does not allow, before any model runs on it.

Guarantees: pure functions, no I/O; every bound is an upper bound on the canonical encoding
(`protocol/rules/encoding.py`: msgpack, smallest integer widths, float64 only), so an honest
contribution within the terms always fits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from thinkmesh.protocol.rules.generation import is_generation
from thinkmesh.protocol.rules.gradient_codec import BLOCKWISE_BLOCK, CODEBOOK_SIZE, MIN_QUANTIZED_NUMEL
from thinkmesh.protocol.rules.messages import KiB
from thinkmesh.protocol.rules.strategies import MAX_GROUP_SIZE, MAX_NEW_TOKENS_LIMIT, StrategySpec

TOKEN_WIRE_BYTES = 18  # a token id (msgpack uint, at most 9 bytes) and its logprob (float64, 9 bytes)
SAMPLE_WIRE_BYTES = 96  # the rest of a sample: prompt index, two array headers, four float64 rewards
TENSOR_WIRE_BYTES = 128  # one tensor's blob record and protobuf fields, its name and shape aside
ENVELOPE_BYTES = 4 * KiB  # type, version, keys, hashes, signature, strategy, array headers
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class RoundTermsView:
    """The terms a bound is computed from: the announcement's, or the protocol limits.

    `group_sizes` / `max_new_tokens` are the allowed sets, or None where the announcement carries
    no terms (then any value up to `max_group_size` / `max_tokens` is allowed)."""

    prompts_per_node: int
    group_sizes: tuple[int, ...] | None
    max_new_tokens: tuple[int, ...] | None

    @property
    def max_group_size(self) -> int:
        return max(self.group_sizes) if self.group_sizes else MAX_GROUP_SIZE

    @property
    def max_tokens(self) -> int:
        return max(self.max_new_tokens) if self.max_new_tokens else MAX_NEW_TOKENS_LIMIT


def _allowed(terms, name: str) -> tuple[int, ...] | None:
    values = getattr(terms, name, None) if terms is not None else None
    if not values:  # absent or empty: the protocol limit stands
        return None
    return tuple(int(v) for v in values)


def round_terms(announcement) -> RoundTermsView:
    """The cost-relevant terms of `announcement` (see the module docstring for the fallback)."""
    terms = getattr(announcement, "terms", None)
    return RoundTermsView(
        prompts_per_node=announcement.prompts_per_node,
        group_sizes=_allowed(terms, "group_sizes"),
        max_new_tokens=_allowed(terms, "max_new_tokens"),
    )


def samples_byte_bound(terms: RoundTermsView) -> int:
    per_sample = terms.max_tokens * TOKEN_WIRE_BYTES + SAMPLE_WIRE_BYTES
    return terms.prompts_per_node * terms.max_group_size * per_sample


def _buffer_bound(compression: str, shape: tuple[int, ...]) -> int:
    """The largest buffer `decode_gradient` accepts for one tensor under `compression`."""
    numel = math.prod(shape)
    if compression == "none":
        return FLOAT32_BYTES * numel
    if compression == "fp16":
        return 2 * numel
    if numel < MIN_QUANTIZED_NUMEL:  # 8-bit modes send small tensors as meanstd16 or float32
        rows = numel // shape[-1] if shape and shape[-1] else 0
        return max(FLOAT32_BYTES * numel, 2 * numel + 8 * rows)
    if compression == "uniform8":
        return 8 + FLOAT32_BYTES * CODEBOOK_SIZE + numel
    return 16 + FLOAT32_BYTES * -(-numel // BLOCKWISE_BLOCK) + numel  # blockwise8


def gradient_byte_bound(shapes: Mapping[str, tuple[int, ...]], compressions: Iterable[str]) -> int:
    """Bytes of the largest gradient payload the model's shapes admit under any of `compressions`."""
    modes = tuple(compressions)
    return sum(
        max(_buffer_bound(mode, tuple(shape)) for mode in modes) + TENSOR_WIRE_BYTES + 4 * len(name) + 10 * len(shape)
        for name, shape in shapes.items()
    )


def contribution_byte_bound(
    announcement, shapes: Mapping[str, tuple[int, ...]], compressions: Iterable[str], cap: int,
) -> int:
    """The most bytes an honest contribution to `announcement` can take, at most `cap`."""
    envelope = ENVELOPE_BYTES + 4 * len(announcement.run_id)
    gradient = 0 if is_generation(announcement) else gradient_byte_bound(shapes, compressions)
    total = samples_byte_bound(round_terms(announcement)) + gradient + envelope
    return min(cap, total)


def terms_violation(strategy: StrategySpec, terms: RoundTermsView) -> str | None:
    """Why `strategy` (validated) is outside the round's terms, or None when it is within them."""
    checks = (("group_size", strategy.group_size, terms.group_sizes, terms.max_group_size),
              ("max_new_tokens", strategy.max_new_tokens, terms.max_new_tokens, terms.max_tokens))
    for name, value, allowed, largest in checks:
        if allowed is not None and value not in allowed:
            return f"strategy {name} {value} is outside the round's terms (allowed: {list(allowed)[:8]})"
        if value > largest:
            return f"strategy {name} {value} is over the round's limit of {largest}"
    return None
