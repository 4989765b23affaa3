"""Distillation (DeepSeek-R1's last stage): a dataset of correct reasoning, then SFT of a smaller student.

Rejection sampling turns a strong model into data: sample k completions per prompt, keep only
those the rule-based rewards call correct and well formed, and a small model trained on them
by plain SFT learns to reason better than RL on the small model alone reaches (R1, section 4.1).

**Teacher source** (`rejection_sample`). Prompt i of `settings.prompts` is task
`trainable_task(spec, spec_seed(spec), i // len(specs))` of spec `specs[i % len(specs)]`
(round-robin over families x difficulties): a pure function of the settings that never draws a
held-out problem (`tasks.is_heldout`, the public partition the held-out evaluation draws from). Row
r of prompt i samples from the public stream `sampling.row_key(spec_seed, DISTILL_STREAM_KEY,
index, r)` at the settings' temperature, top_p and max_new_tokens, with the rollout engine
(`protocol.rules.rollout.generate`), so anyone holding the teacher regenerates any example from its
record. A completion is kept iff its rewards (`rewards.score_completion`) pass the generation
round's acceptance rule (`generation.trace_accepted`: accuracy 1 and format 1), the rule the mesh's
own rejection sampling uses; of a prompt's kept completions, the first `keep_per_prompt` distinct
texts stay.

**Record** (one JSON line per kept example, `DATASET_FILE`): `source` "teacher", `prompt`,
`completion`, `rewards` [accuracy, format, language, length], `teacher_hash` (the model hash
`model_manifest.parameters_hash` of the teacher's weights and architecture: the version it came
from), `task` {family, difficulty}, `template`, `seed` (hex spec seed), `index`, `row`, and
`sampling` {temperature, top_p, max_new_tokens}. The verified-traces source
(`devnet/distill_commands.py`) writes `traces export` lines with `source` "traces" instead: round,
trace hash and Merkle proof, checked against the chain before training.

**Student** (`train_student`): the cold start's SFT loop (`coldstart.sft_train`) over every record's
(prompt, completion), from a fresh architecture (`init_student`) or an existing model directory;
the output directory holds the student, the dataset and `SUMMARY_FILE`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thinkmesh.node.local.coldstart import encode_examples, sft_train
from thinkmesh.node.model.model_dir import load_model, load_tokenizer, save_model_atomically, weights_sha256
from thinkmesh.node.model.tiny_model import ARCHITECTURES, TinyModelSpec, init_model_dir
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.tasks import PARTITION_ID, TEMPLATES, Task, TaskSpec, is_heldout, render_prompt, trainable_task

DISTILL_SEED_DOMAIN = b"thinkmesh/distill/v1"
DISTILL_STREAM_KEY = b"thinkmesh/distill-sampling/v1"  # the "node key" of the teacher's sampling streams
DATASET_FILE = "distill.jsonl"
SUMMARY_FILE = "thinkmesh_distill.json"
SOURCE_TEACHER = "teacher"
SOURCE_TRACES = "traces"

# Students smaller than the devnet's tiny model (1.6M parameters): mini 0.53M, micro 0.08M.
STUDENT_ARCHITECTURES: dict[str, TinyModelSpec] = {
    **ARCHITECTURES,
    "mini": TinyModelSpec(hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=320),
    "micro": TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),
}


class DistillError(ProtocolError):
    """A distillation that cannot run: no example kept, a bad setting, a trace not under its on-chain root."""


@dataclass(frozen=True)
class RejectionSettings:
    """What the teacher is asked: `prompts` problems, `samples_per_prompt` completions each."""

    families: tuple[str, ...] = ("linear",)
    difficulties: tuple[int, ...] = (1,)
    template: str = "r1-compact"
    prompts: int = 1200
    samples_per_prompt: int = 4
    keep_per_prompt: int = 1  # distinct correct completions kept per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 40
    seed: int = 0
    batch_rows: int = 256  # rows per generate call: bounds memory, changes no sample beyond float noise

    def __post_init__(self) -> None:
        for name in ("prompts", "samples_per_prompt", "keep_per_prompt", "max_new_tokens", "batch_rows"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise DistillError(f"distill {name}: expected a positive int, got {getattr(self, name)!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise DistillError(f"distill sampling: expected temperature > 0 and top_p in (0, 1], "
                               f"got {self.temperature!r}, {self.top_p!r}")
        if self.template not in TEMPLATES:
            raise DistillError(f"distill template: expected one of {tuple(TEMPLATES)}, got {self.template!r}")
        self.specs()  # TaskSpec raises TaskError naming a bad family or difficulty

    def specs(self) -> list[TaskSpec]:
        return [TaskSpec(f, d) for f in self.families for d in self.difficulties]


@dataclass(frozen=True)
class StudentSettings:
    """The student's SFT (`coldstart.sft_train`). Many epochs over a small kept set: on bench/distill.py's
    1,194 kept examples the mini student reached 0.28 held-out after 2 epochs, 0.60 after 6, 0.82 after 12."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class Dataset:
    """Kept records, and how many samples were drawn to keep them (`sampled` 0: not sampled here)."""

    records: tuple[dict, ...]
    sampled: int
    seconds: float = 0.0
    provenance: dict = field(default_factory=dict)


def spec_seed(spec: TaskSpec, seed: int) -> bytes:
    """The 32-byte seed of `spec`'s prompts (and, as the round seed, of their sampling streams)."""
    tag = f"{spec.family}-{spec.difficulty}".encode()
    return hashlib.sha256(DISTILL_SEED_DOMAIN + seed.to_bytes(8, "big") + len(tag).to_bytes(1, "big") + tag).digest()


def distill_prompts(settings: RejectionSettings) -> list[tuple[TaskSpec, bytes, int, Task]]:
    """(spec, spec seed, index, task) of every prompt, in order (module docstring); never held out."""
    specs = settings.specs()
    seeds = [spec_seed(spec, settings.seed) for spec in specs]
    prompts = []
    for i in range(settings.prompts):
        spec, seed, index = specs[i % len(specs)], seeds[i % len(specs)], i // len(specs)
        task = trainable_task(spec, seed, index)
        if is_heldout(task):  # trainable_task's promise; checked because the evaluation rests on it
            raise DistillError(f"distill prompt {i}: expected a trainable problem, got held-out {task.question!r}")
        prompts.append((spec, seed, index, task))
    return prompts


def teacher_hash(model) -> str:
    """The teacher's version: the model hash the mesh announces for these weights (hex)."""
    from thinkmesh.protocol.rules.model_manifest import canonical_architecture, model_parameters, parameters_hash

    return parameters_hash(model_parameters(model), canonical_architecture(model.config.to_dict())).hex()


def rejection_sample(teacher_dir: str | Path, settings: RejectionSettings = RejectionSettings(), *, device: str = "cpu",
                     progress: bool = True) -> Dataset:
    """The teacher's kept examples (module docstring); `sampled` counts every completion drawn."""
    import torch
    from tqdm.auto import tqdm

    from thinkmesh.protocol.rules.generation import trace_accepted
    from thinkmesh.protocol.rules.rewards import score_completion
    from thinkmesh.protocol.rules.rollout import SamplingSettings, generate
    from thinkmesh.protocol.rules.sampling import row_key, stop_rule_for
    from thinkmesh.protocol.rules.scoring import completion_text, prompt_token_ids

    started = time.monotonic()
    tokenizer = load_tokenizer(teacher_dir)
    model = load_model(teacher_dir, device=device, dtype="float32")
    version = teacher_hash(model)
    prompts = distill_prompts(settings)
    k = settings.samples_per_prompt
    sampling = SamplingSettings(settings.temperature, settings.top_p, settings.max_new_tokens)
    stop = stop_rule_for(tokenizer)
    per_call = max(1, settings.batch_rows // k)
    records: list[dict] = []
    with torch.no_grad(), tqdm(total=len(prompts) * k, desc="distill: sampling", disable=not progress) as bar:
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start: start + per_call]
            texts = [render_prompt(task, settings.template) for _, _, _, task in chunk]
            ids = [tuple(prompt_token_ids(tokenizer, text)) for text in texts]
            keys = [row_key(seed, DISTILL_STREAM_KEY, index, row) for _, seed, index, _ in chunk for row in range(k)]
            completions = generate(model, [p for p in ids for _ in range(k)], sampling, stop, tokenizer.pad_token_id,
                                   tokenizer=tokenizer, keys=keys)
            for j, (spec, seed, index, task) in enumerate(chunk):
                kept: list[str] = []
                for row in range(k):
                    if len(kept) == settings.keep_per_prompt:
                        break
                    completion = completions[j * k + row]
                    text = completion_text(tokenizer, completion.token_ids)
                    rewards = score_completion(task, text, len(completion.token_ids), settings.max_new_tokens)
                    if not trace_accepted(rewards) or text in kept:
                        continue
                    kept.append(text)
                    records.append({
                        "source": SOURCE_TEACHER, "prompt": texts[j], "completion": text,
                        "rewards": [rewards.accuracy, rewards.format, rewards.language, rewards.length],
                        "teacher_hash": version, "task": {"family": spec.family, "difficulty": spec.difficulty},
                        "template": settings.template, "seed": seed.hex(), "index": index, "row": row,
                        "sampling": {"temperature": settings.temperature, "top_p": settings.top_p,
                                     "max_new_tokens": settings.max_new_tokens},
                    })
            bar.update(len(chunk) * k)
    provenance = {"source": SOURCE_TEACHER, "teacher": str(teacher_dir), "teacher_hash": version,
                  "rejection": asdict(settings), "heldout_partition": PARTITION_ID}
    return Dataset(tuple(records), len(prompts) * k, time.monotonic() - started, provenance)


def init_student(arch: str, directory: str | Path, seed: int = 0) -> int:
    """A fresh student of a named architecture in `directory`; returns its parameter count."""
    if arch not in STUDENT_ARCHITECTURES:
        raise DistillError(f"--student-arch: expected one of {sorted(STUDENT_ARCHITECTURES)}, got {arch!r}")
    return init_model_dir(directory, STUDENT_ARCHITECTURES[arch], seed=seed)


def dataset_jsonl(records) -> bytes:
    return "".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode()


@dataclass(frozen=True)
class StudentResult:
    """Where the student went, what it learned from, and how long the SFT took (wall seconds)."""

    out: Path
    examples: int
    final_loss: float
    seconds: float
    weights_sha256: str
    summary: dict


def train_student(student_dir: str | Path, dataset: Dataset, out: str | Path, settings: StudentSettings = StudentSettings(),
                  *, device: str = "cpu", progress: bool = True, origin: str | None = None) -> StudentResult:
    """SFTs the model at `student_dir` on the dataset's (prompt, completion) pairs and writes the student,
    the dataset (`DATASET_FILE`) and a summary (`SUMMARY_FILE`) to `out`. `origin` names where the
    student started in the summary (default: `student_dir`)."""
    if not dataset.records:
        raise DistillError(f"distill: kept 0 of {dataset.sampled} samples, nothing to train the student on "
                           f"(a weaker teacher needs more samples per prompt, or another task)")
    started = time.monotonic()
    student_dir, out = Path(student_dir), Path(out)
    base_hash = weights_sha256(student_dir)
    tokenizer = load_tokenizer(student_dir)
    model = load_model(student_dir, device=device, dtype="float32").train()
    data = encode_examples(tokenizer, [(r["prompt"], r["completion"]) for r in dataset.records])
    losses = sft_train(model, data, tokenizer.pad_token_id, epochs=settings.epochs, batch_size=settings.batch_size,
                       lr=settings.lr, weight_decay=settings.weight_decay, seed=settings.seed, progress=progress,
                       desc="distill: student sft")
    model.eval()
    final_loss = sum(losses[-10:]) / len(losses[-10:])
    seconds = time.monotonic() - started
    summary = {
        **dataset.provenance, "examples": len(dataset.records), "sampled": dataset.sampled,
        "distinct_prompts": len({r["prompt"] for r in dataset.records}), "student_base": origin or str(student_dir),
        "student_base_weights_sha256": base_hash, "sft": asdict(settings), "final_loss": final_loss,
        "sampling_s": round(dataset.seconds, 2), "sft_s": round(seconds, 2),
    }
    extra = {DATASET_FILE: dataset_jsonl(dataset.records),
             SUMMARY_FILE: (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()}
    if (student_dir / "thinkmesh_model.json").is_file():
        extra["thinkmesh_model.json"] = (student_dir / "thinkmesh_model.json").read_bytes()
    save_model_atomically(model, tokenizer, out, extra_files=extra)
    return StudentResult(out, len(dataset.records), final_loss, seconds, weights_sha256(out), summary)
