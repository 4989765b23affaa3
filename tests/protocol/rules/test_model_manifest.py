"""Model manifests: canonical bytes, chunk hashes, and tamper detection before any tensor exists."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from thinkmesh.protocol.rules.messages import ZERO_HASH
from thinkmesh.protocol.rules.model_manifest import (
    ManifestError,
    build_manifest,
    canonical_architecture,
    check_chunk,
    load_state_dict,
    parameters_hash,
)

ARCH = canonical_architecture({"model_type": "toy", "hidden": 8, "transformers_version": "9.9"})


def tensors():
    generator = torch.Generator().manual_seed(1)
    return {
        "b.weight": torch.randn(33, 17, generator=generator),
        "a.bias": torch.randn(5, generator=generator).to(torch.bfloat16),
        "c.half": torch.randn(4, 4, generator=generator).to(torch.float16),
    }


def build(ts=None, chunk_size=256):
    return build_manifest(ts or tensors(), ARCH, chain_id=1, run_id="r", version=3, round_id=2,
                          parent_hash=ZERO_HASH, chunk_size=chunk_size)


def test_round_trip_is_exact_and_hash_is_content_only():
    manifest, chunks = build()
    assert [t.name for t in manifest.tensors] == ["a.bias", "b.weight", "c.half"]
    assert len(chunks) == -(-manifest.total_bytes // 256)
    loaded = load_state_dict(manifest, chunks)
    for name, tensor in tensors().items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert parameters_hash(tensors(), ARCH, 256) == manifest.model_hash
    relabelled, _ = build_manifest(tensors(), ARCH, chain_id=9, run_id="x", version=7, round_id=6,
                                   parent_hash=b"\x01" * 32, chunk_size=256)
    assert relabelled.model_hash == manifest.model_hash


def test_architecture_ignores_software_version_but_not_shape():
    assert canonical_architecture({"hidden": 8, "transformers_version": "1"}) == \
        canonical_architecture({"transformers_version": "2", "hidden": 8})
    assert canonical_architecture({"hidden": 8}) != canonical_architecture({"hidden": 9})


def test_changed_weight_changes_the_hash():
    changed = tensors()
    changed["b.weight"][3, 4] += 1e-6
    assert build(changed)[0].model_hash != build()[0].model_hash


def test_a_flipped_byte_in_any_chunk_yields_no_model():
    manifest, chunks = build()
    for index in (0, len(chunks) - 1):
        tampered = list(chunks)
        tampered[index] = bytes([tampered[index][0] ^ 1]) + tampered[index][1:]
        with pytest.raises(ManifestError, match=f"chunk {index}: sha256"):
            load_state_dict(manifest, tampered)
    with pytest.raises(ManifestError, match="chunks"):
        load_state_dict(manifest, chunks[:-1])
    with pytest.raises(ManifestError, match="bytes"):
        check_chunk(manifest, 0, chunks[0][:-1])


def test_a_manifest_whose_hash_lies_yields_no_model():
    manifest, chunks = build()
    with pytest.raises(ManifestError, match="model_hash"):
        load_state_dict(dataclasses.replace(manifest, model_hash=b"\x05" * 32), chunks)
    # Consistent chunk hashes for other bytes still break the committed model hash.
    other_manifest, other_chunks = build({k: v + 1 for k, v in tensors().items()})
    forged = dataclasses.replace(manifest, chunk_hashes=other_manifest.chunk_hashes)
    with pytest.raises(ManifestError, match="model_hash"):
        load_state_dict(forged, other_chunks)
    shifted = dataclasses.replace(
        manifest, tensors=(dataclasses.replace(manifest.tensors[0], offset=2),) + manifest.tensors[1:]
    )
    with pytest.raises(ManifestError, match="offset"):
        load_state_dict(shifted, chunks)
