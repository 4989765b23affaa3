"""Role configuration files: TOML plus `THINKMESH_<ROLE>__...` environment overrides, validated.

Both roles load their pydantic config through `load_config`, so the rules are the same:
- the file is TOML; every table and key must be known (`extra="forbid"` on the models);
- an environment variable `THINKMESH_NODE__ROUND__POLL_S=0.5` overrides `[round] poll_s` of the
  node's file (`__` separates levels; values are parsed as TOML scalars, falling back to text);
- any error raises `ConfigError` naming the dotted key, what was expected, and where the value
  came from (the file or the variable).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from thinkmesh.protocol.rules.errors import ProtocolError

ENV_PREFIX = "THINKMESH_"
ENV_SEPARATOR = "__"

C = TypeVar("C", bound=BaseModel)


class ConfigSection(BaseModel):
    """A table of a role's config: unknown keys are errors, and a loaded config does not change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityConfig(ConfigSection):
    """`[identity]`, the same for every role: the keystore directory and how its password is given."""

    key_dir: Path
    password_file: Path | None = None  # else THINKMESH_KEY_PASSWORD


class ConfigError(ProtocolError):
    """A configuration file or override that is unreadable, unknown, or of the wrong type."""


def _parse_env_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def env_overrides(role: str, environ: Mapping[str, str]) -> tuple[dict, dict[str, str]]:
    """(nested overrides, dotted key -> variable name) from `THINKMESH_<ROLE>__A__B=value`."""
    prefix = f"{ENV_PREFIX}{role.upper()}{ENV_SEPARATOR}"
    nested: dict = {}
    sources: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(prefix):
            continue
        path = [part.lower() for part in name[len(prefix):].split(ENV_SEPARATOR)]
        if not all(path):
            raise ConfigError(f"environment variable {name}: empty key segment")
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment variable {name}: {'.'.join(path)} is not a table")
        node[path[-1]] = _parse_env_value(text)
        sources[".".join(path)] = name
    return nested, sources


def _merge(base: dict, override: Mapping) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(model: type[C], path: str | Path | None, role: str, environ: Mapping[str, str] | None = None) -> C:
    """The validated config of `role` from `path` (optional) and the environment."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    overrides, sources = env_overrides(role, os.environ if environ is None else environ)
    try:
        return model.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        origin = f"environment variable {sources[key]}" if key in sources else f"config file {path or '(none)'}"
        value = f", got {first['input']!r}" if first["type"] != "missing" and not isinstance(first["input"], dict) else ""
        raise ConfigError(f"config key {key!r} ({origin}): {first['msg']}{value}") from exc
