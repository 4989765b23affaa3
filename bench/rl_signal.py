"""How much learning signal does one GRPO step carry on this model? (docs/learning.md)

Three measurements on a cold-started model, none of them training it:
- headroom: the held-out evaluation (`protocol.rules.evaluation`): greedy accuracy, sample accuracy and
  pass@G at T = 1;
- gradient signal: the cosine similarity between the strategy's gradients on independent
  batches of fresh prompts, per batch size. Reading cos = s / (s + v / n) (s: squared signal,
  v: per-prompt noise variance, n: prompts) gives `noise_to_signal_per_prompt` = v / s, the
  number of prompts per update at which signal and noise weigh the same;
- greedy fragility: held-out greedy accuracy after adding random +-eps noise to every weight,
  to compare with what a few optimizer steps of that size do.

    .venv/bin/python bench/rl_signal.py --model-dir .thinkmesh/bench-learning/coldstart-linear-1

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a cold-started model directory (bench/learning.py makes one)")
    parser.add_argument("--task", default="linear")
    parser.add_argument("--difficulty", type=int, default=1)
    parser.add_argument("--strategy", default="dapo")
    parser.add_argument("--template", default="r1-compact")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-prompts", default="16,64", help="prompts per batch, comma-separated")
    parser.add_argument("--batches", type=int, default=4, help="independent batches per size (pairs: n(n-1)/2)")
    parser.add_argument("--heldout", type=int, default=128, help="distinct held-out problems (linear-1 has 150)")
    parser.add_argument("--noise", default="0.0002,0.001", help="weight noise sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.work.train_step import collect_rollouts, policy_gradient
    from thinkmesh.protocol.rules.evaluation import EvalSettings, evaluate
    from thinkmesh.protocol.rules.strategies import strategy_from_name
    from thinkmesh.protocol.rules.tasks import TaskSpec, generate_task

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    spec_task = TaskSpec(args.task, args.difficulty)
    tokenizer = load_tokenizer(args.model_dir)
    strategy = replace(strategy_from_name(args.strategy), group_size=args.group_size,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    if strategy.overlong_buffer:
        strategy = replace(strategy, overlong_buffer=args.max_new_tokens // 5)

    model = load_model(args.model_dir)
    evaluation = EvalSettings(tasks=args.heldout, max_new_tokens=args.max_new_tokens, template=args.template,
                              samples=args.group_size)
    start = evaluate(model, tokenizer, spec_task, evaluation)

    signal = {}
    for prompts in (int(p) for p in args.batch_prompts.split(",")):
        gradients = []
        for batch in range(args.batches):
            tasks = [generate_task(spec_task, b"rl-signal" + bytes([batch]), 10_000 * prompts + i) for i in range(prompts)]
            batch_rollouts = collect_rollouts(model, tokenizer, tasks, strategy, args.template,
                                              torch.Generator().manual_seed(batch))
            model.zero_grad(set_to_none=True)
            policy_gradient(model, batch_rollouts, strategy, tokenizer.pad_token_id)
            gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(gradients, 2)]
        mean = sum(cosines) / len(cosines)
        signal[str(prompts)] = {
            "cosine_mean": round(mean, 4), "cosines": [round(c, 4) for c in cosines],
            "noise_to_signal_per_prompt": round(prompts * (1 - mean) / mean, 1) if mean > 0 else None,
        }
    model.zero_grad(set_to_none=True)

    fragility = {}
    for eps in (float(e) for e in args.noise.split(",")):
        noisy = load_model(args.model_dir)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in noisy.parameters():
                signs = torch.randint(0, 2, parameter.shape, generator=generator).to(parameter.dtype) * 2 - 1
                parameter.add_(eps * signs)
        fragility[str(eps)] = evaluate(noisy, tokenizer, spec_task, replace(evaluation, samples=0)).accuracy

    print(json.dumps({
        "bench": "rl_signal", "model_dir": args.model_dir, "task": f"{args.task}-{args.difficulty}",
        "strategy": args.strategy, "group_size": args.group_size, "temperature": args.temperature,
        "heldout_tasks": start.tasks, "heldout_greedy_accuracy": start.accuracy,
        "sample_accuracy": round(start.sampled_accuracy, 4), "pass_at_group": round(start.pass_at_k, 4),  # T = 1
        "gradient_signal_by_batch_prompts": signal,
        "greedy_accuracy_after_weight_noise": fragility,
        "torch_threads": torch.get_num_threads(), "wall_s": round(time.monotonic() - started, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
