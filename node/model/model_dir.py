"""Opening and saving a causal-LM directory: the one place a node touches model files.

Any Hugging Face causal LM directory works (the tiny one from `thinkmesh model init` or a real
downloaded model). Saves are atomic and durable (write to a sibling temp dir, then
`protocol/runtime/atomic_files.replace_directory`), so a kill or a power loss mid-save never
leaves a half-written model where a later run would load it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.runtime.atomic_files import replace_directory

DTYPES = ("float32", "bfloat16", "float16")


class ModelDirError(ProtocolError):
    """A model directory that is missing, incomplete, or asked for on an unknown device/dtype."""


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ModelDirError(f"expected dtype in {DTYPES}, got {name!r}")
    return getattr(torch, name)


def resolve_device(name: str) -> str:
    """`auto` means CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelDirError(f"expected a CUDA device for --device {name}, but torch sees none")
    return name


def load_tokenizer(directory: str | Path):
    """The directory's tokenizer, left-padded (batched generation and scoring rely on it)."""
    from thinkmesh.protocol.rules.scoring import load_tokenizer as load_protocol_tokenizer

    _require_model_dir(directory)
    return load_protocol_tokenizer(directory)


def load_model(directory: str | Path, device: str = "cpu", dtype: str = "float32"):
    """The directory's causal LM on `device` in `dtype`, in eval mode, with SDPA attention."""
    from transformers import AutoModelForCausalLM

    _require_model_dir(directory)
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch_dtype(dtype), attn_implementation="sdpa"
    )
    return model.to(resolve_device(device)).eval()


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 over the directory's safetensors files (sorted by name): the model's identity.

    Hashes bytes, not tensors, so it is exactly as deterministic as the files.
    """
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ModelDirError(f"expected *.safetensors weights in {directory}, found none")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def save_model_atomically(model, tokenizer, directory: str | Path, extra_files: dict[str, bytes] | None = None) -> None:
    """Writes model + tokenizer (+ extra files) to a temp sibling, then swaps it in by rename."""

    def write(staging: Path) -> None:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        for name, payload in (extra_files or {}).items():
            (staging / name).write_bytes(payload)

    save_directory_atomically(directory, write)


def save_directory_atomically(directory: str | Path, write: Callable[[Path], None]) -> None:
    """Calls `write(staging)` on an empty temp sibling of `directory`, then swaps it in by rename:
    a reader sees the old directory or the complete new one, never a half-written one."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write(staging)
        replace_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _require_model_dir(directory: str | Path) -> None:
    if not (Path(directory) / "config.json").is_file():
        raise ModelDirError(f"expected a model directory with config.json at {directory}, found none")
