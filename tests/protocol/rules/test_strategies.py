"""StrategySpec validation and presets: the gate both node and verifier pass a declaration through."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.strategies import (
    LOSS_VARIANTS,
    PRESETS,
    STRATEGY_FIELDS,
    StrategyError,
    StrategySpec,
    strategy_from_name,
    validate_strategy,
)

WIRE_SCALARS = (str, int, float, bool)


def test_presets_cover_every_loss_variant_and_validate():
    assert set(PRESETS) == set(LOSS_VARIANTS)
    for name, spec in PRESETS.items():
        assert spec.name == name and spec.loss == name
        assert validate_strategy(spec) == spec


def test_presets_carry_only_wire_scalars_of_their_declared_type():
    for spec in PRESETS.values():
        for f in fields(spec):
            value = getattr(spec, f.name)
            assert type(value).__name__ == f.type, (f.name, value)
            assert isinstance(value, WIRE_SCALARS)
    assert STRATEGY_FIELDS == tuple(f.name for f in fields(StrategySpec))


def test_presets_follow_the_papers_settings():
    assert PRESETS["grpo"].beta == 0.04  # DeepSeekMath
    assert PRESETS["grpo"].eps_low == PRESETS["grpo"].eps_high == 0.2
    assert PRESETS["dr_grpo"].beta == 0.0  # Dr. GRPO drops the KL term
    dapo = PRESETS["dapo"]
    assert (dapo.eps_low, dapo.eps_high, dapo.beta) == (0.2, 0.28, 0.0)
    assert dapo.dynamic_sampling and 0 < dapo.overlong_buffer < dapo.max_new_tokens
    gspo = PRESETS["gspo"]
    assert (gspo.eps_low, gspo.eps_high) == (3e-4, 4e-4)
    assert not any(PRESETS[n].dynamic_sampling for n in ("grpo", "dr_grpo", "gspo", "rloo"))


def test_strategy_from_name_returns_the_preset():
    assert strategy_from_name("dapo") is PRESETS["dapo"]


def test_strategy_from_name_unknown_lists_known_presets():
    with pytest.raises(StrategyError, match=r"'ppo'.*grpo, dr_grpo, dapo, gspo, rloo"):
        strategy_from_name("ppo")


def test_strategy_error_is_a_protocol_error():
    assert issubclass(StrategyError, ProtocolError)


def test_validate_converts_int_floats_for_the_wire():
    spec = replace(PRESETS["grpo"], temperature=1, top_p=1, beta=0)
    valid = validate_strategy(spec)
    assert type(valid.temperature) is float and valid.temperature == 1.0
    assert type(valid.top_p) is float and type(valid.beta) is float


def test_validate_rejects_non_spec():
    with pytest.raises(StrategyError, match="expected a StrategySpec, got dict"):
        validate_strategy({"name": "grpo"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "x" * 65),
        ("name", "tab\there"),
        ("name", 7),
        ("loss", "ppo"),
        ("group_size", 1),
        ("group_size", 2.0),
        ("group_size", True),
        ("group_size", 1025),
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("temperature", math.inf),
        ("temperature", "1.0"),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", math.nan),
        ("max_new_tokens", 0),
        ("max_new_tokens", 12.0),
        ("eps_low", 0.0),
        ("eps_low", 1.0),
        ("beta", -0.1),
        ("beta", True),
        ("dynamic_sampling", 1),
        ("overlong_buffer", -1),
        ("overlong_buffer", 512),  # must leave room: < max_new_tokens (512)
    ],
)
def test_validate_names_the_bad_field_and_value(field, value):
    spec = replace(PRESETS["dapo"], **{field: value})
    with pytest.raises(StrategyError) as info:
        validate_strategy(spec)
    message = str(info.value)
    assert f"strategy field {field!r}" in message
    assert repr(value) in message


def test_symmetric_variants_require_equal_clip_bounds():
    for loss in ("grpo", "dr_grpo", "rloo"):
        spec = replace(PRESETS[loss], eps_high=0.28)
        with pytest.raises(StrategyError, match=r"'eps_high'.*symmetric variant"):
            validate_strategy(spec)


def test_clip_higher_is_allowed_for_dapo_and_gspo():
    assert validate_strategy(replace(PRESETS["dapo"], eps_high=0.3)).eps_high == 0.3
    assert validate_strategy(replace(PRESETS["gspo"], eps_high=5e-4)).eps_high == 5e-4


def test_eps_high_must_be_positive():
    with pytest.raises(StrategyError, match="'eps_high'"):
        validate_strategy(replace(PRESETS["dapo"], eps_high=0.0))
