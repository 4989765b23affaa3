"""`thinkmesh node init` writes a node.toml that loads; `node doctor`'s model checks load the base
model's config and tokenizer and say whether a round fits; the memory plan covers the 0.5B shape
(its config only: no weights are built)."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinkmesh.protocol.cli.main import main
from thinkmesh.node.ops import init_commands
from thinkmesh.node.config import load_node_config
from thinkmesh.node.ops.doctor_model import check_base_model, check_fit
from thinkmesh.node.ops.init_commands import MachineFacts, render_node_toml
from thinkmesh.node.model.memory_fit import estimate_fit, parameter_count, sequence_cost
from thinkmesh.node.model.tiny_model import ARCHITECTURES, qwen2_config
from thinkmesh.protocol.rules.adapters import lora_parameter_count

GiB = 1 << 30
LEDGER = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture(scope="module")
def qwen05_config():
    return qwen2_config(ARCHITECTURES["qwen2.5-0.5b"])


@pytest.mark.timeout(120)
def test_the_plan_for_the_0_5b_shape_counts_its_parameters_and_fits_a_gpu_not_a_small_one(qwen05_config):
    parameters = parameter_count(qwen05_config)  # on the meta device: no weights
    assert parameters == 494_032_768  # Qwen2.5-0.5B's published count (tied embeddings)
    lora = lora_parameter_count(qwen05_config.to_dict(), 8)
    assert 0 < lora < parameters // 100
    cost = sequence_cost(qwen05_config, 64, 256, 2)
    # float32 logits over 151,936 tokens dominate a sequence's training cost at this vocabulary
    assert cost.training > 3 * 257 * 151936 * 4 > cost.generation
    full_bf16 = estimate_fit(qwen05_config, parameters, 2, parameters, 64, 256, free_bytes=24 * GiB)
    adapter_bf16 = estimate_fit(qwen05_config, parameters, 2, lora, 64, 256, free_bytes=24 * GiB)
    assert full_bf16.fits and adapter_bf16.fits and adapter_bf16.need_bytes < full_bf16.need_bytes
    assert full_bf16.weight_bytes == parameters * 2 and full_bf16.gradient_bytes == parameters * 4
    # On a 24 GiB GPU it plans a real batch, not the floor or the ceiling
    assert 4 <= adapter_bf16.plan.micro_batch < 64 and adapter_bf16.plan.rollout_batch > adapter_bf16.plan.micro_batch
    # 2 GiB free cannot hold the float32 weights (1.84 GiB) plus gradients
    small = estimate_fit(qwen05_config, parameters, 4, parameters, 64, 256, free_bytes=2 * GiB)
    assert not small.fits and small.plan.micro_batch == 1


@pytest.mark.timeout(60)
def test_doctor_fails_a_missing_or_unloadable_base_model_and_names_the_fix(tmp_path):
    missing, config = check_base_model(tmp_path / "no-such-model")
    assert missing.failed and config is None and "does not exist" in missing.detail and "model init" in missing.fix
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    check, config = check_base_model(broken)
    assert check.failed and config is None and "does not load" in check.detail
    fit = check_fit(None, "float32", "cpu", 8, 64, False, 8 * GiB)
    assert fit.verdict == "SKIP"


@pytest.mark.timeout(60)
def test_doctor_loads_the_config_and_tokenizer_and_fails_a_fit_that_cannot_hold(micro_model_dir):
    check, config = check_base_model(Path(micro_model_dir))
    assert not check.failed and "qwen2" in check.detail and config is not None
    roomy = check_fit(config, "float32", "cpu", 8, 64, False, 8 * GiB)
    assert not roomy.failed and "full-model rounds need" in roomy.detail
    starved = check_fit(config, "float32", "cpu", 8, 64, False, 64 << 10)
    assert starved.failed and "free memory" in starved.fix


@pytest.mark.timeout(120)
def test_node_init_writes_a_config_that_loads_with_the_chain_and_plan(tmp_path, micro_model_dir, monkeypatch):
    monkeypatch.setattr(init_commands, "detect_machine", lambda: MachineFacts("cpu", "CPU", False, 8 * GiB))
    out = tmp_path / "node.toml"
    argv = ["node", "init", "--base-model", str(micro_model_dir), "--rpc", "http://127.0.0.1:8545", "--ledger", LEDGER,
            "--out", str(out), "--data-dir", str(tmp_path / "data"), "--key-dir", str(tmp_path / "keys")]
    assert main(argv) == 0
    text = out.read_text()
    assert "micro-batch" in text and "fits" in text
    config = load_node_config(out, environ={})
    assert config.device == "cpu" and config.dtype == "float32" and config.chain.ledger == LEDGER
    assert config.base_model == Path(micro_model_dir).resolve() and config.data_dir == tmp_path / "data"
    assert main(argv) == 1, "an existing file is kept without --force"
    assert main(["node", "init", "--base-model", str(micro_model_dir), "--out", str(tmp_path / "n2.toml")]) == 1


def test_node_init_on_a_bf16_gpu_keeps_float32_and_says_why(tmp_path):
    facts = MachineFacts("cuda", "NVIDIA H100", True, 70 * GiB)
    text = render_node_toml(facts=facts, dtype="float32", base_model=tmp_path, data_dir=tmp_path, key_dir=tmp_path,
                            rpc_url=None, ledger=None, initial_peers=["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWx"],
                            strategy="dapo", plans=[])
    assert 'device = "cuda"' in text and 'dtype = "float32"' in text and "bfloat16" in text
    (tmp_path / "node.toml").write_text(text)
    config = load_node_config(tmp_path / "node.toml", environ={})
    assert config.device == "cuda" and config.network.initial_peers and config.chain is None
    with pytest.raises(init_commands.NodeInitError):
        init_commands.choose_dtype(MachineFacts("cpu", "CPU", False, None), "bfloat16")
