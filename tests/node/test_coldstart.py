import json

import pytest

from thinkmesh.node.local import coldstart as coldstart_module
from thinkmesh.node.local.coldstart import MARKER_FILE, ColdStartSettings, run_coldstart, sft_examples
from thinkmesh.node.model.model_dir import weights_sha256
from thinkmesh.protocol.rules.rewards import format_reward
from thinkmesh.protocol.rules.tasks import render_prompt

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


def test_examples_never_demonstrate_a_heldout_problem():
    from thinkmesh.node.local.coldstart import sft_tasks
    from thinkmesh.protocol.rules.tasks import is_heldout

    tasks = sft_tasks(ColdStartSettings(num_examples=600))
    assert {t.family for t in tasks} == {"arithmetic", "countdown", "linear"}
    assert not any(is_heldout(task) for task in tasks)
    assert [p for p, _ in sft_examples(ColdStartSettings(num_examples=600))] == [
        render_prompt(task, "r1-compact") for task in tasks]


def test_a_marker_from_another_heldout_partition_misses_the_cache(tmp_path, micro_model_dir, monkeypatch):
    """Which problems the cold start may train on is part of its result: a directory cold-started
    before the partition (or under another one) is trained again, and the cache key moves with it."""
    out = tmp_path / "tuned"
    run_coldstart(micro_model_dir, SMALL, out=out, progress=False)
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is not None
    marker = json.loads((out / MARKER_FILE).read_text())
    (out / MARKER_FILE).write_text(json.dumps({k: v for k, v in marker.items() if k != "partition"}))
    assert coldstart_module.cached_result(micro_model_dir, out, SMALL) is None
    key = SMALL.cache_key("base")
    monkeypatch.setattr(coldstart_module, "PARTITION_ID", "another rule")
    assert SMALL.cache_key("base") != key


def test_devnet_model_cache_key_moves_with_the_heldout_partition(monkeypatch):
    from thinkmesh.devnet import model_cache
    from thinkmesh.devnet.profiles import PROFILES

    recipe = PROFILES["tiny"].recipe
    key = recipe.key()
    monkeypatch.setattr(model_cache, "PARTITION_ID", "another rule")
    assert recipe.key() != key


def test_a_slipping_teacher_stops_one_step_short_in_the_set_share_of_examples():
    settings = ColdStartSettings(families=("linear",), num_examples=2000, teacher_slip_rate=0.5)
    examples = sft_examples(settings)
    assert examples == sft_examples(settings)
    perfect = sft_examples(ColdStartSettings(families=("linear",), num_examples=2000))
    slipped = [(p, c) for (p, c), (_, full) in zip(examples, perfect) if c != full]
    assert 0.45 < len(slipped) / len(examples) < 0.55
    for (prompt, completion), (_, full) in zip(examples, perfect):
        if completion == full:
            continue
        # "<think>6*x=38-8=30</think> <answer>30</answer>": the division step is gone and the
        # answer is the last number left in the trace, so it is wrong unless x is 0.
        kept = completion.split("</think>")[0]
        assert full.startswith(kept + ", x=")
        assert completion.endswith(f"<answer>{kept.rsplit('=', 1)[1]}</answer>")
        assert format_reward(completion) == 1.0
    assert settings.cache_key("base") != ColdStartSettings(families=("linear",), num_examples=2000).cache_key("base")


def test_slip_rate_outside_zero_to_one_and_one_step_traces_are_refused():
    from thinkmesh.node.local.coldstart import slipped_completion
    from thinkmesh.protocol.rules.errors import TaskError
    from thinkmesh.protocol.rules.tasks import Task

    for rate in (-0.1, 1.0):
        with pytest.raises(TaskError, match="teacher_slip_rate"):
            ColdStartSettings(families=("linear",), teacher_slip_rate=rate)
    with pytest.raises(TaskError, match="linear traces only"):
        ColdStartSettings(teacher_slip_rate=0.5)  # the default families include arithmetic and countdown
    one_step = Task(family="countdown", difficulty=1, index=0, question="q", answer="8", trace="3+5=8", solution="3+5")
    with pytest.raises(TaskError, match="no step to skip"):
        slipped_completion(one_step)
