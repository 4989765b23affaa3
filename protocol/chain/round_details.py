"""A round's details on chain: its kind, its base model, its pay rate and its strategies' values.

`settleRoundWithDetails` publishes them with the settlement (events `RoundDescribed` and one
`StrategyValueRecorded` per strategy; the settlement hash covers them), so that a reader of the
chain alone can tell generation rounds from training rounds, name a model version of an adapter
round (base hash + the adapter hash `RoundOpened` carries), and compare strategies by what their
contributions did to the model.

**Strategy values.** The coordinator values contributions by `protocol/rules/contribution_value.py` (the
change in expected reward on the round's public validation batch from one update alone, in reward
units). `strategy_values` summarises one round's values per strategy as (count, mean, sample
standard deviation), in fixed point with `SCORE_SCALE` = 1.0. The strategy is the contribution's
objective (`StrategySpec.loss`, one of `strategies.LOSS_VARIANTS`): verified, and few, so the
settlement's extra gas is bounded (the contract takes at most `MAX_STRATEGY_VALUES`). A reader pools
rounds exactly (`ValueSummary.pool`: the pooled mean and sample variance of every value behind the
summaries) and takes a normal-approximation interval, mean ± z·sd/√n, the rule bench/strategies.py
reports with.

No I/O. Units: token amounts in the token's smallest unit, values in reward units.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from thinkmesh.protocol.chain.errors import LedgerRecordError
from thinkmesh.protocol.rules.value_summary import ValueSummary
from thinkmesh.protocol.rules.generation import ROUND_KIND_GENERATION, ROUND_KIND_TRAINING, ROUND_KINDS
from thinkmesh.protocol.chain.ledger import (
    DETAILS_ABI_TYPE,
    INT64_MAX,
    INT64_MIN,
    MAX_STRATEGY_BYTES,
    UINT32_MAX,
    UINT64_MAX,
    UINT96_MAX,
    hash32,
)
from thinkmesh.protocol.rules.payout import SCORE_SCALE

ZERO_HASH = b"\x00" * 32
MAX_STRATEGY_VALUES = 16  # the contract's bound on StrategyValue entries per round
ROUND_DETAILS_ABI_TYPE = DETAILS_ABI_TYPE  # (kind, baseModelHash, rewardRate, (strategy, count, mean, sd)[])
KIND_CODES = {ROUND_KIND_TRAINING: 0, ROUND_KIND_GENERATION: 1}  # the contract's RoundKind enum


def kind_name(code: int) -> str:
    """The round kind (`protocol/rules/generation.py`) of the contract's `RoundKind` code."""
    for name, value in KIND_CODES.items():
        if value == code:
            return name
    raise LedgerRecordError(f"expected a RoundKind code in {sorted(KIND_CODES.values())}, got {code!r}")


def _int(value: int, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LedgerRecordError(f"expected {what} as an integer in {low}..{high}, got {value!r}")
    return value


@dataclass(frozen=True)
class StrategyValue:
    """One strategy's values in one round: `contributions` values, their mean and sample standard
    deviation in fixed point (`SCORE_SCALE` = 1.0 reward unit; `value_sd` 0 for a single value)."""

    strategy: str
    contributions: int
    mean_value: int
    value_sd: int

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not 1 <= len(self.strategy.encode()) <= MAX_STRATEGY_BYTES:
            raise LedgerRecordError(f"expected a strategy name of 1..{MAX_STRATEGY_BYTES} bytes, got {self.strategy!r}")
        _int(self.contributions, 1, UINT32_MAX, "contributions")
        _int(self.mean_value, INT64_MIN, INT64_MAX, "mean_value * SCORE_SCALE")
        _int(self.value_sd, 0, UINT64_MAX, "value_sd * SCORE_SCALE")

    @property
    def summary(self) -> ValueSummary:
        return ValueSummary(self.contributions, self.mean_value / SCORE_SCALE, self.value_sd / SCORE_SCALE)

    def as_abi(self) -> tuple[str, int, int, int]:
        return (self.strategy, self.contributions, self.mean_value, self.value_sd)


@dataclass(frozen=True)
class RoundDetails:
    """What `settleRoundWithDetails` publishes besides the awards and the round's metrics.

    `reward_rate` is the round's pay rate in token units: per verified prompt at score 1.0 in a
    training round, per accepted trace in a generation round. `base_model_hash` is the frozen base
    of an adapter round, zero otherwise.
    """

    kind: str = ROUND_KIND_TRAINING
    base_model_hash: bytes = ZERO_HASH
    reward_rate: int = 0
    values: tuple[StrategyValue, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ROUND_KINDS:
            raise LedgerRecordError(f"expected a round kind in {ROUND_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "base_model_hash", hash32(self.base_model_hash, "base model hash"))
        _int(self.reward_rate, 0, UINT96_MAX, "reward_rate")
        if len(self.values) > MAX_STRATEGY_VALUES:
            raise LedgerRecordError(f"expected at most {MAX_STRATEGY_VALUES} strategy values, got {len(self.values)}")
        if len({v.strategy for v in self.values}) != len(self.values):
            raise LedgerRecordError("expected one value summary per strategy, got a strategy twice")

    def as_abi(self) -> tuple[int, bytes, int, list[tuple[str, int, int, int]]]:
        return (KIND_CODES[self.kind], self.base_model_hash, self.reward_rate, [v.as_abi() for v in self.values])

    def to_json(self) -> dict:
        return {"kind": self.kind, "base_model_hash": self.base_model_hash.hex(), "reward_rate": str(self.reward_rate),
                "values": [[v.strategy, v.contributions, v.mean_value, v.value_sd] for v in self.values]}

    @classmethod
    def from_json(cls, raw: dict) -> RoundDetails:
        return cls(kind=str(raw["kind"]), base_model_hash=bytes.fromhex(raw["base_model_hash"]),
                   reward_rate=int(raw["reward_rate"]),
                   values=tuple(StrategyValue(s, int(n), int(m), int(sd)) for s, n, m, sd in raw["values"]))


def fixed_value(summary: ValueSummary, strategy: str) -> StrategyValue:
    """A summary as the contract stores it: mean and sd in fixed point with `SCORE_SCALE` = 1.0."""
    return StrategyValue(strategy, summary.count, round(summary.mean * SCORE_SCALE), round(summary.sd * SCORE_SCALE))


def strategy_values(values: Iterable[tuple[str, float]]) -> tuple[StrategyValue, ...]:
    """One round's (strategy, value) pairs summarised per strategy, in strategy-name order."""
    by_strategy: dict[str, list[float]] = defaultdict(list)
    for strategy, value in values:
        if not math.isfinite(value):
            raise LedgerRecordError(f"expected finite contribution values, got {value!r} for {strategy!r}")
        by_strategy[strategy].append(float(value))
    if len(by_strategy) > MAX_STRATEGY_VALUES:
        raise LedgerRecordError(f"expected at most {MAX_STRATEGY_VALUES} strategies, got {len(by_strategy)}")
    return tuple(fixed_value(ValueSummary.of(by_strategy[s]), s) for s in sorted(by_strategy))


# ---------------------------------------------------------------------- the events, as read


@dataclass(frozen=True)
class RoundDetailsRecord:
    """One `RoundDescribed` event."""

    round_id: int
    kind: str
    base_model_hash: bytes
    reward_rate: int
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class StrategyValueRecord:
    """One `StrategyValueRecorded` event, its fixed-point figures as floats (reward units)."""

    round_id: int
    strategy: str
    contributions: int
    mean_value: float
    value_sd: float
    block_number: int
    tx_hash: bytes

    @property
    def summary(self) -> ValueSummary:
        return ValueSummary(self.contributions, self.mean_value, self.value_sd)
