"""A model version as bytes: a canonical stream of its parameters, chunked and hashed.

The canonical byte stream of a set of named tensors is each tensor, in sorted name order, as
its contiguous little-endian bytes in its own dtype; nothing else (no headers, no padding). The
stream is cut into `chunk_size` pieces, each hashed with sha256; `ModelManifest.model_hash`
commits to (architecture, tensor layout, chunk size, chunk hashes) through
`model_content_hash`. So the same weights have the same hash on every machine, and a receiver
can check each chunk as it arrives, before it has the whole model.

`load_state_dict` checks the manifest's own hash, every chunk's hash, the layout and the total
length before it builds a single tensor: a wrong byte anywhere never yields a model.

Which tensors: a model's `named_parameters()` (tied weights once, under their first name).
Buffers are not carried: in a transformers causal LM the persistent ones are derived from the
config, which travels in `architecture`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.messages import MiB, ModelManifest, TensorEntry, model_content_hash

DEFAULT_CHUNK_SIZE = 1 * MiB
MAX_CHUNK_SIZE = 16 * MiB
MAX_MODEL_BYTES = 64 * 1024 * MiB
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
}
# Keys of a transformers config that name the software, not the model.
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "_attn_implementation_autoset")


class ManifestError(ProtocolError):
    """A manifest, chunk or tensor set that does not match what the model hash commits to."""


def canonical_architecture(config_dict: Mapping) -> str:
    """A transformers config as canonical JSON text (sorted keys, no whitespace, no versions)."""
    doc = {k: v for k, v in config_dict.items() if k not in VOLATILE_CONFIG_KEYS}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)


def model_parameters(model) -> dict[str, Tensor]:
    """The tensors a manifest carries: `named_parameters()`, detached, on CPU."""
    return {name: p.detach().to("cpu") for name, p in model.named_parameters()}


def _tensor_bytes(tensor: Tensor) -> bytes:
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
        return tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    array = tensor.numpy()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def tensor_layout(tensors: Mapping[str, Tensor]) -> tuple[TensorEntry, ...]:
    entries, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name]
        dtype = str(tensor.dtype).replace("torch.", "")
        if dtype not in DTYPES:
            raise ManifestError(f"tensor {name!r}: expected a dtype in {sorted(DTYPES)}, got {dtype}")
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(TensorEntry(name=name, dtype=dtype, shape=tuple(tensor.shape), offset=offset, nbytes=nbytes))
        offset += nbytes
    return tuple(entries)


def canonical_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    """The canonical byte stream (see module docstring)."""
    return b"".join(_tensor_bytes(tensors[name]) for name in sorted(tensors))


def split_chunks(stream: bytes, chunk_size: int) -> tuple[bytes, ...]:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"chunk_size: expected 1..{MAX_CHUNK_SIZE} bytes, got {chunk_size}")
    return tuple(stream[i:i + chunk_size] for i in range(0, len(stream), chunk_size)) or (b"",)


def chunk_hash(chunk: bytes) -> bytes:
    return hashlib.sha256(chunk).digest()


def iter_chunks(tensors: Mapping[str, Tensor], chunk_size: int):
    """The canonical stream's chunks, produced tensor by tensor: the same chunks as
    `split_chunks(canonical_bytes(tensors), chunk_size)` without ever holding the whole stream
    (a 0.5B-parameter base is 2 GB of fp32; hashing it must not cost twice that)."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"chunk_size: expected 1..{MAX_CHUNK_SIZE} bytes, got {chunk_size}")
    pending, produced = bytearray(), False
    for name in sorted(tensors):
        data = memoryview(_tensor_bytes(tensors[name]))
        while len(data):
            take = min(chunk_size - len(pending), len(data))
            pending += data[:take]
            data = data[take:]
            if len(pending) == chunk_size:
                yield bytes(pending)
                pending.clear()
                produced = True
    if pending or not produced:
        yield bytes(pending)


def build_manifest(
    tensors: Mapping[str, Tensor],
    architecture: str,
    *,
    chain_id: int,
    run_id: str,
    version: int,
    round_id: int,
    parent_hash: bytes,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[ModelManifest, tuple[bytes, ...]]:
    """(unsigned manifest, chunks) of `tensors`; sign the manifest with `sign_message`."""
    layout = tensor_layout(tensors)
    chunks = tuple(iter_chunks(tensors, chunk_size))
    hashes = tuple(chunk_hash(c) for c in chunks)
    manifest = ModelManifest(
        chain_id=chain_id, run_id=run_id, version=version, round_id=round_id, parent_hash=parent_hash,
        model_hash=model_content_hash(architecture, layout, chunk_size, hashes),
        architecture=architecture, tensors=layout, chunk_size=chunk_size, chunk_hashes=hashes,
    )
    return manifest, chunks


def parameters_hash(tensors: Mapping[str, Tensor], architecture: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """The model hash `build_manifest` would give these tensors (lineage fields do not enter);
    one chunk in memory at a time."""
    layout = tensor_layout(tensors)
    hashes = tuple(chunk_hash(c) for c in iter_chunks(tensors, chunk_size))
    return model_content_hash(architecture, layout, chunk_size, hashes)


def model_hash(model) -> bytes:
    """The hash a `ModelManifest` of this whole model commits to (every parameter, its canonical
    config): one definition for a mesh version, a served model and an evidence re-run."""
    return parameters_hash(model_parameters(model), canonical_architecture(model.config.to_dict()))


def check_manifest(manifest: ModelManifest) -> None:
    """Raises ManifestError unless the manifest is self-consistent and its hash is its content's."""
    if not 0 < manifest.chunk_size <= MAX_CHUNK_SIZE:
        raise ManifestError(f"chunk_size: expected 1..{MAX_CHUNK_SIZE}, got {manifest.chunk_size}")
    offset = 0
    names = [t.name for t in manifest.tensors]
    if names != sorted(set(names)):
        raise ManifestError("manifest tensors: expected sorted unique names")
    for entry in manifest.tensors:
        if entry.dtype not in DTYPES:
            raise ManifestError(f"tensor {entry.name!r}: unknown dtype {entry.dtype!r}")
        numel = int(np.prod(entry.shape, dtype=np.int64)) if entry.shape else 1
        expected = numel * DTYPES[entry.dtype].itemsize
        if entry.offset != offset or entry.nbytes != expected:
            raise ManifestError(
                f"tensor {entry.name!r}: expected offset {offset} and {expected} bytes, "
                f"got offset {entry.offset} and {entry.nbytes}"
            )
        offset += entry.nbytes
    if offset > MAX_MODEL_BYTES:
        raise ManifestError(f"model is {offset} bytes, over the limit of {MAX_MODEL_BYTES}")
    expected_chunks = max(1, -(-offset // manifest.chunk_size))
    if len(manifest.chunk_hashes) != expected_chunks:
        raise ManifestError(f"expected {expected_chunks} chunk hashes, got {len(manifest.chunk_hashes)}")
    content = model_content_hash(manifest.architecture, manifest.tensors, manifest.chunk_size, manifest.chunk_hashes)
    if content != manifest.model_hash:
        raise ManifestError(
            f"model_hash: the manifest claims 0x{manifest.model_hash.hex()}, its content hashes to 0x{content.hex()}"
        )


def check_chunk(manifest: ModelManifest, index: int, chunk: bytes) -> None:
    """Raises ManifestError unless `chunk` is chunk `index` of the manifest's stream."""
    if not 0 <= index < len(manifest.chunk_hashes):
        raise ManifestError(f"chunk index: expected 0..{len(manifest.chunk_hashes) - 1}, got {index}")
    last = index == len(manifest.chunk_hashes) - 1
    expected_len = manifest.total_bytes - index * manifest.chunk_size if last else manifest.chunk_size
    if len(chunk) != expected_len:
        raise ManifestError(f"chunk {index}: expected {expected_len} bytes, got {len(chunk)}")
    if chunk_hash(chunk) != manifest.chunk_hashes[index]:
        raise ManifestError(f"chunk {index}: sha256 does not match the manifest")


def load_state_dict(manifest: ModelManifest, chunks: Sequence[bytes]) -> dict[str, Tensor]:
    """The tensors of a manifest, after checking the manifest and every chunk (see module doc)."""
    check_manifest(manifest)
    if len(chunks) != len(manifest.chunk_hashes):
        raise ManifestError(f"expected {len(manifest.chunk_hashes)} chunks, got {len(chunks)}")
    for index, chunk in enumerate(chunks):
        check_chunk(manifest, index, chunk)
    stream = b"".join(chunks)
    tensors = {}
    for entry in manifest.tensors:
        raw = stream[entry.offset:entry.offset + entry.nbytes]
        if entry.dtype == "bfloat16":
            flat = torch.from_numpy(np.frombuffer(raw, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            np_dtype = np.dtype(entry.dtype).newbyteorder("<")
            flat = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).astype(np_dtype.newbyteorder("=")))
        tensors[entry.name] = flat.reshape(entry.shape)
    return tensors


def assign_parameters(model, tensors: Mapping[str, Tensor], trainable_only: bool = False) -> None:
    """Copies `tensors` into the model's parameters in place; names and shapes must match exactly.
    `trainable_only`: the parameters that require grad (an adapter's, protocol/rules/adapters.py)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
    if sorted(params) != sorted(tensors):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise ManifestError(f"parameters: missing {missing[:5]}, unexpected {extra[:5]}")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(param.shape) != tuple(tensors[name].shape):
                raise ManifestError(
                    f"parameter {name!r}: expected shape {list(param.shape)}, got {list(tensors[name].shape)}"
                )
            param.copy_(tensors[name].to(device=param.device, dtype=param.dtype))
