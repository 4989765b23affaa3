"""Contribution values summarised: per strategy, per round, pooled over rounds, with an interval.

Both the coordinator (which publishes each round's per-strategy summary on chain) and any reader
of the chain (the dashboard, bench/strategies.py) pool summaries the same way, so the rule lives
here, apart from the valuation itself (`contribution_value`, which needs a model): a reader pools
rounds exactly from (n, mean, sd) alone and takes the normal-approximation interval
mean ± z·sd/√n.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from thinkmesh.protocol.rules.errors import ProtocolError

Z_95 = 1.96  # the normal quantile of a two-sided 95% interval


class ValueSummaryError(ProtocolError):
    """A summary of no values: there is no mean to report."""


@dataclass(frozen=True)
class ValueSummary:
    """n values by their mean and sample standard deviation (floats, reward units)."""

    count: int
    mean: float
    sd: float

    @classmethod
    def of(cls, values: Sequence[float]) -> ValueSummary:
        n = len(values)
        if n == 0:
            raise ValueSummaryError("expected at least one value, got none")
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, sd)

    @classmethod
    def pool(cls, parts: Iterable[ValueSummary]) -> ValueSummary:
        """The summary of all the values behind `parts`: exact, since a part's n, mean and sd give
        its sum and its sum of squared deviations."""
        parts = [p for p in parts if p.count]
        n = sum(p.count for p in parts)
        if n == 0:
            raise ValueSummaryError("expected at least one value, got none")
        mean = sum(p.count * p.mean for p in parts) / n
        squares = sum((p.count - 1) * p.sd ** 2 + p.count * (p.mean - mean) ** 2 for p in parts)
        return cls(n, mean, math.sqrt(squares / (n - 1)) if n > 1 else 0.0)

    def half_width(self, z: float = Z_95) -> float:
        """Half-width of the normal-approximation interval of the mean: z * sd / sqrt(n); 0 for n < 2."""
        return z * self.sd / math.sqrt(self.count) if self.count > 1 else 0.0
