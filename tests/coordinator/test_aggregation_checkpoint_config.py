"""Aggregation rules, atomic checkpoints that refuse a tampered model, and config errors."""

from __future__ import annotations

import pytest
import torch

from thinkmesh.coordinator.work.aggregation import AggregationError, WeightedGradient, aggregate, global_norm
from thinkmesh.coordinator.work.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from thinkmesh.coordinator.config import load_coordinator_config
from thinkmesh.protocol.runtime.config_files import ConfigError
from thinkmesh.protocol.rules.messages import ZERO_HASH, encode_message
from thinkmesh.protocol.rules.model_manifest import build_manifest


def grad(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 2), value), "b": torch.full((2,), value)}


def test_mean_is_sample_weighted():
    result = aggregate([WeightedGradient(grad(1.0), 3), WeightedGradient(grad(5.0), 1)], "mean")
    assert torch.allclose(result["w"], torch.full((2, 2), 2.0))


def test_norm_clip_bounds_each_contribution():
    result = aggregate([WeightedGradient(grad(100.0), 1), WeightedGradient(grad(0.0), 1)], "norm_clip", clip_norm=1.0)
    assert global_norm(result) == pytest.approx(0.5, rel=1e-5)


def test_centered_clip_resists_one_outlier_better_than_the_mean():
    honest = [WeightedGradient(grad(1.0), 1) for _ in range(4)]
    outlier = WeightedGradient(grad(1000.0), 1)
    mean = aggregate(honest + [outlier], "mean")
    robust = aggregate(honest + [outlier], "centered_clip", clip_norm=1.0, iterations=20)
    assert abs(robust["w"][0, 0].item() - 1.0) < abs(mean["w"][0, 0].item() - 1.0) / 10


def test_aggregate_refuses_mismatched_or_empty_input():
    with pytest.raises(AggregationError):
        aggregate([])
    with pytest.raises(AggregationError, match="names"):
        aggregate([WeightedGradient(grad(1.0), 1), WeightedGradient({"w": torch.ones(2, 2)}, 1)])


def checkpoint(params) -> Checkpoint:
    manifest, _ = build_manifest(params, "{}", chain_id=1, run_id="run", version=4, round_id=4, parent_hash=ZERO_HASH)
    return Checkpoint(version=4, next_round=5, parameters=params, optimizer_state={"state": {}, "param_groups": []},
                      manifest_bytes=encode_message(manifest), rounds=[{"round_id": 4}], evals=[{"version": 4}])


def test_checkpoint_round_trip_and_tamper_refusal(tmp_path):
    params = {"w": torch.randn(3, 3)}
    assert load_checkpoint(tmp_path, "run") is None
    save_checkpoint(tmp_path, checkpoint(params))
    loaded = load_checkpoint(tmp_path, "run")
    assert loaded.version == 4 and loaded.next_round == 5 and torch.equal(loaded.parameters["w"], params["w"])
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    with pytest.raises(CheckpointError, match="run"):
        load_checkpoint(tmp_path, "another-run")
    tampered = checkpoint(params)
    tampered.parameters = {"w": params["w"] + 1}
    save_checkpoint(tmp_path, tampered)
    with pytest.raises(CheckpointError, match="hash"):
        load_checkpoint(tmp_path, "run")


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('base_model = "/m"\ndata_dir = "/d"\n[identity]\nkey_dir = "/k"\n[round]\ndeadline_s = "soon"\n')
    with pytest.raises(ConfigError, match=r"'round\.deadline_s' \(config file"):
        load_coordinator_config(path, environ={})
    path.write_text('base_model = "/m"\ndata_dir = "/d"\n[identity]\nkey_dir = "/k"\n[round]\ndeadline_s = 5\n')
    config = load_coordinator_config(path, environ={"THINKMESH_COORDINATOR__ROUND__DEADLINE_S": "7.5"})
    assert config.round.deadline_s == 7.5
    with pytest.raises(ConfigError, match="THINKMESH_COORDINATOR__ROUND__DEADLIN_S"):
        load_coordinator_config(path, environ={"THINKMESH_COORDINATOR__ROUND__DEADLIN_S": "1"})


def test_the_round_template_is_checked_and_the_eval_follows_it_unless_set(tmp_path):
    import pydantic

    from thinkmesh.coordinator.config import CoordinatorConfig
    from thinkmesh.protocol.rules.tasks import TEMPLATES

    assert set(TEMPLATES) == {"r1", "r1-compact"}, "the config's Literal lists every protocol template"
    base = {"base_model": str(tmp_path), "data_dir": str(tmp_path), "identity": {"key_dir": str(tmp_path)}}
    config = CoordinatorConfig.model_validate({**base, "round": {"template": "r1-compact"}})
    assert config.round.template == "r1-compact" and config.eval.template is None
    with pytest.raises(pydantic.ValidationError, match="template"):
        CoordinatorConfig.model_validate({**base, "round": {"template": "chatml"}})


def test_the_optimizer_is_the_config_s_and_a_checkpoint_of_the_other_one_is_refused(tmp_path):
    from thinkmesh.coordinator.config import CoordinatorConfig
    from thinkmesh.coordinator.work.aggregation import apply_update, build_optimizer, load_optimizer_state

    base = {"base_model": str(tmp_path), "data_dir": str(tmp_path), "identity": {"key_dir": str(tmp_path)}}
    agg = CoordinatorConfig.model_validate({**base, "aggregation": {"optimizer": "sgd", "lr": 0.5}}).aggregation
    assert CoordinatorConfig.model_validate(base).aggregation.optimizer == "adamw"
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    sgd = build_optimizer(list(model.parameters()), agg.optimizer, agg.lr, momentum=agg.momentum)
    apply_update(model, sgd, {"weight": torch.tensor([[1.0, -2.0]])})
    assert model.weight.tolist() == [[0.5, 2.0]]  # w - lr * g: the step scales with the gradient, unlike Adam's
    adamw = build_optimizer(list(model.parameters()), "adamw", 1e-3)
    apply_update(model, adamw, {"weight": torch.tensor([[1.0, -2.0]])})
    with pytest.raises(AggregationError, match="checkpoint's optimizer state is adamw's"):
        load_optimizer_state(sgd, adamw.state_dict())
    load_optimizer_state(build_optimizer(list(model.parameters()), "sgd", 0.5), sgd.state_dict())
    with pytest.raises(AggregationError, match="expected adamw or sgd"):
        build_optimizer(list(model.parameters()), "lion", 1e-4)
