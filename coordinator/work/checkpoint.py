"""Coordinator checkpoints: everything needed to resume at the last committed version and round.

A checkpoint is one `torch.save` file (parameters, AdamW state, version, next round, the signed
manifest's bytes and the round records) written through `protocol/runtime/atomic_files.py` as
`checkpoint.pt`; a crash at any point leaves either the old or the new checkpoint whole. On
load the parameters are re-hashed and must equal the manifest's model hash, so a coordinator
never serves a model that differs from what it once signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkmesh.protocol.rules.encoding import decode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.messages import ModelManifest
from thinkmesh.protocol.rules.model_manifest import parameters_hash
from thinkmesh.protocol.runtime.atomic_files import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(ProtocolError):
    """A checkpoint that is unreadable, of another run, or whose weights do not match its hash."""


@dataclass
class Checkpoint:
    version: int
    next_round: int
    parameters: dict[str, torch.Tensor]
    optimizer_state: dict
    manifest_bytes: bytes
    rounds: list[dict] = field(default_factory=list)  # round records, JSON-ready
    evals: list[dict] = field(default_factory=list)  # one per version


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    with atomic_path(target) as tmp:
        torch.save({"format": FORMAT_VERSION, **checkpoint.__dict__}, tmp)
    return target


def load_checkpoint(directory: Path, run_id: str) -> Checkpoint | None:
    """The last committed checkpoint, or None if there is none yet."""
    path = directory / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a corrupt file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if payload.pop("format", None) != FORMAT_VERSION:
        raise CheckpointError(f"{path}: expected checkpoint format {FORMAT_VERSION}")
    checkpoint = Checkpoint(**payload)
    manifest = decode_message(checkpoint.manifest_bytes, ModelManifest)
    if manifest.run_id != run_id:
        raise CheckpointError(f"{path}: checkpoint of run {manifest.run_id!r}, this is run {run_id!r}")
    actual = parameters_hash(checkpoint.parameters, manifest.architecture, manifest.chunk_size)
    if actual != manifest.model_hash or manifest.version != checkpoint.version:
        raise CheckpointError(f"{path}: weights hash to 0x{actual.hex()[:16]}, manifest says 0x{manifest.model_hash.hex()[:16]}")
    return checkpoint
