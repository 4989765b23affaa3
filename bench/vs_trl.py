"""Our local GRPO step against TRL's `GRPOTrainer`: same model, prompts, group size, max tokens.

Both sides run the whole step (generate G completions per prompt, score them with thinkmesh's
rule rewards, DAPO-style loss, backward, AdamW step) on the same tiny cold-started model and the
same prompts, stopping at EOS or `</answer>`, in one process one after the other. The last line of
stdout is one JSON object: ours_samples_per_s, trl_samples_per_s, ratio (ours / TRL), and where
each side's time goes (generation vs the rest).

    .venv/bin/python bench/vs_trl.py                  # CPU
    .venv/bin/python bench/vs_trl.py --device cuda    # GPU
TRL is a bench-only dependency (`pip install trl`; measured with trl 1.16.0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path


def build_model(work: Path, task: str, difficulty: int, examples: int) -> Path:
    from thinkmesh.node.local.coldstart import ColdStartSettings, run_coldstart
    from thinkmesh.node.model.tiny_model import init_model_dir

    base, tuned = work / "base", work / f"coldstart-{task}-{difficulty}"
    if not (base / "config.json").is_file():
        init_model_dir(base)
    settings = ColdStartSettings(families=(task,), difficulties=(difficulty,), num_examples=examples)
    run_coldstart(base, settings, out=tuned, progress=False)
    return tuned


def run_ours(args, model_dir: Path, tasks_by_step) -> dict:
    import torch

    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.work.train_step import collect_rollouts, policy_gradient
    from thinkmesh.protocol.rules.strategies import strategy_from_name

    model, tokenizer = load_model(model_dir, args.device), load_tokenizer(model_dir)
    spec = dataclasses.replace(strategy_from_name("dapo"), group_size=args.group_size,
                               max_new_tokens=args.max_new_tokens, overlong_buffer=0, dynamic_sampling=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    generate_s = total_s = 0.0
    for step, tasks in enumerate(tasks_by_step):
        _sync(args.device)
        t0 = time.perf_counter()
        model.eval()
        rollouts = collect_rollouts(model, tokenizer, tasks, spec, "r1-compact", torch.Generator(args.device).manual_seed(step))
        _sync(args.device)
        t1 = time.perf_counter()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        policy_gradient(model, rollouts, spec, tokenizer.pad_token_id)
        optimizer.step()
        _sync(args.device)
        t2 = time.perf_counter()
        if step >= args.warmup:
            generate_s += t1 - t0
            total_s += t2 - t0
    samples = (len(tasks_by_step) - args.warmup) * args.prompts_per_step * args.group_size
    return {"samples_per_s": samples / total_s, "seconds": total_s, "generate_and_reward_s": generate_s,
            "loss_backward_step_s": total_s - generate_s}


def run_trl(args, model_dir: Path, tasks_by_step) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.protocol.rules.rewards import score_completion, total_reward
    from thinkmesh.protocol.rules.tasks import render_prompt

    model, tokenizer = load_model(model_dir, args.device), load_tokenizer(model_dir)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</answer>")]
    flat = [task for tasks in tasks_by_step for task in tasks]
    dataset = Dataset.from_dict({"prompt": [render_prompt(t, "r1-compact") for t in flat], "task_index": list(range(len(flat)))})

    def rule_reward(completions, task_index, completion_ids, **_):
        return [total_reward(score_completion(flat[i], text, len(ids), args.max_new_tokens))
                for text, i, ids in zip(completions, task_index, completion_ids)]

    generate_s = [0.0]
    original_generate = model.generate

    def timed_generate(*a, **k):
        _sync(args.device)
        started = time.perf_counter()
        try:
            return original_generate(*a, **k)
        finally:
            _sync(args.device)
            generate_s[0] += time.perf_counter() - started if step_times["counting"] else 0.0

    model.generate = timed_generate
    step_times = {"begin": 0.0, "total": 0.0, "counting": False, "step": 0}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_a, **_k):
            step_times["counting"] = step_times["step"] >= args.warmup
            _sync(args.device)
            step_times["begin"] = time.perf_counter()

        def on_step_end(self, *_a, **_k):
            _sync(args.device)
            if step_times["counting"]:
                step_times["total"] += time.perf_counter() - step_times["begin"]
            step_times["step"] += 1

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=args.prompts_per_step * args.group_size,
            num_generations=args.group_size, max_completion_length=args.max_new_tokens, max_steps=len(tasks_by_step),
            learning_rate=args.lr, beta=0.0, loss_type="dapo", epsilon_high=0.28, temperature=1.0,
            steps_per_generation=1, num_iterations=1, shuffle_dataset=False, report_to="none", save_strategy="no",
            logging_steps=1000, use_cpu=args.device == "cpu", bf16=False, dataloader_num_workers=0,
            mask_truncated_completions=False, log_completions=False, disable_tqdm=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=rule_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[StepTimer()])
        trainer.train()
    samples = (len(tasks_by_step) - args.warmup) * args.prompts_per_step * args.group_size
    total = step_times["total"]
    return {"samples_per_s": samples / total, "seconds": total, "generate_s": generate_s[0],
            "rest_s": total - generate_s[0]}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="linear")
    parser.add_argument("--difficulty", type=int, default=1)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after --warmup untimed ones)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--work-dir", default=".thinkmesh/bench-vs-trl")
    parser.add_argument("--coldstart-examples", type=int, default=1000)
    args = parser.parse_args(argv)

    import torch
    import trl

    from thinkmesh.protocol.rules.tasks import TaskSpec, generate_task

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = build_model(Path(args.work_dir), args.task, args.difficulty, args.coldstart_examples)
    spec = TaskSpec(args.task, args.difficulty)
    tasks_by_step = [
        [generate_task(spec, b"vs-trl", step * args.prompts_per_step + i) for i in range(args.prompts_per_step)]
        for step in range(args.warmup + args.steps)
    ]
    trl_result = run_trl(args, model_dir, tasks_by_step)
    ours = run_ours(args, model_dir, tasks_by_step)
    result = {
        "ours_samples_per_s": round(ours["samples_per_s"], 2),
        "trl_samples_per_s": round(trl_result["samples_per_s"], 2),
        "ratio": round(ours["samples_per_s"] / trl_result["samples_per_s"], 2),
        "ours_time_s": {k: round(v, 2) for k, v in ours.items() if k != "samples_per_s"},
        "trl_time_s": {k: round(v, 2) for k, v in trl_result.items() if k != "samples_per_s"},
        "device": args.device, "trl_version": trl.__version__, "torch_threads": torch.get_num_threads(),
        "samples_per_step": args.prompts_per_step * args.group_size, "max_new_tokens": args.max_new_tokens,
        "timed_steps": args.steps, "task": f"{args.task}-{args.difficulty}",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
