"""Does distilling a strong teacher make a small student reason better than RL on the student alone?

DeepSeek-R1's distillation claim, in miniature on linear-1 and a CPU. Four models, all scored by
the coordinator's held-out rule (`protocol.rules.evaluation`, greedy, problems no stage trains on):

- **teacher**: the tiny model (1.6M) cold-started on `--teacher-examples` generated chains of
  thought from a perfect generator (cached across runs under the work dir), or `--teacher DIR`;
- **student before**: a smaller architecture (`--student-arch`, default mini, 0.53M) with its own
  cold start, from the network's imperfect teacher that stops one step short in half of its
  demonstrations (`--student-slip-rate`, as the devnet's cold start);
- **student distilled**: that student after `thinkmesh distill`'s rejection sampling from the teacher
  and SFT on the kept examples (`node/local/distill.py`); its wall-clock, sampling included, is the budget
- **student RL only**: the same cold-started student after `train local` (dapo) for the same
  wall-clock (plus the seconds of the step-0 evaluation `train local` runs inside its budget).

The last line of stdout is one JSON object: the four accuracies, kept / sampled, the seconds of
each phase, the bar (distilled >= 80% of the teacher, and above RL only) and the settings.

    .venv/bin/python bench/distill.py                          # 4.9 min on 2 quiet CPU cores, teacher build included
    .venv/bin/python bench/distill.py --rl-budget-factor 5     # RL alone gets five times distillation's wall-clock

Cost: the teacher's cold start (24,000 examples, 161 s on 2 quiet cores, cached under the work dir),
the student's (8,000 examples, 20 s, cached), then about 1 minute each for distillation and RL.
On cores shared with other jobs every phase ran up to 10x slower (the wall-clock comparison stays
fair only while the load holds steady across the two phases).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

BAR_SHARE_OF_TEACHER = 0.8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=".thinkmesh/bench-distill")
    parser.add_argument("--teacher", default=None, help="a teacher model dir (default: build one, cached)")
    parser.add_argument("--teacher-examples", type=int, default=24000, help="the built teacher's cold-start examples")
    parser.add_argument("--student-arch", default="mini")
    parser.add_argument("--student-examples", type=int, default=8000, help="the student's own cold start")
    parser.add_argument("--student-slip-rate", type=float, default=0.5)
    parser.add_argument("--prompts", type=int, default=1200, help="rejection sampling: problems asked")
    parser.add_argument("--samples", type=int, default=4, help="rejection sampling: completions per problem")
    parser.add_argument("--keep-per-prompt", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=12, help="student SFT epochs over the kept examples")
    parser.add_argument("--lr", type=float, default=3e-3, help="student SFT peak lr")
    parser.add_argument("--rl-strategy", default="dapo")
    parser.add_argument("--rl-lr", type=float, default=1e-4)
    parser.add_argument("--rl-budget-factor", type=float, default=1.0,
                        help="RL only gets this many times distillation's wall-clock (1: the same)")
    parser.add_argument("--eval-tasks", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from thinkmesh.devnet.model_cache import ModelRecipe, ensure_model
    from thinkmesh.node.local.coldstart import ColdStartSettings, run_coldstart
    from thinkmesh.node.local.distill import (
        STUDENT_ARCHITECTURES, RejectionSettings, StudentSettings, init_student, rejection_sample, train_student,
    )
    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.model.tiny_model import TinyModelSpec
    from thinkmesh.node.local.train_local import LocalTrainConfig, train_local
    from thinkmesh.protocol.rules.evaluation import EvalSettings, evaluate
    from thinkmesh.protocol.rules.tasks import PARTITION_ID, TaskSpec

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    work = Path(args.work_dir)
    spec = TaskSpec("linear", 1)
    evaluation = EvalSettings(tasks=args.eval_tasks, max_new_tokens=args.max_new_tokens, template="r1-compact", samples=0)

    def log(line: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {line}", file=sys.stderr, flush=True)

    def score(directory: Path) -> tuple[float, float]:
        t0 = time.monotonic()
        accuracy = evaluate(load_model(directory), load_tokenizer(directory), spec, evaluation).accuracy
        return accuracy, time.monotonic() - t0

    def params(directory: Path) -> int:
        return sum(p.numel() for p in load_model(directory).parameters())

    # 1. The teacher.
    if args.teacher:
        teacher, teacher_built_s = Path(args.teacher), 0.0
    else:
        recipe = ModelRecipe("bench-distill-teacher", TinyModelSpec(),
                             ColdStartSettings(families=("linear",), num_examples=args.teacher_examples, seed=args.seed))
        built = ensure_model(recipe, work / "cache", progress=True)
        teacher, teacher_built_s = built.path, built.built_s
    log(f"teacher {teacher} ({'built in %.0fs' % teacher_built_s if teacher_built_s else 'cached'})")
    teacher_accuracy, _ = score(teacher)
    log(f"teacher held-out accuracy {teacher_accuracy:.3f}")

    # 2. The student's own cold start.
    base, before = work / f"student-{args.student_arch}-base", work / f"student-{args.student_arch}-coldstart"
    if not (base / "config.json").is_file():
        init_student(args.student_arch, base, seed=args.seed)
    coldstart = run_coldstart(base, ColdStartSettings(families=("linear",), num_examples=args.student_examples,
                                                      seed=args.seed, teacher_slip_rate=args.student_slip_rate),
                              out=before, progress=True)
    before_accuracy, eval_s = score(before)
    log(f"student cold start ({'cached' if coldstart.cached else '%.0fs' % coldstart.seconds}): {before_accuracy:.3f}")

    # 3. Distillation: rejection sampling from the teacher, then SFT; its wall-clock is the budget.
    t0 = time.monotonic()
    dataset = rejection_sample(teacher, RejectionSettings(
        families=("linear",), prompts=args.prompts, samples_per_prompt=args.samples,
        keep_per_prompt=args.keep_per_prompt, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        seed=args.seed), progress=True)
    distilled = work / f"student-{args.student_arch}-distilled"
    result = train_student(before, dataset, distilled, StudentSettings(epochs=args.epochs, lr=args.lr, seed=args.seed))
    distill_s = time.monotonic() - t0
    distilled_accuracy, _ = score(distilled)
    log(f"distilled in {distill_s:.0f}s (kept {len(dataset.records)} of {dataset.sampled}): {distilled_accuracy:.3f}")

    # 4. RL alone from the same cold start, for the same wall-clock.
    run = work / f"student-{args.student_arch}-rl"
    shutil.rmtree(run, ignore_errors=True)
    rl_budget_s = args.rl_budget_factor * distill_s + eval_s
    summary = train_local(LocalTrainConfig(
        model_dir=str(before), run_dir=str(run), strategy=args.rl_strategy, steps=100_000, lr=args.rl_lr,
        max_new_tokens=args.max_new_tokens, eval_every=100_000, eval_tasks=args.eval_tasks, eval_samples=0,
        checkpoint_every=100_000, seed=args.seed, max_minutes=rl_budget_s / 60,
    ), progress=True, log=log)
    rl_accuracy = summary.evals[-1][1]
    log(f"RL only: {summary.step} steps in {summary.seconds:.0f}s: {rl_accuracy:.3f}")

    share = distilled_accuracy / teacher_accuracy if teacher_accuracy else 0.0
    print(json.dumps({
        "task": "linear-1",
        "teacher_accuracy": teacher_accuracy,
        "student_before_accuracy": before_accuracy,
        "student_distilled_accuracy": distilled_accuracy,
        "student_rl_only_accuracy": rl_accuracy,
        "distilled_share_of_teacher": round(share, 3),
        "kept": len(dataset.records),
        "sampled": dataset.sampled,
        "kept_fraction": round(len(dataset.records) / dataset.sampled, 3),
        "distinct_prompts_kept": result.summary["distinct_prompts"],
        "distill_s": round(distill_s, 1),
        "sampling_s": round(dataset.seconds, 1),
        "student_sft_s": round(result.seconds, 1),
        "rl_only_s": round(summary.seconds, 1),
        "rl_only_steps": summary.step,
        "bar_share_of_teacher": BAR_SHARE_OF_TEACHER,
        "meets_share_bar": share >= BAR_SHARE_OF_TEACHER,
        "beats_rl_only": distilled_accuracy > rl_accuracy,
        "teacher_params": params(teacher),
        "student_arch": args.student_arch,
        "student_params": params(before),
        "student_spec": {k: v for k, v in vars(STUDENT_ARCHITECTURES[args.student_arch]).items()},
        "teacher_built_s": round(teacher_built_s, 1),
        "student_coldstart_s": round(coldstart.seconds, 1),
        "eval_tasks": args.eval_tasks,
        "heldout_partition": PARTITION_ID,
        "settings": {k: getattr(args, k) for k in (
            "teacher", "teacher_examples", "student_examples", "student_slip_rate", "prompts", "samples",
            "keep_per_prompt", "temperature", "epochs", "lr", "rl_strategy", "rl_lr", "rl_budget_factor", "max_new_tokens",
            "seed")},
        "torch_threads": torch.get_num_threads(),
        "minutes": round((time.monotonic() - started) / 60, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
