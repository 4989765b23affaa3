"""Learning that comes from the network's size: held-out gain after R rounds for 1, 2, 4, 8 nodes.

    .venv/bin/python bench/scaling.py [--nodes 1,2,4,8] [--rounds 3] [--seeds 8] [--prompts 4] [--group 8]

The model is a perfect teacher's student (`tiny` shape, 24,000 linear-1 examples or
--coldstart-examples, `teacher_slip_rate` 0; built once through devnet/model_cache.py and cached in
--cache-dir), on which one node's batch is
too noisy to improve it (docs/learning.md: gradients of independent 16-prompt batches have cosine
0.007). Every configuration runs the same per-node batch (dapo, --prompts x --group samples) in a
mesh simulated in one process from the real parts (bench/inprocess_mesh.py: `honest_contribution`
per node key, the coordinator's `aggregate` and `apply_update` with AdamW at --lr), and is scored
by `protocol/rules/evaluation.py` on held-out problems after the last round (--eval-every-round: each). Per round, not per second: on
a real network every node brings its own GPU.

Trials: seed s fixes the round seeds and the node keys; n nodes use keys 0..n-1 of their trial, so
the comparison across n is paired (same rounds, nested nodes). `spread` is the sample standard
deviation of the gain over trials. The bar: gain(4) - gain(1) > max(spread(1), spread(4)), on
greedy accuracy (the on-chain figure) and, with --eval-samples k, on sampled accuracy at T = 1 (the
quantity the objective raises). The defaults take ~2.5 minutes on an idle 2-core CPU. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RECIPE_NAME = "tiny-perfect"


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per node per round")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--strategy", default="dapo")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"),
                        help="the coordinator's [aggregation] optimizer: AdamW (its default) or SGD with momentum 0.9")
    parser.add_argument("--eval-tasks", type=int, default=150, help="held-out problems (linear-1 has 150)")
    parser.add_argument("--eval-samples", type=int, default=0, help="k > 0: also sampled accuracy at T = 1 (k per task)")
    parser.add_argument("--eval-every-round", action="store_true", help="greedy accuracy after every round, not only the last")
    parser.add_argument("--coldstart-examples", type=int, default=24000,
                        help="the perfect teacher's demonstrations the student is cold-started on")
    parser.add_argument("--model-dir", default=None, help="default: the perfect teacher's student, built and cached")
    parser.add_argument("--cache-dir", default=".thinkmesh/bench-scaling")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from inprocess_mesh import InProcessMesh, MeshSettings, load, node_identity, strategy_for
    from thinkmesh.devnet.model_cache import ModelRecipe, ensure_model
    from thinkmesh.node.local.coldstart import ColdStartSettings
    from thinkmesh.node.model.tiny_model import TinyModelSpec
    from thinkmesh.protocol.rules.evaluation import EvalSettings, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    recipe = ModelRecipe(RECIPE_NAME, TinyModelSpec(), ColdStartSettings(
        families=("linear",), num_examples=args.coldstart_examples, teacher_slip_rate=0.0))
    model_dir = Path(args.model_dir) if args.model_dir else ensure_model(recipe, Path(args.cache_dir), progress=True).path
    settings = MeshSettings(template=recipe.coldstart.template, prompts=args.prompts, group=args.group,
                            max_new_tokens=args.max_new_tokens, lr=args.lr, optimizer=args.optimizer)
    evaluation = EvalSettings(tasks=args.eval_tasks, max_new_tokens=args.max_new_tokens, template=settings.template,
                              samples=args.eval_samples)
    greedy_only = EvalSettings(tasks=args.eval_tasks, max_new_tokens=args.max_new_tokens, template=settings.template,
                               samples=0)
    counts = [int(n) for n in args.nodes.split(",")]

    model, tokenizer = load(model_dir)
    start = evaluate(model, tokenizer, settings.task, evaluation)
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    for trial in range(args.seeds):
        for n in counts:
            model, tokenizer = load(model_dir)
            nodes = [(node_identity(trial, i), strategy_for(args.strategy, settings)) for i in range(n)]
            mesh = InProcessMesh(model, tokenizer, settings, nodes, seed_text=f"bench-scaling-{trial}")
            curve, t0 = [], time.monotonic()
            for index in range(args.rounds):
                mesh.run_round()
                if index + 1 < args.rounds and args.eval_every_round:
                    curve.append(round(evaluate(model, tokenizer, settings.task, greedy_only).accuracy, 4))
            result = evaluate(model, tokenizer, settings.task, evaluation)
            curve.append(round(result.accuracy, 4))
            runs[n].append({"trial": trial, "greedy_by_round": curve, "final": result.as_dict(),
                            "wall_s": round(time.monotonic() - t0, 1)})
            print(json.dumps({"trial": trial, "nodes": n, "greedy_by_round": curve,
                              "sampled": result.sampled_accuracy}), file=sys.stderr, flush=True)

    summary = {}
    for n in counts:
        greedy = [r["final"]["accuracy"] - start.accuracy for r in runs[n]]
        sampled = [r["final"]["sampled_accuracy"] - start.sampled_accuracy for r in runs[n]] if args.eval_samples else [0.0]
        summary[str(n)] = {
            "greedy_gain_mean": round(statistics.fmean(greedy), 4), "greedy_gain_spread": round(_spread(greedy), 4),
            "greedy_gains": [round(g, 4) for g in greedy],
            "sampled_gain_mean": round(statistics.fmean(sampled), 4), "sampled_gain_spread": round(_spread(sampled), 4),
            "sampled_gains": [round(g, 4) for g in sampled],
            "greedy_curve_mean": [round(statistics.fmean(r["greedy_by_round"][k] for r in runs[n]), 4)
                                  for k in range(len(runs[n][0]["greedy_by_round"]))],
            "wall_s_per_run": round(statistics.fmean(r["wall_s"] for r in runs[n]), 1),
        }

    def bar(metric: str) -> dict | None:
        if "1" not in summary or "4" not in summary:
            return None
        one, four = summary["1"], summary["4"]
        margin = four[f"{metric}_gain_mean"] - one[f"{metric}_gain_mean"]
        spread = max(one[f"{metric}_gain_spread"], four[f"{metric}_gain_spread"])
        return {"gain4_minus_gain1": round(margin, 4), "spread": round(spread, 4), "met": margin > spread}

    print(json.dumps({
        "bench": "scaling", "model_dir": str(model_dir), "task": "linear-1", "strategy": args.strategy,
        "per_node": {"prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens},
        "lr": args.lr, "optimizer": args.optimizer, "rounds": args.rounds, "seeds": args.seeds, "eval_tasks": start.tasks,
        "start": {"greedy": start.accuracy, "sampled": start.sampled_accuracy, "pass_at_k": start.pass_at_k},
        "by_nodes": summary, "bar_greedy": bar("greedy"), "bar_sampled": bar("sampled") if args.eval_samples else None,
        "torch_threads": torch.get_num_threads(), "wall_s": round(time.monotonic() - started, 1),
        "baseline_greedy_se": round(math.sqrt(max(start.accuracy * (1 - start.accuracy), 1e-9) / start.tasks), 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
