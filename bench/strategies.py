"""What each strategy's contribution does to the model: the per-contribution value, by strategy.

    .venv/bin/python bench/strategies.py [--rounds 20] [--strategies grpo,dapo,gspo,dr_grpo,rloo]

One node per strategy, in a mesh simulated in one process from the real parts
(bench/inprocess_mesh.py), on the devnet's `tiny` model (its recipe and cache: devnet/profiles.py)
at the devnet's lr. Every round, before the step, each contribution's value is computed by the
protocol's rule (`protocol/rules/contribution_value.py`: the change in expected reward on the round's
public validation batch from that contribution's update alone, the coordinator's computation), then
the round's aggregate is applied, as on the devnet.

Per strategy: the mean value per contribution with a 95% confidence interval (normal, over rounds).
Per pair: the mean of the per-round differences (paired: same round, same validation batch) with its
interval; `significant` when the interval excludes 0, `significant_bonferroni` when it still does at
the family-wise 5% level over all pairs. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _normal_quantile(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--strategies", default="grpo,dapo,gspo,dr_grpo,rloo")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per node per round")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--value-prompts", type=int, default=8)
    parser.add_argument("--value-group", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None, help="default: the devnet profile's")
    parser.add_argument("--model-dir", default=None, help="default: the devnet's tiny model, built and cached")
    parser.add_argument("--cache-dir", default=None, help="default: the devnet's model cache")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from inprocess_mesh import InProcessMesh, MeshSettings, load, node_identity, strategy_for
    from thinkmesh.devnet.layout import default_cache_dir
    from thinkmesh.devnet.model_cache import ensure_model
    from thinkmesh.devnet.profiles import PROFILES
    from thinkmesh.protocol.rules.contribution_value import ValueSettings, contribution_values, mean_and_interval

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    profile = PROFILES["tiny"]
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    model_dir = Path(args.model_dir) if args.model_dir else ensure_model(profile.recipe, cache_dir, progress=True).path
    lr = args.lr if args.lr is not None else profile.lr
    settings = MeshSettings(template=profile.recipe.coldstart.template, prompts=args.prompts, group=args.group,
                            max_new_tokens=args.max_new_tokens, lr=lr)
    value_settings = ValueSettings(prompts=args.value_prompts, group=args.value_group,
                                   max_new_tokens=args.max_new_tokens, template=settings.template, step=float(lr))
    names = args.strategies.split(",")
    model, tokenizer = load(model_dir)
    nodes = [(node_identity(0, i), strategy_for(name, settings)) for i, name in enumerate(names)]
    mesh = InProcessMesh(model, tokenizer, settings, nodes, seed_text="bench-strategies")

    values: dict[str, list[float]] = {name: [] for name in names}
    batch_rewards = []
    for _ in range(args.rounds):
        mesh.round_id += 1
        announcement = mesh.announcement()
        made = mesh.contributions(announcement)
        round_values, batch = contribution_values(model, tokenizer, settings.task, announcement.seed,
                                                  [g for _, g in made], value_settings)
        for name, value in zip(names, round_values):
            values[name].append(value)
        batch_rewards.append(batch.mean_reward)
        mesh.step(made)
        print(json.dumps({"round": mesh.round_id, "values": {n: round(v, 5) for n, v in zip(names, round_values)},
                          "validation_reward": round(batch.mean_reward, 4)}), file=sys.stderr, flush=True)

    per_strategy = {}
    for name in names:
        mean, half = mean_and_interval(values[name])
        per_strategy[name] = {"mean": round(mean, 6), "ci95": [round(mean - half, 6), round(mean + half, 6)],
                              "positive_share": round(sum(v > 0 for v in values[name]) / len(values[name]), 3)}
    pairs = list(itertools.combinations(names, 2))
    z_bonferroni = _normal_quantile(1 - 0.025 / max(len(pairs), 1))
    comparisons = []
    for a, b in pairs:
        diffs = [x - y for x, y in zip(values[a], values[b])]
        mean, half = mean_and_interval(diffs)
        wide = half / 1.96 * z_bonferroni
        comparisons.append({"pair": f"{a}-{b}", "mean_difference": round(mean, 6),
                            "ci95": [round(mean - half, 6), round(mean + half, 6)],
                            "significant": abs(mean) > half, "significant_bonferroni": abs(mean) > wide})
    print(json.dumps({
        "bench": "strategies", "model_dir": str(model_dir), "task": "linear-1", "rounds": args.rounds, "lr": lr,
        "per_node": {"prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens},
        "value_rule": {"prompts": args.value_prompts, "group": args.value_group, "step": float(lr)},
        "value_by_strategy": per_strategy, "pairwise": comparisons,
        "significant_pairs": [c["pair"] for c in comparisons if c["significant"]],
        "significant_pairs_bonferroni": [c["pair"] for c in comparisons if c["significant_bonferroni"]],
        "validation_reward_first_last": [round(batch_rewards[0], 4), round(batch_rewards[-1], 4)],
        "all_values_sd": round(statistics.stdev([v for vs in values.values() for v in vs]), 6)
        if sum(len(v) for v in values.values()) > 1 else 0.0,
        "torch_threads": torch.get_num_threads(), "wall_s": round(time.monotonic() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
