"""One evaluator: the coordinator's on-chain figure is `train local`'s, and no training stage of a
run ever sees one of its evaluation problems."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from thinkmesh.protocol.rules.evaluation import EvalSettings, evaluate, heldout_tasks
from thinkmesh.protocol.rules.tasks import TaskSpec, generate_task, is_heldout, node_task_seed, task_for_node

LINEAR_1 = TaskSpec("linear", 1)


@pytest.mark.timeout(180)
def test_coordinators_onchain_figure_equals_train_locals_on_the_same_model_and_set(tmp_path, coldstarted_micro_dir):
    """`train local`'s step-0 evaluation and the coordinator's evaluation of the same weights, with
    the coordinator's default `[eval] seed`, template and tokens, are one figure, down to the
    fixed-point value `RoundMetrics` carries."""
    from thinkmesh.coordinator.config import EvalConfig
    from thinkmesh.coordinator.work.daemon import Coordinator
    from thinkmesh.coordinator.settlement.round_settlement import build_intent
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.local.train_local import METRICS_FILE, LocalTrainConfig, train_local

    config = LocalTrainConfig(model_dir=str(coldstarted_micro_dir), run_dir=str(tmp_path / "run"), task="linear",
                              steps=0, max_new_tokens=32, eval_tasks=24, eval_samples=4, strategy="grpo")
    summary = train_local(config, progress=False, log=lambda _: None)
    local = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert summary.evals == ((0, local[0]["accuracy"]),) and local[0]["kind"] == "eval"

    coordinator = SimpleNamespace(  # what `Coordinator._evaluate` reads: its config, model and version
        config=SimpleNamespace(eval=EvalConfig(prompts=24, max_new_tokens=32), round=SimpleNamespace(template=config.template)),
        model=load_model(coldstarted_micro_dir).eval(), tokenizer=load_tokenizer(coldstarted_micro_dir), task=LINEAR_1,
        manifest=SimpleNamespace(version=0, model_hash=b"\x01" * 32),
    )
    record = Coordinator._evaluate(coordinator)
    fields = ("tasks", "accuracy", "format", "mean_reward", "mean_tokens", "samples", "sampled_accuracy", "pass_at_k")
    assert {k: record[k] for k in fields} == {k: local[0][k] for k in fields}
    assert record["tasks"] == 24 and record["samples"] == 4 and record["format"] > 0.5

    def on_chain(accuracy: float) -> int:
        return build_intent(1, b"\x00" * 32, [], [], accuracy, reward_per_prompt=1, slash_amount=1).stats.held_out_accuracy

    assert on_chain(record["accuracy"]) == on_chain(local[0]["accuracy"])


@pytest.mark.timeout(120)
def test_evaluation_is_deterministic_and_its_figures_are_consistent(coldstarted_micro_dir):
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer

    model, tokenizer = load_model(coldstarted_micro_dir).eval(), load_tokenizer(coldstarted_micro_dir)
    settings = EvalSettings(tasks=16, max_new_tokens=32, template="r1-compact", samples=4)
    first = evaluate(model, tokenizer, LINEAR_1, settings)
    assert evaluate(model, tokenizer, LINEAR_1, settings, batch_size=5) == first  # batching changes nothing
    assert first.tasks == 16 and first.samples == 4
    assert first.sampled_accuracy <= first.pass_at_k <= 1.0
    assert 0 < first.mean_tokens <= 32
    greedy_only = evaluate(model, tokenizer, LINEAR_1, EvalSettings(16, 32, "r1-compact", samples=0))
    assert (greedy_only.accuracy, greedy_only.format, greedy_only.mean_reward) == (first.accuracy, first.format, first.mean_reward)
    assert greedy_only.sampled_accuracy is None and greedy_only.pass_at_k is None


def test_no_evaluation_problem_appears_in_any_training_prompt_set_of_the_run():
    """The devnet's run, end to end: its cold start (the tiny profile's 24,000 examples), its
    round prompts (`task_for_node`, several rounds and nodes), `train local`'s prompts, against
    every held-out problem the coordinator or `train local` can evaluate (all 150 of linear-1's)."""
    from thinkmesh.devnet.profiles import PROFILES
    from thinkmesh.node.local.coldstart import sft_tasks
    from thinkmesh.node.local.train_local import LocalTrainConfig, step_tasks

    evaluation = {task.question for task in heldout_tasks(LINEAR_1, 150)}
    assert evaluation == {task.question for task in heldout_tasks(LINEAR_1, 150, "another eval seed")}

    coldstart = {task.question for task in sft_tasks(PROFILES["tiny"].recipe.coldstart)}
    rounds = {task_for_node(LINEAR_1, round_id.to_bytes(32, "big"), bytes([node]) * 32, index).question
              for round_id in range(1, 21) for node in range(4) for index in range(4)}
    config = LocalTrainConfig(model_dir="unused", run_dir="unused", task="linear", prompts_per_step=16)
    local = {task.question for step in range(200) for task in step_tasks(config, step)}

    for name, prompts in (("cold start", coldstart), ("round prompts", rounds), ("train local", local)):
        assert len(prompts) > 200, name
        leaked = evaluation & prompts
        assert not leaked, f"{name} trains on {len(leaked)} evaluation problems, e.g. {sorted(leaked)[:3]}"
    assert len(coldstart) == 570, "the cold start still covers every trainable linear-1 problem"
    # Without the partition the same draws would have trained on evaluation problems.
    unfiltered = [generate_task(LINEAR_1, node_task_seed(b"\x01" * 32, b"\x00" * 32), i) for i in range(64)]
    assert any(is_heldout(task) for task in unfiltered)
