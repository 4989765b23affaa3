"""Cold start (DeepSeek-R1's first stage): supervised fine-tuning on generated chains of thought.

RL needs a policy that is right *sometimes*: a model that is never right gets zero advantage in
every group, one that is always right has nothing to learn. A short SFT pass on a few thousand
"<think>{trace}</think> <answer>{solution}</answer>" examples teaches the R1 format and a shaky
version of the skill; RL then sharpens it.

The examples never include a held-out problem (`tasks.trainable_task`): the held-out evaluation
measures problems no training stage has seen, the cold start included.

Cached: the result records a key = SHA-256(settings, the held-out partition, base weights hash).
Running again with the same settings and partition on the same base (or on the directory it
already rewrote) does no work; a marker written under another partition (or before there was one)
misses. The marker also pins the saved tokenizer.json: a directory written by an older loader
(transformers 5's `AutoTokenizer` once saved a Qwen2 byte-level pre-tokenizer that drops every
space and newline) misses the cache and is trained again, instead of silently serving weights
tuned on mangled text.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thinkmesh.node.model.model_dir import load_model, load_tokenizer, save_model_atomically, weights_sha256
from thinkmesh.protocol.rules.errors import TaskError
from thinkmesh.protocol.rules.scoring import prompt_token_ids
from thinkmesh.protocol.rules.tasks import PARTITION_ID, DrawStream, Task, TaskSpec, render_prompt, solution_trace, trainable_task
from thinkmesh.protocol.runtime.atomic_files import write_atomic

MARKER_FILE = "thinkmesh_coldstart.json"
COLDSTART_SEED_DOMAIN = b"thinkmesh/coldstart/v1"
RATE_SCALE = 1_000_000


@dataclass(frozen=True)
class ColdStartSettings:
    """Everything that changes the cold-started weights (and so the cache key).

    `families`/`difficulties` span the task mix; examples are drawn round-robin over their
    product. `lr` peaks after a 5% warmup and decays on a cosine to 10% by the end.
    `teacher_slip_rate`: the share of demonstrations in which the teacher stops one step short
    (see `slipped_completion`); 0 is a perfect teacher.
    """

    families: tuple[str, ...] = ("arithmetic", "countdown", "linear")
    difficulties: tuple[int, ...] = (1,)
    template: str = "r1-compact"
    num_examples: int = 4000
    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    teacher_slip_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.teacher_slip_rate < 1.0:
            raise TaskError(f"cold start teacher_slip_rate: expected a fraction in [0, 1), got {self.teacher_slip_rate!r}")
        if self.teacher_slip_rate and set(self.families) != {"linear"}:
            raise TaskError(
                f"cold start teacher_slip_rate: a slip is defined for linear traces only (stop before dividing), "
                f"got families {', '.join(self.families)}"
            )

    def cache_key(self, base_weights_sha256: str) -> str:
        payload = json.dumps({"settings": asdict(self), "partition": PARTITION_ID, "base": base_weights_sha256},
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class ColdStartResult:
    """What a cold start did. `cached` True means no training ran; `seconds` is wall time."""

    key: str
    cached: bool
    seconds: float
    final_loss: float | None
    weights_sha256: str
    losses: tuple[float, ...] = field(default=(), repr=False)


def sft_text(task, template: str, slipped: bool = False) -> tuple[str, str]:
    """(prompt, completion) of one cold-start example in the R1 format."""
    if slipped:
        return render_prompt(task, template), slipped_completion(task)
    completion = f"<think>{solution_trace(task)}</think> <answer>{task.solution}</answer>"
    return render_prompt(task, template), completion


def slipped_completion(task) -> str:
    """The teacher's demonstration when it stops one step short: the trace loses its last step
    and the answer is the number the remaining trace ended on (linear: "3*x=17-2=15" answers 15,
    having never divided by 3). Linear only (`ColdStartSettings` checks): other families' last
    steps are a column sum or a restated result, not a reasoning step.

    Why: real cold-start data comes from imperfect teachers, and R1-Zero's headline effect is RL
    growing the reasoning a model does before answering. A cold start that stops short part of the
    time gives RL that decision to learn from the accuracy reward alone; nothing in training ever
    labels the short trace as wrong.
    """
    steps = solution_trace(task).split(", ")
    if len(steps) < 2:
        raise TaskError(f"cold start slip: {task.family}-{task.difficulty}: a one-step trace has no step to skip")
    kept = ", ".join(steps[:-1])
    numbers = re.findall(r"-?\d+", kept)
    return f"<think>{kept}</think> <answer>{numbers[-1]}</answer>"


def _coldstart_seed(settings: ColdStartSettings) -> bytes:
    return hashlib.sha256(COLDSTART_SEED_DOMAIN + settings.seed.to_bytes(8, "big")).digest()


def sft_tasks(settings: ColdStartSettings) -> list[Task]:
    """The problems the examples demonstrate, round-robin over (family, difficulty): a pure
    function of the settings, never a held-out problem."""
    specs = [TaskSpec(f, d) for f in settings.families for d in settings.difficulties]
    seed = _coldstart_seed(settings)
    return [trainable_task(specs[i % len(specs)], seed, i // len(specs)) for i in range(settings.num_examples)]


def sft_examples(settings: ColdStartSettings) -> list[tuple[str, str]]:
    """The training examples: a pure function of the settings (task seeds are domain-separated;
    which examples slip is drawn from the same seed, so it is fixed too)."""
    slips = DrawStream(hashlib.sha256(COLDSTART_SEED_DOMAIN + b"slips" + _coldstart_seed(settings)).digest())
    threshold = round(settings.teacher_slip_rate * RATE_SCALE)
    return [sft_text(task, settings.template, slipped=slips.below(RATE_SCALE) < threshold) for task in sft_tasks(settings)]


def cached_result(source: Path, out: Path, settings: ColdStartSettings) -> ColdStartResult | None:
    """The recorded result if `out` already holds this cold start of `source`, else None.

    A hit needs the marker's settings to match, `out`'s weights to be the ones the marker
    recorded, and either `source` to be the recorded base or `out` to be `source` itself (an
    in-place cold start whose base weights are gone by design).
    """
    marker_path = out / MARKER_FILE
    if not marker_path.is_file():
        return None
    marker = json.loads(marker_path.read_text())
    if marker.get("settings") != json.loads(json.dumps(asdict(settings))) or marker.get("partition") != PARTITION_ID:
        return None
    current = weights_sha256(out)
    if marker.get("weights_sha256") != current or marker.get("tokenizer_sha256") != tokenizer_sha256(out):
        return None
    in_place = source.resolve() == out.resolve()
    if not in_place and marker.get("base_weights_sha256") != weights_sha256(source):
        return None
    return ColdStartResult(marker["key"], True, 0.0, marker.get("final_loss"), current)


def tokenizer_sha256(directory: Path) -> str | None:
    """SHA-256 of the directory's tokenizer.json, None if it has none."""
    path = directory / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def encode_examples(tokenizer, examples: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with BOS, completion ids ending in EOS) for each example."""
    encoded = []
    for prompt, completion in examples:
        prompt_ids = prompt_token_ids(tokenizer, prompt)
        completion_ids = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
        encoded.append((prompt_ids, completion_ids))
    return encoded


def length_bucketed_batches(data, batch_size: int, generator, bucket_batches: int = 16):
    """Shuffled batches of similar-length examples: padding is wasted compute on a CPU.

    Examples are shuffled, cut into windows of `bucket_batches` batches, sorted by length inside
    each window, and the resulting batches shuffled again. Deterministic given `generator`.
    """
    import torch

    order = torch.randperm(len(data), generator=generator).tolist()
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start: start + window], key=lambda i: len(data[i][0]) + len(data[i][1]))
        batches.extend(chunk[k: k + batch_size] for k in range(0, len(chunk), batch_size))
    for index in torch.randperm(len(batches), generator=generator).tolist():
        yield [data[i] for i in batches[index]]


def sft_batch_loss(model, batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Mean token cross-entropy over completion tokens only (the prompt is context, not target)."""
    import torch

    device = next(model.parameters()).device
    width = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(batch):
        sequence = prompt + completion
        ids[row, : len(sequence)] = torch.as_tensor(sequence)
        labels[row, len(prompt): len(sequence)] = torch.as_tensor(completion)
        attention[row, : len(sequence)] = 1
    out = model(input_ids=ids.to(device), attention_mask=attention.to(device), labels=labels.to(device), use_cache=False)
    return out.loss


def sft_train(model, data: list[tuple[list[int], list[int]]], pad_id: int, *, epochs: int, batch_size: int, lr: float,
              weight_decay: float, seed: int, progress: bool = True, desc: str = "coldstart") -> list[float]:
    """SFT of `model` (in train mode) on encoded examples; returns the per-step losses.

    AdamW; the lr peaks after a 5% warmup and decays on a cosine to 10% by the end; gradients
    clipped to norm 1; `length_bucketed_batches` each epoch. Deterministic given `seed` (the global
    RNG is forked, so the caller's random state is untouched). The cold start and `thinkmesh
    distill` both train through this loop.
    """
    import torch
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    total_steps = math.ceil(len(data) / batch_size) * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))),
    )
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]), tqdm(total=total_steps, desc=desc, disable=not progress) as bar:
        torch.manual_seed(seed)
        for _ in range(epochs):
            for batch in length_bucketed_batches(data, batch_size, generator):
                loss = sft_batch_loss(model, batch, pad_id)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(float(loss.item()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update(1)
    return losses


def run_coldstart(
    source: str | Path,
    settings: ColdStartSettings = ColdStartSettings(),
    out: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> ColdStartResult:
    """SFTs the model at `source` and writes it to `out` (default: in place), unless cached."""
    source = Path(source)
    out = Path(out) if out is not None else source
    hit = cached_result(source, out, settings)
    if hit is not None:
        return hit
    started = time.monotonic()
    base_hash = weights_sha256(source)
    key = settings.cache_key(base_hash)
    tokenizer = load_tokenizer(source)
    model = load_model(source, device=device, dtype="float32").train()
    data = encode_examples(tokenizer, sft_examples(settings))
    losses = sft_train(model, data, tokenizer.pad_token_id, epochs=settings.epochs, batch_size=settings.batch_size,
                       lr=settings.lr, weight_decay=settings.weight_decay, seed=settings.seed, progress=progress)
    final_loss = sum(losses[-10:]) / len(losses[-10:])
    model.eval()
    marker = {"key": key, "settings": asdict(settings), "partition": PARTITION_ID, "base_weights_sha256": base_hash,
              "final_loss": final_loss}
    save_model_atomically(model, tokenizer, out, extra_files=_carried_files(source, out))
    marker["weights_sha256"] = weights_sha256(out)
    marker["tokenizer_sha256"] = tokenizer_sha256(out)
    write_atomic(out / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True) + "\n")  # last: marks it done
    return ColdStartResult(key, False, time.monotonic() - started, final_loss, marker["weights_sha256"], tuple(losses))


def _carried_files(source: Path, out: Path) -> dict[str, bytes]:
    """Small metadata files from the base (e.g. thinkmesh_model.json) that should travel along."""
    keep = ("thinkmesh_model.json",)
    return {name: (source / name).read_bytes() for name in keep if (source / name).is_file()}
