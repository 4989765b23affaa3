"""The node's base-model cache: a base fetched over P2P is kept on disk, keyed by its hash.

Adapter rounds pin a frozen base by hash (protocol/rules/adapters.py). A node whose own `base_model`
hashes otherwise fetches that base once; without this cache a restarted node would fetch it again
(0.5B parameters are ~2 GB in float32). The base's tensors are written as one safetensors file,
`data_dir/bases/<hash hex>.safetensors`, through `protocol/runtime/atomic_files.py`, so
a kill mid-write leaves no file at that name. On load the tensors are re-hashed under the
architecture the node runs and must give the hash in the name; a file that does not (corrupt,
truncated, or of another architecture) is deleted and reported as absent, so the node fetches
the base again instead of running on the wrong weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

from thinkmesh.protocol.runtime.atomic_files import atomic_path

logger = logging.getLogger(__name__)
BASES_DIR = "bases"


def base_path(data_dir: Path, base_hash: bytes) -> Path:
    return Path(data_dir) / BASES_DIR / f"{base_hash.hex()}.safetensors"


def save_base(data_dir: Path, base_hash: bytes, tensors: dict) -> Path:
    """Writes the base's tensors (name -> CPU tensor) atomically; returns the file's path."""
    from safetensors.torch import save_file

    target = base_path(data_dir, base_hash)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}, str(tmp))
    return target


def load_base(data_dir: Path, base_hash: bytes, architecture: str) -> dict | None:
    """The cached base's tensors if a file for `base_hash` exists and hashes to it under
    `architecture`; else None (a file that does not is removed)."""
    from safetensors.torch import load_file

    from thinkmesh.protocol.rules.model_manifest import parameters_hash

    path = base_path(data_dir, base_hash)
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        actual = parameters_hash(tensors, architecture)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is treated as absent, then removed
        logger.warning("dropping the unreadable cached base %s: %s: %s", path, type(exc).__name__, exc)
        path.unlink(missing_ok=True)
        return None
    if actual != base_hash:
        logger.warning("dropping the cached base %s: its tensors hash to 0x%s", path, actual.hex()[:16])
        path.unlink(missing_ok=True)
        return None
    return tensors
