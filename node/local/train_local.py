"""`thinkmesh train local`: single-process GRPO training, the nanoGPT-sized loop of a node.

Per step: draw tasks (a pure function of seed and step, never a held-out problem:
`tasks.trainable_task`) -> `collect_rollouts` -> `policy_gradient` -> clip -> `optimizer.step()`
(lr warmed up linearly over `warmup_steps`); every `eval_every` steps the held-out evaluation
(`protocol.rules.evaluation`, the coordinator's rule: greedy accuracy, sampled accuracy, pass@k). Metrics go
to `<run_dir>/metrics.jsonl` (one JSON object per line, `"kind": "train" | "eval"`), and a
checkpoint (model, tokenizer, optimizer, step, RNG state) to `<run_dir>/checkpoint`, written to a
temp dir and renamed into place. Started again with the same run dir, training resumes from the
checkpoint and trims metric lines logged after it, so a killed run continues as if never stopped
(sampling seeds are derived from (seed, step), not from RNG history).

With `adapter_rank` set, the run trains a LoRA adapter instead of the whole model, through the
network's own wrapper (`protocol.rules.adapters.attach_adapter`: peft LoRA on every linear layer but the
head, the AdapterSpec an adapter round announces); the base stays frozen, the optimizer holds the
adapter's tensors alone, and the checkpoint keeps only the adapter (`adapter.safetensors`, the
network's adapter file, with its architecture in `adapter.json`) and the trainer state: a resumed
run re-attaches it to the same base (`model_dir`, whose tokenizer it uses). "LoRA Without Regret"
(Schulman et al., 2025) finds LoRA's best RL learning rate about 10x full fine-tuning's:
`default_lr` applies that factor, `LORA_LR_SCALE`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from thinkmesh.node.model.model_dir import (
    ModelDirError,
    load_model,
    load_tokenizer,
    save_directory_atomically,
    save_model_atomically,
)
from thinkmesh.node.local.multi_epoch import multi_epoch_update
from thinkmesh.node.work.train_step import collect_rollouts, policy_gradient
from thinkmesh.protocol.rules.evaluation import HELDOUT_SEED_TEXT, EvalSettings, evaluate
from thinkmesh.protocol.rules.strategies import StrategySpec, strategy_from_name, validate_strategy
from thinkmesh.protocol.rules.tasks import Task, TaskSpec, trainable_task
from thinkmesh.protocol.rules.adapters import (
    AdapterSpec,
    adapter_architecture,
    adapter_file_bytes,
    attach_adapter,
    linear_module_names,
    load_adapter_file,
    trainable_count,
    trainable_named_parameters,
)
from thinkmesh.protocol.rules.model_manifest import canonical_architecture, model_parameters, parameters_hash

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
TRAIN_SEED_DOMAIN = b"thinkmesh/train-local/v1"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_SPEC_FILE = "adapter.json"
FULL_FT_LR = 1e-4  # `train local`'s and bench/learning.py's default: 5e-4 erodes the tiny model's cold start
LORA_LR_SCALE = 10.0  # LoRA Without Regret: LoRA's best lr is ~10x full fine-tuning's, in RL as in SFT
LORA_ALPHA = 32.0  # the paper's fixed alpha, under which that 10x holds across ranks


@dataclass(frozen=True)
class LocalTrainConfig:
    """One local run. Defaults train the tiny model on CPU in minutes.

    `group_size`, `max_new_tokens` and `temperature` override the strategy preset when set;
    a preset with DAPO's overlong buffer gets one fifth of `max_new_tokens`, as in the paper.
    """

    model_dir: str
    run_dir: str
    task: str = "linear"
    difficulty: int = 1
    template: str = "r1-compact"
    strategy: str = "dapo"
    steps: int = 100
    prompts_per_step: int = 16
    group_size: int | None = 8
    max_new_tokens: int | None = 40  # linear-1 traces are ~25 tokens; DAPO's soft limit lands at 32
    temperature: float | None = None
    lr: float = 5e-4
    warmup_steps: int = 10  # linear lr warmup: a fresh Adam's first steps are sign-sized, whatever the signal
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 10
    eval_tasks: int = 128  # distinct held-out problems (linear-1 has 150)
    eval_samples: int = 4  # k of the evaluation's sampled accuracy and pass@k (T = 1); 0: greedy only
    eval_seed: str = HELDOUT_SEED_TEXT  # the coordinator's default `[eval] seed`: the same set
    checkpoint_every: int = 10
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    max_minutes: float | None = None  # wall-clock budget: stop (eval + checkpoint) after the step that passes it
    update_epochs: int = 1  # >1: that many clipped updates per rollout batch (node.multi_epoch); local only
    adapter_rank: int | None = None  # LoRA of this rank on all linear layers (protocol.adapters); None: full model
    adapter_alpha: float = LORA_ALPHA

    def strategy_spec(self) -> StrategySpec:
        spec = strategy_from_name(self.strategy)
        overrides = {}
        if self.group_size is not None:
            overrides["group_size"] = self.group_size
        if self.max_new_tokens is not None:
            overrides["max_new_tokens"] = self.max_new_tokens
            if spec.overlong_buffer:
                overrides["overlong_buffer"] = max(1, self.max_new_tokens // 5)
        if self.temperature is not None:
            overrides["temperature"] = self.temperature
        return validate_strategy(replace(spec, **overrides))


@dataclass(frozen=True)
class TrainSummary:
    """Where a run ended: steps done, the evaluations (step, accuracy), wall seconds, and how many
    parameters the optimizer trained (the adapter's alone in a LoRA run)."""

    step: int
    evals: tuple[tuple[int, float], ...]
    seconds: float
    resumed_from: int
    trainable_parameters: int


def default_lr(adapter_rank: int | None, full_lr: float = FULL_FT_LR) -> float:
    """`full_lr` for full fine-tuning, `LORA_LR_SCALE` times it for a LoRA run."""
    return full_lr if adapter_rank is None else full_lr * LORA_LR_SCALE


def run_adapter_spec(config: LocalTrainConfig, base) -> AdapterSpec | None:
    """The AdapterSpec an adapter round on this base would announce: the base pinned by its hash,
    the configured rank and alpha, every linear layer but the head. None for full fine-tuning."""
    if config.adapter_rank is None:
        return None
    base_hash = parameters_hash(model_parameters(base), canonical_architecture(base.config.to_dict()))
    return AdapterSpec(base_hash=base_hash, rank=config.adapter_rank, alpha=float(config.adapter_alpha),
                       target_modules=linear_module_names(base))


def load_policy(config: LocalTrainConfig, checkpoint: Path | None = None):
    """(model, adapter spec) as the run trains it: the full model (from `checkpoint` when given,
    else `model_dir`), or `model_dir`'s frozen base with the LoRA attached, its adapter tensors
    from `checkpoint` when given (ModelDirError if that checkpoint holds another adapter)."""
    if config.adapter_rank is None:
        return load_model(checkpoint or config.model_dir, config.device, config.dtype), None
    base = load_model(config.model_dir, config.device, config.dtype)
    spec = run_adapter_spec(config, base)
    model = attach_adapter(base, spec, seed=config.seed)
    if checkpoint is not None:
        saved = checkpoint / ADAPTER_SPEC_FILE
        if not saved.is_file() or saved.read_text() != adapter_architecture(spec):
            raise ModelDirError(f"expected {checkpoint} to hold the adapter {adapter_architecture(spec)}, "
                                f"found {saved.read_text() if saved.is_file() else 'a full-model checkpoint'}")
        load_adapter_file(model, checkpoint / ADAPTER_FILE)
    return model, spec


def load_trained_model(config: LocalTrainConfig):
    """The run's model as last checkpointed (the starting model if it has no checkpoint), in eval mode."""
    checkpoint = Path(config.run_dir) / CHECKPOINT_DIR
    return load_policy(config, checkpoint if (checkpoint / TRAINER_STATE_FILE).is_file() else None)[0].eval()


def eval_settings(config: LocalTrainConfig, max_new_tokens: int) -> EvalSettings:
    """The run's held-out evaluation: with the same template, tokens and seed, the same set and
    figures as the coordinator's."""
    return EvalSettings(tasks=config.eval_tasks, max_new_tokens=max_new_tokens, template=config.template,
                        samples=config.eval_samples, seed_text=config.eval_seed)


def step_tasks(config: LocalTrainConfig, step: int) -> list[Task]:
    """The prompts of training step `step`: a pure function of (seed, step), never a held-out
    problem (`tasks.trainable_task`), so the evaluation measures problems the run never trained on."""
    seed = hashlib.sha256(TRAIN_SEED_DOMAIN + config.seed.to_bytes(8, "big")).digest()
    spec = TaskSpec(config.task, config.difficulty)
    first = step * config.prompts_per_step
    return [trainable_task(spec, seed, slot) for slot in range(first, first + config.prompts_per_step)]


def step_generator(config: LocalTrainConfig, step: int, device) -> torch.Generator:
    digest = hashlib.sha256(TRAIN_SEED_DOMAIN + b"sampling" + config.seed.to_bytes(8, "big") + step.to_bytes(8, "big")).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def learning_rate(config: LocalTrainConfig, step: int) -> float:
    """The lr of step `step` (0-based): linear warmup to `config.lr`, then flat.

    A function of the step alone, so a resumed run needs no scheduler state.
    """
    return config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))


def save_checkpoint(run_dir: Path, model, tokenizer, optimizer, step: int, adapter: AdapterSpec | None = None) -> None:
    """The whole model, or with `adapter` only the adapter's tensors: the base is `model_dir`, unchanged."""
    state = io.BytesIO()
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, state)
    if adapter is None:
        save_model_atomically(model, tokenizer, run_dir / CHECKPOINT_DIR, extra_files={TRAINER_STATE_FILE: state.getvalue()})
        return

    def write(staging: Path) -> None:
        (staging / ADAPTER_FILE).write_bytes(adapter_file_bytes(model))
        (staging / ADAPTER_SPEC_FILE).write_text(adapter_architecture(adapter))
        (staging / TRAINER_STATE_FILE).write_bytes(state.getvalue())

    save_directory_atomically(run_dir / CHECKPOINT_DIR, write)


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drops lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def train_local(config: LocalTrainConfig, progress: bool = True, log=print) -> TrainSummary:
    """Runs (or resumes) `config`; returns when `config.steps` steps are done."""
    from tqdm.auto import tqdm

    started = time.monotonic()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / CHECKPOINT_DIR
    resume = (checkpoint / TRAINER_STATE_FILE).is_file()
    tokenizer = load_tokenizer(checkpoint if resume and config.adapter_rank is None else Path(config.model_dir))
    model, adapter = load_policy(config, checkpoint if resume else None)
    trainable = [p for _, p in trainable_named_parameters(model)]
    if adapter is not None:
        log(f"LoRA rank {adapter.rank}, alpha {adapter.alpha:g} on {','.join(adapter.target_modules)}: "
            f"{trainable_count(model):,} trainable parameters, base frozen")
    strategy = config.strategy_spec()
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    start_step = 0
    if resume:
        state = torch.load(checkpoint / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_step = state["step"]
        log(f"resuming {run_dir} from step {start_step}")
    reference = None
    if strategy.beta > 0:
        reference = copy.deepcopy(load_model(config.model_dir, config.device, config.dtype)).eval().requires_grad_(False)
    metrics_path = run_dir / METRICS_FILE
    if resume:
        _trim_metrics(metrics_path, start_step)
    else:  # killed before its first checkpoint: start the log over with the run
        metrics_path.unlink(missing_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")
    task_spec = TaskSpec(config.task, config.difficulty)
    evaluation = eval_settings(config, strategy.max_new_tokens)
    evals: list[tuple[int, float]] = []
    device = next(model.parameters()).device
    done = start_step

    def run_eval(step: int, metrics) -> None:
        model.eval()
        result = evaluate(model, tokenizer, task_spec, evaluation)
        evals.append((step, result.accuracy))
        elapsed = round(time.monotonic() - started, 2)
        metrics.write(json.dumps({"kind": "eval", "step": step, "elapsed_s": elapsed, **asdict(result)}) + "\n")
        metrics.flush()

    with metrics_path.open("a") as metrics, tqdm(total=config.steps, initial=start_step, desc="train", disable=not progress) as bar:
        if start_step == 0:
            run_eval(0, metrics)
        for step in range(start_step, config.steps):
            t0 = time.perf_counter()
            model.eval()
            rollouts = collect_rollouts(model, tokenizer, step_tasks(config, step), strategy, config.template,
                                        step_generator(config, step, device))
            t1 = time.perf_counter()
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step)
            if config.update_epochs > 1:
                epochs = multi_epoch_update(model, optimizer, rollouts, strategy, tokenizer.pad_token_id,
                                            config.update_epochs, config.max_grad_norm, reference)
                result, grad_norm = epochs.first, (epochs.grad_norms or (0.0,))[0]
                last_clip = epochs.last_clip_fraction
            else:
                optimizer.zero_grad(set_to_none=True)
                result = policy_gradient(model, rollouts, strategy, tokenizer.pad_token_id, reference)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
                if result.kept_groups:
                    optimizer.step()
                last_clip = result.stats.clip_fraction
            t2 = time.perf_counter()
            rewards = rollouts.reward_matrix()
            record = {
                "kind": "train", "step": step + 1, "loss": result.loss, "mean_reward": float(rewards.mean()),
                "accuracy": rollouts.accuracy, "kept_groups": result.kept_groups, "grad_norm": grad_norm,
                "clip_fraction": result.stats.clip_fraction, "last_epoch_clip_fraction": last_clip, "kl": result.stats.kl,
                "mean_tokens": sum(len(c.token_ids) for c in rollouts.completions) / len(rollouts.completions),
                "rollout_s": t1 - t0, "update_s": t2 - t1,
            }
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            bar.set_postfix(reward=f"{record['mean_reward']:.3f}", acc=f"{record['accuracy']:.2f}")
            bar.update(1)
            done = step + 1
            out_of_time = config.max_minutes is not None and time.monotonic() - started >= 60 * config.max_minutes
            last = done == config.steps or out_of_time
            if done % config.eval_every == 0 or last:
                run_eval(done, metrics)
            if done % config.checkpoint_every == 0 or last:
                save_checkpoint(run_dir, model, tokenizer, optimizer, done, adapter)
            if out_of_time:
                break
    return TrainSummary(done, tuple(evals), time.monotonic() - started, start_step, trainable_count(model))
