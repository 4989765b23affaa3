"""The round's terms: what a contribution must have been sampled under, fixed by the announcement.

A node chooses its loss variant freely, but the sampling terms (temperature, top_p, group size,
max_new_tokens) are the coordinator's: each is a small allowed set in the announcement, the node's
declared strategy takes its values from those sets (`strategy_under_terms` picks them for a node
whose preferred values are not allowed), and the verifier refuses a declaration outside them
(`terms_findings`, reason `off-terms`). With the prompts per node fixed too, the work behind a
contribution, its pay (per prompt) and its size on the wire are bounded by the announcement alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from thinkmesh.protocol.rules.errors import EncodingError
from thinkmesh.protocol.rules.strategies import StrategySpec, validate_strategy

TERM_FIELDS = (("temperatures", "temperature"), ("top_ps", "top_p"), ("group_sizes", "group_size"),
               ("max_new_tokens", "max_new_tokens"))
MAX_TERMS_CHOICES = 8  # per allowed set: "small" sets, so every choice is cheap to bound and verify


@dataclass(frozen=True)
class RoundTerms:
    """The sampling terms of one round, each a small allowed set (one value fixes it)."""

    temperatures: tuple[float, ...] = (1.0,)
    top_ps: tuple[float, ...] = (1.0,)
    group_sizes: tuple[int, ...] = (8,)
    max_new_tokens: tuple[int, ...] = (512,)

    def __post_init__(self) -> None:
        for name, low, high in (("temperatures", 0.0, 16.0), ("top_ps", 0.0, 1.0),
                                ("group_sizes", 2, 1024), ("max_new_tokens", 1, 1 << 20)):
            values = getattr(self, name)
            if not 1 <= len(values) <= MAX_TERMS_CHOICES or len(set(values)) != len(values):
                raise EncodingError(f"round terms {name}: expected 1..{MAX_TERMS_CHOICES} distinct values, got {values!r}")
            for value in values:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise EncodingError(f"round terms {name}: expected numbers, got {value!r}")
                if name in ("group_sizes", "max_new_tokens") and not isinstance(value, int):
                    raise EncodingError(f"round terms {name}: expected integers, got {value!r}")
                if name in ("temperatures", "top_ps"):
                    inside, bounds = low < value <= high, f"({low}, {high}]"
                else:
                    inside, bounds = low <= value <= high, f"[{low}, {high}]"
                if not inside:
                    raise EncodingError(f"round terms {name}: {value!r} is outside {bounds}")

    @property
    def max_group_size(self) -> int:
        return max(self.group_sizes)

    @property
    def max_tokens(self) -> int:
        return max(self.max_new_tokens)




def _closest(value, allowed):
    return min(allowed, key=lambda option: (abs(option - value), option))


def strategy_under_terms(spec: StrategySpec, terms: RoundTerms) -> StrategySpec:
    """`spec` with each sampling value outside the round's set replaced by the closest allowed one
    (ties: the smaller). DAPO's overlong buffer follows a changed max_new_tokens (a fifth of it)."""
    changes = {}
    for allowed_name, field in TERM_FIELDS:
        allowed, value = getattr(terms, allowed_name), getattr(spec, field)
        if value not in allowed:
            changes[field] = _closest(value, allowed)
    if "max_new_tokens" in changes and spec.overlong_buffer:
        changes["overlong_buffer"] = changes["max_new_tokens"] // 5
    return validate_strategy(replace(spec, **changes)) if changes else spec


def off_terms(spec: StrategySpec, terms: RoundTerms) -> list[tuple[str, float, float]]:
    """(field, first allowed value, declared value) for each declared value outside its set."""
    return [
        (field, float(getattr(terms, allowed_name)[0]), float(getattr(spec, field)))
        for allowed_name, field in TERM_FIELDS
        if getattr(spec, field) not in getattr(terms, allowed_name)
    ]
