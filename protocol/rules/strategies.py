"""GRPO strategies: the sampling and objective settings a node chooses and declares.

A node is free to pick its strategy; it declares it inside every `Contribution`, and the
coordinator's verifier recomputes the node's advantages and loss from that declaration with
`thinkmesh.protocol.rules.grpo`. So a `StrategySpec` carries only wire-safe scalars (str, int,
float, bool), and `validate_strategy` is the one gate both sides pass it through: a spec that
validates here is one whose objective is well defined.

Presets follow each paper's published settings where the paper gives them:

- grpo     DeepSeekMath (Shao et al., 2024, arXiv:2402.03300): eps 0.2, KL beta 0.04.
- dr_grpo  Dr. GRPO (Liu et al., 2025, arXiv:2503.20783): eps 0.2, no KL.
- dapo     DAPO (Yu et al., 2025, arXiv:2503.14476): eps_low 0.2, eps_high 0.28, no KL,
           dynamic sampling, overlong buffer 1/5 of the generation budget (4096 of 20480).
- gspo     GSPO (Zheng et al., 2025, arXiv:2507.18071): sequence-ratio clip 3e-4 / 4e-4, no KL.
- rloo     RLOO (Ahmadian et al., 2024, arXiv:2402.14740): leave-one-out baseline, eps 0.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from thinkmesh.protocol.rules.errors import ProtocolError

LOSS_VARIANTS: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "gspo", "rloo")
# Variants whose paper clips the ratio symmetrically; for these eps_high must equal eps_low,
# so that a contribution labelled "grpo" really optimises the DeepSeekMath objective.
SYMMETRIC_CLIP_VARIANTS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo")

MAX_NAME_BYTES = 64  # UTF-8 bytes: the name is what a node registers on chain (LedgerStorage.MAX_STRATEGY_BYTES)
MIN_GROUP_SIZE = 2  # a group-relative baseline needs at least one other sample
MAX_GROUP_SIZE = 1024
MAX_NEW_TOKENS_LIMIT = 1 << 20

DEFAULT_GROUP_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


class StrategyError(ProtocolError):
    """A strategy declaration whose field is missing, mistyped or outside its allowed range."""


@dataclass(frozen=True)
class StrategySpec:
    """One node's declared GRPO strategy; wire-safe scalars only (str/int/float/bool).

    Units: `max_new_tokens` and `overlong_buffer` are tokens; `eps_low`/`eps_high` bound the
    importance ratio to [1 - eps_low, 1 + eps_high]; `beta` weighs the per-token k3 KL to the
    reference policy (0 disables it). Construct freely, then pass through `validate_strategy`
    before use: construction itself does not check, so a decoder can build one from untrusted
    bytes and get a precise `StrategyError` back instead of a `TypeError`.
    """

    name: str
    loss: str
    group_size: int
    temperature: float
    top_p: float
    max_new_tokens: int
    eps_low: float
    eps_high: float
    beta: float
    dynamic_sampling: bool
    overlong_buffer: int


def _fail(field: str, expected: str, value: object) -> StrategyError:
    return StrategyError(f"strategy field {field!r}: expected {expected}, got {value!r}")


def _check_int(spec: StrategySpec, field: str, low: int, high: int) -> int:
    value = getattr(spec, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, f"an int in [{low}, {high}]", value)
    if not low <= value <= high:
        raise _fail(field, f"an int in [{low}, {high}]", value)
    return value


def _check_float(
    spec: StrategySpec, field: str, expected: str, ok: Callable[[float], bool]
) -> float:
    """Accepts int or float (wire formats may drop a trailing .0); returns a finite float."""
    value = getattr(spec, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, expected, value)
    as_float = float(value)
    if not math.isfinite(as_float) or not ok(as_float):
        raise _fail(field, expected, value)
    return as_float


def validate_strategy(spec: StrategySpec) -> StrategySpec:
    """Returns `spec` with numeric fields normalised (ints in float fields become floats).

    Raises `StrategyError` naming the first bad field, what it must be, and what came.
    Deterministic and pure: node and verifier accept exactly the same declarations.
    """
    if not isinstance(spec, StrategySpec):
        raise StrategyError(f"expected a StrategySpec, got {type(spec).__name__}")
    name = spec.name
    if not isinstance(name, str) or not 1 <= len(name.encode()) <= MAX_NAME_BYTES or not name.isprintable():
        raise _fail("name", f"a printable str of 1..{MAX_NAME_BYTES} UTF-8 bytes", name)
    if spec.loss not in LOSS_VARIANTS:
        raise _fail("loss", f"one of {', '.join(LOSS_VARIANTS)}", spec.loss)
    _check_int(spec, "group_size", MIN_GROUP_SIZE, MAX_GROUP_SIZE)
    max_new_tokens = _check_int(spec, "max_new_tokens", 1, MAX_NEW_TOKENS_LIMIT)
    temperature = _check_float(spec, "temperature", "a finite float > 0", lambda v: v > 0)
    top_p = _check_float(spec, "top_p", "a float in (0, 1]", lambda v: 0 < v <= 1)
    eps_low = _check_float(spec, "eps_low", "a float in (0, 1)", lambda v: 0 < v < 1)
    eps_high = _check_float(spec, "eps_high", "a finite float > 0", lambda v: v > 0)
    if spec.loss in SYMMETRIC_CLIP_VARIANTS and eps_high != eps_low:
        expected = f"equal to eps_low={eps_low!r} for the symmetric variant {spec.loss!r}"
        raise _fail("eps_high", expected, eps_high)
    beta = _check_float(spec, "beta", "a finite float >= 0", lambda v: v >= 0)
    if not isinstance(spec.dynamic_sampling, bool):
        raise _fail("dynamic_sampling", "a bool", spec.dynamic_sampling)
    _check_int(spec, "overlong_buffer", 0, max_new_tokens - 1)
    return replace(
        spec, temperature=temperature, top_p=top_p, eps_low=eps_low, eps_high=eps_high, beta=beta
    )


def _preset(loss: str, **overrides: object) -> StrategySpec:
    base = dict(
        name=loss,
        loss=loss,
        group_size=DEFAULT_GROUP_SIZE,
        temperature=DEFAULT_TEMPERATURE,
        top_p=DEFAULT_TOP_P,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        eps_low=0.2,
        eps_high=0.2,
        beta=0.0,
        dynamic_sampling=False,
        overlong_buffer=0,
    )
    base.update(overrides)
    return validate_strategy(StrategySpec(**base))


PRESETS: dict[str, StrategySpec] = {
    "grpo": _preset("grpo", beta=0.04),
    "dr_grpo": _preset("dr_grpo"),
    "dapo": _preset(
        "dapo", eps_high=0.28, dynamic_sampling=True, overlong_buffer=DEFAULT_MAX_NEW_TOKENS // 5
    ),
    "gspo": _preset("gspo", eps_low=3e-4, eps_high=4e-4),
    "rloo": _preset("rloo"),
}

STRATEGY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(StrategySpec))


def strategy_from_name(name: str) -> StrategySpec:
    """The preset called `name`; raises `StrategyError` listing the known presets otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise StrategyError(
            f"unknown strategy preset {name!r}: expected one of {', '.join(PRESETS)}"
        ) from None
