"""Shared fixtures: a micro Qwen2 (tens of thousands of parameters) so node tests run in seconds."""

from __future__ import annotations

import pytest
import torch

from thinkmesh.node.local.coldstart import ColdStartSettings, run_coldstart
from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir

MICRO_SPEC = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
# Enough SFT for the micro model to use the R1 format always and be right ~15% of the time
# (greedy, linear difficulty 1): the "sometimes right" start that GRPO needs. ~10-20 s on CPU.
MICRO_COLDSTART = ColdStartSettings(families=("linear",), num_examples=1024, epochs=2, batch_size=16, lr=1e-2)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Two shared cores: a single torch thread per test process avoids oversubscription stalls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("micro-model")
    init_model_dir(directory, MICRO_SPEC, seed=0)
    return directory


@pytest.fixture(scope="session")
def coldstarted_micro_dir(micro_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("micro-coldstarted") / "model"
    run_coldstart(micro_model_dir, MICRO_COLDSTART, out=out, progress=False)
    return out
