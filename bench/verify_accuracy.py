"""Held-out accuracy after a few rounds with one cheater among four nodes, against all honest.

    .venv/bin/python bench/verify_accuracy.py [--rounds 4] [--heldout 128] [--trials 4]

In process, no network: the devnet's "micro" model (a tiny Qwen2 cold-started on linear-1, built
once into `.thinkmesh/bench-verify`, a minute or two on a CPU), four nodes, and the coordinator's
own parts per round: `verify_contribution` under the default audit policy, `aggregate`
(norm_clip, clip 10, the devnet's rule) over the accepted gradients, `apply_update` with AdamW at
the devnet's lr 1e-3; `grpo` (beta 0), group 4, up to 32 new tokens, for rollouts and held-out.

Each trial is one set of round seeds (so other prompts and samples), run from the same weights:

- all honest: four honest nodes;
- with cheater: node 3 sends `random-gradient` every round; the verifier rejects it (counted).

The accuracies are averaged over `--trials`, and "within noise" is the paired difference
(all honest - with cheater, per trial) against its standard error over trials. One trial's
difference is not evidence either way: a few AdamW steps on a 50k-parameter model move held-out
accuracy by several points up or down depending on which samples came (the first trial's
leave-one-out runs showed it: dropping node 0, 1 or 2 left accuracy at its initial value, dropping
node 3 lost 8 points, so a single-trial gap of that size is trajectory noise, not the cheat).

On the first trial also:
- three honest: node 3 absent. A rejected cheater must leave exactly this model (weight gap 0),
  so what a cheater costs is one node's honest data, not the cheat; the runs with each node absent
  in turn show how much losing any one node's data moves a single trial;
- cheater unverified: the same cheat folded in unchecked, for scale (what verification prevents).

Held-out accuracy is greedy, on `--heldout` distinct held-out linear-1 problems, which no round
draws (`protocol.rules.evaluation`, the coordinator's rule);
its binomial standard error sqrt(p (1 - p) / n) is reported next to the across-trial spread.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

CHEATER = 3
NODES = 4
MAX_NEW_TOKENS = 32  # character tokens: a linear-1 reference answer is ~28 (the profile's 16 cuts every one)


def _binomial(accuracy: float, n: int) -> dict:
    return {"accuracy": round(accuracy, 4), "std_error": round(math.sqrt(accuracy * (1 - accuracy) / n), 4)}


def _mean_and_error(values: list[float]) -> dict:
    """Mean and its standard error over trials (0 with one trial: nothing to estimate it from)."""
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std_error": round(error, 4)}


def accuracy_with_and_without_cheater(rounds: int = 4, heldout: int = 128, prompts_per_node: int = 4,
                                      cache_dir: Path = REPO / ".thinkmesh" / "bench-verify", trials: int = 4) -> dict:
    """The bench's accuracy fields (see the module docstring); one torch thread throughout."""
    from thinkmesh.coordinator.work.aggregation import WeightedGradient, aggregate, apply_update
    from thinkmesh.devnet.profiles import PROFILES
    from thinkmesh.devnet.model_cache import ensure_model
    from thinkmesh.devnet.cheats import CheatInputs, apply_cheat, honest_contribution
    from thinkmesh.node.model.model_dir import load_model
    from thinkmesh.protocol.rules.evaluation import EvalSettings, evaluate
    from thinkmesh.protocol.rules.gradient_codec import decode_gradient
    from thinkmesh.protocol.rules.identity import NodeIdentity
    from thinkmesh.protocol.rules.messages import RoundAnnouncement, sign_message
    from thinkmesh.protocol.rules.model_manifest import model_hash
    from thinkmesh.protocol.rules.scoring import load_tokenizer
    from thinkmesh.protocol.rules.strategies import strategy_from_name
    from thinkmesh.protocol.rules.tasks import TaskSpec
    from thinkmesh.protocol.rules.verification import VerificationContext, verify_contribution, with_seen
    from tests.verification_world import terms_of

    torch.set_num_threads(1)
    started = time.perf_counter()
    profile = PROFILES["micro"]
    built = ensure_model(profile.recipe, cache_dir)
    base, tokenizer = load_model(built.path), load_tokenizer(built.path)
    spec, template = TaskSpec("linear", 1), profile.recipe.coldstart.template
    strategy = dataclasses.replace(strategy_from_name("grpo"), beta=0.0, group_size=profile.group_size,
                                   max_new_tokens=MAX_NEW_TOKENS)
    coordinator = NodeIdentity.from_seed(b"\xa0" * 32)
    nodes = [NodeIdentity.from_seed(bytes([0xa1 + i]) * 32) for i in range(NODES)]
    shapes = {name: tuple(p.shape) for name, p in base.named_parameters()}

    def heldout_accuracy(model) -> float:
        settings = EvalSettings(tasks=heldout, max_new_tokens=MAX_NEW_TOKENS, template=template, samples=0)
        return evaluate(model, tokenizer, spec, settings).accuracy

    def run(cheat: str | None, verified: bool, absent: int | None = None, trial: int = 0):
        """(held-out accuracy, contributions rejected, final model) after `rounds` rounds of `trial`."""
        model = copy.deepcopy(base).eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
        context = VerificationContext(frozenset(n.public_key for n in nodes), beacon=b"accuracy-bench")
        rejected = 0
        for round_id in range(1, rounds + 1):
            announcement = sign_message(RoundAnnouncement(
                chain_id=31337, run_id="verify-accuracy", round_id=round_id, model_version=round_id,
                model_hash=model_hash(model),
                task=spec, prompts_per_node=prompts_per_node, seed=(trial * 1000 + round_id).to_bytes(32, "big"),
                deadline_ms=2**41,
                coordinator_key=coordinator.public_key, prompt_template=template, terms=terms_of(strategy),
            ), coordinator)
            accepted = []
            for index, node in enumerate(nodes):
                if index == absent:
                    continue
                contribution = honest_contribution(model, tokenizer, announcement, node, strategy)
                if cheat is not None and index == CHEATER:
                    contribution = apply_cheat(cheat, CheatInputs(announcement, node, contribution, model, tokenizer,
                                                                  seed=round_id))
                if verified:
                    report = verify_contribution(announcement, contribution, model, tokenizer, context)
                    if not report.accepted:
                        rejected += 1
                        continue
                    context = with_seen(context, report)
                gradient = decode_gradient(contribution.gradient, shapes)
                accepted.append(WeightedGradient(gradient, len(contribution.samples)))
            apply_update(model, optimizer, aggregate(accepted, "norm_clip", clip_norm=10.0))
            model.eval()
        return heldout_accuracy(model), rejected, model

    initial = heldout_accuracy(base)
    honest_runs = [run(None, verified=True, trial=t) for t in range(trials)]
    cheated_runs = [run("random-gradient", verified=True, trial=t) for t in range(trials)]
    (honest, _, _), (cheated, _, cheated_model) = honest_runs[0], cheated_runs[0]
    honest_rejected = sum(r[1] for r in honest_runs)
    cheater_rejected = sum(r[1] for r in cheated_runs)
    honest_means = [r[0] for r in honest_runs]
    cheated_means = [r[0] for r in cheated_runs]
    paired = [a - b for a, b in zip(honest_means, cheated_means)]
    left_out = {absent: run(None, verified=True, absent=absent) for absent in range(NODES)}
    three, three_model = left_out[CHEATER][0], left_out[CHEATER][2]
    spread = [accuracy for accuracy, _, _ in left_out.values()] + [honest]
    unverified, _, unverified_model = run("random-gradient", verified=False)
    three_weights = dict(three_model.named_parameters())

    def max_weight_gap(model) -> float:
        return max(float((p - three_weights[n]).detach().abs().max()) for n, p in model.named_parameters())

    difference = _mean_and_error(paired)
    return {
        "accuracy_all_honest": round(statistics.fmean(honest_means), 4),
        "accuracy_with_cheater": round(statistics.fmean(cheated_means), 4),
        "accuracy_detail": {
            "trials": trials, "all_honest_per_trial": [round(a, 4) for a in honest_means],
            "with_cheater_per_trial": [round(a, 4) for a in cheated_means],
            "paired_difference": difference,
            "within_noise": abs(difference["mean"]) <= 2 * difference["std_error"] if trials > 1 else None,
            "trial_0": "the fields below, except the rejected counts (all trials)",
            "heldout_tasks": heldout, "task": "linear-1", "rounds": rounds, "nodes": NODES,
            "cheater": "random-gradient (node 3, every round)",
            "samples_per_node": prompts_per_node * strategy.group_size,
            "initial": _binomial(initial, heldout), "all_honest": _binomial(honest, heldout),
            "with_cheater": _binomial(cheated, heldout), "three_honest_cheater_absent": _binomial(three, heldout),
            "three_honest_any_node_absent": [round(accuracy, 4) for accuracy, _, _ in left_out.values()],
            "honest_runs_std": round(statistics.pstdev(spread), 4),
            "cheater_unverified": _binomial(unverified, heldout),
            "max_weight_gap_with_cheater_vs_three_honest": max_weight_gap(cheated_model),
            "max_weight_gap_unverified_vs_three_honest": max_weight_gap(unverified_model),
            "difference": round(honest - cheated, 4),
            "difference_std_error": round(math.sqrt(sum(p * (1 - p) for p in (honest, cheated)) / heldout), 4),
            "honest_rejected": honest_rejected, "cheater_rejected": cheater_rejected,
            "model": f"{built.path.name} (cold start {'cached' if built.cached else f'built in {built.built_s:.0f}s'})",
            "aggregation": "norm_clip 10, AdamW lr 1e-3", "wall_s": round(time.perf_counter() - started, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--heldout", type=int, default=128, help="distinct held-out problems (linear-1 has 150)")
    parser.add_argument("--prompts-per-node", type=int, default=4)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(accuracy_with_and_without_cheater(args.rounds, args.heldout, args.prompts_per_node,
                                                       trials=args.trials)))


if __name__ == "__main__":
    main()
