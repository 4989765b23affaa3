import json

import pytest

from thinkmesh.node import coldstart as coldstart_module
from thinkmesh.node.coldstart import MARKER_FILE, ColdStartSettings, run_coldstart, sft_examples
from thinkmesh.node.model_dir import weights_sha256
from thinkmesh.protocol.rewards import format_reward

SMALL = ColdStartSettings(families=("linear",), num_examples=48, batch_size=16, lr=3e-3)


def _forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a cached cold start must not train")

    monkeypatch.setattr(coldstart_module, "sft_batch_loss", fail)


def test_examples_are_r1_formatted_and_deterministic():
    examples = sft_examples(ColdStartSettings(num_examples=9))
    assert examples == sft_examples(ColdStartSettings(num_examples=9))
    assert {p.split("\n")[0].split()[1] for p, _ in examples[:3]} == {"What", "Using", "Solve"}
    for prompt, completion in examples:
        assert prompt.endswith("Assistant:") and format_reward(completion) == 1.0


def test_second_call_with_same_settings_does_no_work(tmp_path, micro_model_dir, monkeypatch):
    out = tmp_path / "tuned"
    first = run_coldstart(micro_model_dir, SMALL, out=out, progress=False)
    assert not first.cached and len(first.losses) == 3 and first.final_loss < first.losses[0]
    assert first.weights_sha256 != weights_sha256(micro_model_dir)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["base_weights_sha256"] == weights_sha256(micro_model_dir)

    _forbid_training(monkeypatch)
    second = run_coldstart(micro_model_dir, SMALL, out=out, progress=False)
    assert second.cached and second.key == first.key and second.weights_sha256 == first.weights_sha256


def test_changed_settings_or_tampered_weights_miss_the_cache(tmp_path, micro_model_dir, monkeypatch):
    out = tmp_path / "tuned"
    run_coldstart(micro_model_dir, SMALL, out=out, progress=False)
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is not None
    other = ColdStartSettings(families=("linear",), num_examples=48, batch_size=16, lr=1e-3)
    assert coldstart_module.cached_result(micro_model_dir, out, other) is None
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is None


def test_in_place_cold_start_is_cached_on_its_own_output(tmp_path, micro_model_dir, monkeypatch):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(micro_model_dir, model_dir)
    first = run_coldstart(model_dir, SMALL, progress=False)
    assert weights_sha256(model_dir) == first.weights_sha256
    _forbid_training(monkeypatch)
    assert run_coldstart(model_dir, SMALL, progress=False).cached


def test_a_marker_without_the_saved_tokenizer_misses_the_cache(tmp_path, micro_model_dir):
    """A directory whose tokenizer.json changed since the marker (or an older marker that never
    pinned it) is retrained: its weights were tuned on whatever that tokenizer produced."""
    out = tmp_path / "tuned"
    run_coldstart(micro_model_dir, SMALL, out=out, progress=False)
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is not None
    marker = json.loads((out / MARKER_FILE).read_text())
    (out / MARKER_FILE).write_text(json.dumps({k: v for k, v in marker.items() if k != "tokenizer_sha256"}))
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is None
    (out / MARKER_FILE).write_text(json.dumps(marker))
    tokenizer_json = out / "tokenizer.json"
    tokenizer_json.write_text(tokenizer_json.read_text().replace('"Fuse"', '"ByteLevel"'))
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is None
