"""The node's base cache: a base fetched over P2P is saved under data_dir/bases/ by hash, atomically,
and used by a restarted node instead of fetching it again; a file that does not hash to its name
is dropped, never used."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from thinkmesh.node.model.base_cache import BASES_DIR, base_path, load_base, save_base
from thinkmesh.node.work.daemon import NodeDaemon
from thinkmesh.node.model.model_dir import load_model
from thinkmesh.protocol.rules.model_manifest import canonical_architecture, model_parameters, parameters_hash


@pytest.fixture()
def base(micro_model_dir):
    model = load_model(micro_model_dir)
    architecture = canonical_architecture(model.config.to_dict())
    tensors = model_parameters(model)
    return model, architecture, tensors, parameters_hash(tensors, architecture)


@pytest.mark.timeout(60)
def test_a_saved_base_loads_back_by_hash_and_leaves_no_temporary_file(tmp_path, base):
    _, architecture, tensors, base_hash = base
    path = save_base(tmp_path, base_hash, tensors)
    assert path == base_path(tmp_path, base_hash) and path.name == base_hash.hex() + ".safetensors"
    assert sorted(p.name for p in (tmp_path / BASES_DIR).iterdir()) == [path.name]
    loaded = load_base(tmp_path, base_hash, architecture)
    assert loaded is not None and sorted(loaded) == sorted(tensors)
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert load_base(tmp_path, b"\x01" * 32, architecture) is None  # another hash: not cached


@pytest.mark.timeout(60)
def test_a_cached_base_that_does_not_hash_to_its_name_is_dropped(tmp_path, base):
    _, architecture, tensors, base_hash = base
    altered = {name: t.clone() for name, t in tensors.items()}
    first = sorted(altered)[0]
    altered[first].view(-1)[0] += 1.0
    save_base(tmp_path, base_hash, altered)  # saved under the hash it does not have
    assert load_base(tmp_path, base_hash, architecture) is None
    assert not base_path(tmp_path, base_hash).exists()
    base_path(tmp_path, base_hash).write_bytes(b"truncated")  # a file that is no safetensors at all
    assert load_base(tmp_path, base_hash, architecture) is None and not base_path(tmp_path, base_hash).exists()


@pytest.mark.timeout(60)
def test_a_restarted_node_takes_the_base_from_its_cache_without_the_network(tmp_path, base, micro_model_dir):
    """`_fetch_base` on a node whose cache holds the announced base: p2p is None, so any fetch would fail."""
    _, architecture, tensors, base_hash = base
    save_base(tmp_path, base_hash, tensors)
    other = load_model(micro_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5)  # this node's own base_model differs
    node = SimpleNamespace(config=SimpleNamespace(data_dir=tmp_path), base_architecture=architecture, model=other,
                           reference_model=None, p2p=None, base_hash=b"\x02" * 32, model_hash=b"\x02" * 32,
                           counters={"base_cache_hits": 0, "base_bytes_fetched": 0}, phase="idle")
    node._assign_base = lambda h, t: NodeDaemon._assign_base(node, h, t)
    asyncio.run(NodeDaemon._fetch_base(node, base_hash))
    assert node.base_hash == node.model_hash == base_hash
    assert node.counters == {"base_cache_hits": 1, "base_bytes_fetched": 0}
    assert parameters_hash(model_parameters(other), architecture) == base_hash
