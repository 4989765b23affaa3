import torch
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from thinkmesh.node.model.model_dir import ModelDirError, load_model, load_tokenizer, save_model_atomically, weights_sha256
from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir, qwen2_config
from tests.node.conftest import MICRO_SPEC


def test_default_spec_is_between_one_and_ten_million_parameters():
    model = AutoModelForCausalLM.from_config(qwen2_config(TinyModelSpec()))
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 10_000_000


def test_init_is_deterministic_and_loads_with_from_pretrained(tmp_path):
    count = init_model_dir(tmp_path / "a", MICRO_SPEC, seed=3)
    init_model_dir(tmp_path / "b", MICRO_SPEC, seed=3)
    init_model_dir(tmp_path / "c", MICRO_SPEC, seed=4)
    assert weights_sha256(tmp_path / "a") == weights_sha256(tmp_path / "b") != weights_sha256(tmp_path / "c")
    assert (tmp_path / "a" / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a"))
    assert isinstance(model, Qwen2ForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == count


def test_save_and_reload_round_trip_keeps_logits(tmp_path, micro_model_dir):
    model, tokenizer = load_model(micro_model_dir), load_tokenizer(micro_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)  # a model that differs from its init
    save_model_atomically(model, tokenizer, tmp_path / "copy")
    reloaded = load_model(tmp_path / "copy")
    ids = torch.tensor([tokenizer("User: What is 12+30?\nAssistant:")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert not list(tmp_path.glob(".copy.*")), "the staging directory must be renamed away"


def test_missing_directory_is_a_model_dir_error(tmp_path):
    try:
        load_model(tmp_path / "nothing")
    except ModelDirError as exc:
        assert "config.json" in str(exc)
    else:
        raise AssertionError("expected ModelDirError")
