"""Held-out evaluation of every model version: greedy answers to a fixed set of tasks.

The tasks come from `generate_task` under a seed derived from the config's eval seed, a seed no
round ever announces, so no node trains on them. Greedy decoding makes the score a pure function
of (weights, tasks): two evaluations of one version agree exactly on one device.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import torch

from thinkmesh.protocol.rewards import score_completion, total_reward
from thinkmesh.protocol.tasks import TaskSpec, generate_task, render_prompt

EVAL_SEED_DOMAIN = b"thinkmesh/heldout/v1"


@dataclass(frozen=True)
class EvalResult:
    version: int
    model_hash: str
    prompts: int
    accuracy: float
    format: float
    mean_reward: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def heldout_seed(seed_text: str) -> bytes:
    return hashlib.sha256(EVAL_SEED_DOMAIN + seed_text.encode()).digest()


@torch.no_grad()
def evaluate(model, tokenizer, spec: TaskSpec, *, prompts: int, max_new_tokens: int, seed_text: str,
             version: int, model_hash: bytes, template: str = "r1", batch_size: int = 16) -> EvalResult:
    started = time.perf_counter()
    tasks = [generate_task(spec, heldout_seed(seed_text), i) for i in range(prompts)]
    accuracy = fmt = reward = 0.0
    device = next(model.parameters()).device
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start:start + batch_size]
        encoded = tokenizer([render_prompt(t, template) for t in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False)
        out = model.generate(
            input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device),
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for task, row in zip(batch, out[:, encoded["input_ids"].shape[1]:].tolist()):
            ids = [t for t in row if t != tokenizer.pad_token_id]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            breakdown = score_completion(task, text, len(ids), max_new_tokens)
            accuracy += breakdown.accuracy
            fmt += breakdown.format
            reward += total_reward(breakdown)
    n = max(len(tasks), 1)
    return EvalResult(version=version, model_hash=model_hash.hex(), prompts=len(tasks), accuracy=accuracy / n,
                      format=fmt / n, mean_reward=reward / n, seconds=time.perf_counter() - started)
