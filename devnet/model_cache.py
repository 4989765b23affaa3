"""The devnet's base model: a tiny Qwen2 built locally and cold-started once, then reused.

A recipe (model shape, init seed, cold-start settings) names one directory in the cache,
`<cache>/models/<name>-<key>`, where the key hashes the whole recipe and the held-out partition
(`tasks.PARTITION_ID`: it decides which problems the cold start may use): change either and a new
model is built beside the old one. A build happens in a scratch directory under a lock and is
renamed into place when done, so a half-built model is never mistaken for a cached one and two
`up`s at once build it only once. `--fresh` wipes the devnet's state, never this cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from thinkmesh.node.local.coldstart import MARKER_FILE, ColdStartSettings
from thinkmesh.node.model.tiny_model import TinyModelSpec
from thinkmesh.protocol.rules.tasks import PARTITION_ID
from thinkmesh.protocol.runtime.atomic_files import replace_directory


@dataclass(frozen=True)
class ModelRecipe:
    """Everything that decides the devnet's base weights (a pure function of this record)."""

    name: str
    spec: TinyModelSpec
    coldstart: ColdStartSettings
    init_seed: int = 0

    def key(self) -> str:
        payload = json.dumps({"spec": asdict(self.spec), "coldstart": asdict(self.coldstart), "seed": self.init_seed,
                              "partition": PARTITION_ID}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CachedModel:
    """A ready model directory; `built_s` is the wall time spent building it now (0 on a cache hit)."""

    path: Path
    cached: bool
    built_s: float


def model_path(recipe: ModelRecipe, cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{recipe.name}-{recipe.key()}"


def is_ready(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / MARKER_FILE).is_file()


def ensure_model(recipe: ModelRecipe, cache_dir: Path, *, progress: bool = False) -> CachedModel:
    """The cold-started model for `recipe`, built (minutes on a CPU for the default) unless cached."""
    target = model_path(recipe, cache_dir)
    if is_ready(target):
        return CachedModel(target, cached=True, built_s=0.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another `up` may be building the same recipe
        if is_ready(target):
            return CachedModel(target, cached=True, built_s=0.0)
        started = time.monotonic()
        scratch = target.with_name(f".{target.name}.building")
        shutil.rmtree(scratch, ignore_errors=True)
        _build(recipe, scratch, progress)
        replace_directory(scratch, target)
        return CachedModel(target, cached=False, built_s=time.monotonic() - started)


def _build(recipe: ModelRecipe, directory: Path, progress: bool) -> None:
    from thinkmesh.node.local.coldstart import run_coldstart
    from thinkmesh.node.model.tiny_model import init_model_dir

    init_model_dir(directory, recipe.spec, seed=recipe.init_seed)
    run_coldstart(directory, recipe.coldstart, progress=progress)
