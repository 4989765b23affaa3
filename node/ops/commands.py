"""The `thinkmesh` subcommands of the node role. Imports of heavy libraries stay inside handlers.

    thinkmesh model init DIR          a tiny Qwen2 + character tokenizer, built locally
    thinkmesh model coldstart DIR     SFT on generated R1-format chains of thought (cached)
    thinkmesh train local ...         single-process GRPO: rollouts, rewards, steps, evals
    thinkmesh node init ...           a commented node.toml for this machine (`thinkmesh.node.ops.init_commands`)
    thinkmesh node run --config F     the mesh daemon (`thinkmesh.node.ops.daemon_commands`)
    thinkmesh node doctor --config F  pre-flight checks, each with its fix (`thinkmesh.node.ops.doctor_commands`)
"""

from __future__ import annotations

import argparse

from thinkmesh.node.ops import daemon_commands, doctor_commands, init_commands, operator_commands


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds this role's subcommands; each sets `handler=` to a function of the parsed args."""
    model = subparsers.add_parser("model", help="build and cold-start a model directory")
    model_commands = model.add_subparsers(dest="model_command", metavar="COMMAND")

    init = model_commands.add_parser("init", help="write a tiny Qwen2 model + tokenizer to DIR (no download)")
    init.add_argument("dir")
    init.add_argument("--arch", default=None, choices=("tiny", "qwen2.5-0.5b"),
                      help="a named architecture, exact in shape, randomly initialised (overrides the size flags); "
                           "the tokenizer is thinkmesh's character tokenizer, not the real model's")
    init.add_argument("--hidden-size", type=int, default=192)
    init.add_argument("--layers", type=int, default=4)
    init.add_argument("--heads", type=int, default=6)
    init.add_argument("--kv-heads", type=int, default=2)
    init.add_argument("--intermediate-size", type=int, default=512)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--force", action="store_true", help="overwrite an existing model in DIR")
    init.set_defaults(handler=model_init)

    cold = model_commands.add_parser("coldstart", help="SFT DIR on generated chains of thought (cached)")
    cold.add_argument("dir")
    cold.add_argument("--out", default=None, help="write the result here instead of in place")
    cold.add_argument("--families", default="arithmetic,countdown,linear", help="comma-separated task families")
    cold.add_argument("--difficulties", default="1", help="comma-separated difficulty levels")
    cold.add_argument("--template", default="r1-compact")
    cold.add_argument("--examples", type=int, default=4000)
    cold.add_argument("--epochs", type=int, default=1)
    cold.add_argument("--batch-size", type=int, default=32)
    cold.add_argument("--lr", type=float, default=3e-3)
    cold.add_argument("--seed", type=int, default=0)
    cold.add_argument("--teacher-slip-rate", type=float, default=0.0,
                      help="share of demonstrations in which the teacher stops one step short (0: none)")
    cold.add_argument("--device", default="cpu")
    cold.set_defaults(handler=model_coldstart)

    train = subparsers.add_parser("train", help="train without the mesh")
    train_commands = train.add_subparsers(dest="train_command", metavar="COMMAND")
    local = train_commands.add_parser("local", help="single-process GRPO training with evals and checkpoints")
    local.add_argument("--model", required=True, help="model directory (e.g. after `model coldstart`)")
    local.add_argument("--run-dir", required=True, help="metrics.jsonl + checkpoint/; an existing run resumes")
    local.add_argument("--task", default="linear")
    local.add_argument("--difficulty", type=int, default=1)
    local.add_argument("--template", default="r1-compact")
    local.add_argument("--strategy", default="dapo")
    local.add_argument("--steps", type=int, default=100)
    local.add_argument("--prompts-per-step", type=int, default=16)
    local.add_argument("--group-size", type=int, default=8)
    local.add_argument("--max-new-tokens", type=int, default=40)
    local.add_argument("--warmup-steps", type=int, default=10, help="linear learning-rate warmup")
    local.add_argument("--temperature", type=float, default=None)
    local.add_argument("--lr", type=float, default=None,
                       help="default 1e-4 (on the tiny model, 5e-4 erodes a cold start's greedy accuracy: "
                            "docs/learning.md), 10x that with --adapter lora (LoRA Without Regret)")
    local.add_argument("--adapter", choices=("lora",), default=None,
                       help="train a LoRA adapter on every linear layer (the network's adapter rounds' wrapper) "
                            "instead of the whole model; the base stays frozen")
    local.add_argument("--rank", type=int, default=8, help="LoRA rank (with --adapter lora)")
    local.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (with --adapter lora)")
    local.add_argument("--eval-every", type=int, default=10)
    local.add_argument("--eval-tasks", type=int, default=128)
    local.add_argument("--checkpoint-every", type=int, default=10)
    local.add_argument("--max-minutes", type=float, default=None)
    local.add_argument("--update-epochs", type=int, default=1,
                       help="clipped updates per rollout batch (PPO epochs; local training only)")
    local.add_argument("--seed", type=int, default=0)
    local.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    local.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    local.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    local.set_defaults(handler=train_local_command)

    node = subparsers.add_parser("node", help="run a training node")
    node_commands = node.add_subparsers(dest="node_command", metavar="COMMAND")
    init_commands.register(node_commands)
    daemon_commands.register(node_commands)
    doctor_commands.register(node_commands)
    operator_commands.register(node_commands)


def _quiet_transformers() -> None:
    """Our own tqdm bars say what is happening; transformers' per-load bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def model_init(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from pathlib import Path

    from thinkmesh.node.model.model_dir import ModelDirError
    from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir

    if (Path(args.dir) / "config.json").exists() and not args.force:
        raise ModelDirError(f"expected no model at {args.dir} (pass --force to overwrite), found config.json")
    from thinkmesh.node.model.tiny_model import ARCHITECTURES

    try:
        spec = (ARCHITECTURES[args.arch] if getattr(args, "arch", None) else
                TinyModelSpec(args.hidden_size, args.layers, args.heads, args.kv_heads, args.intermediate_size))
    except ValueError as exc:
        raise ModelDirError(str(exc)) from None
    count = init_model_dir(args.dir, spec, seed=args.seed)
    print(f"model init: {count:,} parameters written to {args.dir}")
    return 0


def model_coldstart(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from thinkmesh.node.local.coldstart import ColdStartSettings, run_coldstart
    from thinkmesh.protocol.rules.tasks import TaskSpec

    families = tuple(part.strip() for part in args.families.split(",") if part.strip())
    difficulties = _int_list(args.difficulties)
    for family in families:
        for difficulty in difficulties:
            TaskSpec(family, difficulty)  # raises TaskError naming the bad value
    settings = ColdStartSettings(
        families=families, difficulties=difficulties, template=args.template, num_examples=args.examples,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        teacher_slip_rate=args.teacher_slip_rate,
    )
    result = run_coldstart(args.dir, settings, out=args.out, device=args.device)
    if result.cached:
        print(f"model coldstart: cache hit ({result.key[:12]}), nothing to do")
    else:
        print(f"model coldstart: done in {result.seconds:.0f}s, final loss {result.final_loss:.3f} ({result.key[:12]})")
    return 0


def train_local_command(args: argparse.Namespace) -> int:
    import torch

    _quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    from thinkmesh.node.local.train_local import LocalTrainConfig, default_lr, train_local
    from thinkmesh.protocol.rules.tasks import TaskSpec

    TaskSpec(args.task, args.difficulty)
    rank = args.rank if args.adapter == "lora" else None
    config = LocalTrainConfig(
        model_dir=args.model, run_dir=args.run_dir, task=args.task, difficulty=args.difficulty,
        template=args.template, strategy=args.strategy, steps=args.steps, prompts_per_step=args.prompts_per_step,
        group_size=args.group_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        lr=default_lr(rank) if args.lr is None else args.lr,
        eval_every=args.eval_every, eval_tasks=args.eval_tasks, checkpoint_every=args.checkpoint_every,
        seed=args.seed, device=args.device, dtype=args.dtype, max_minutes=args.max_minutes,
        warmup_steps=args.warmup_steps, update_epochs=args.update_epochs,
        adapter_rank=rank, adapter_alpha=args.lora_alpha,
    )
    summary = train_local(config)
    curve = ", ".join(f"{step}:{accuracy:.3f}" for step, accuracy in summary.evals)
    print(f"train local: {summary.step} steps in {summary.seconds:.0f}s, {summary.trainable_parameters:,} trainable "
          f"parameters (lr {config.lr:g}); held-out accuracy by step {curve}")
    return 0
