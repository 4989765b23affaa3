"""Held-out evaluation: greedy accuracy on a fixed set of tasks no training step ever draws.

The held-out seed is domain-separated from every training seed, so "held-out" is a property of
the seeds, not of bookkeeping. Greedy decoding makes the figure a deterministic function of the
weights (on one device and dtype), which is what a learning curve should plot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from thinkmesh.node.rollout import SamplingSettings, generate, stop_rule_for
from thinkmesh.protocol.rewards import format_reward, accuracy_reward
from thinkmesh.protocol.scoring import completion_text
from thinkmesh.node.train_step import encode_prompts
from thinkmesh.protocol.tasks import TaskSpec, generate_task

HELDOUT_SEED = hashlib.sha256(b"thinkmesh/heldout/v1").digest()


@dataclass(frozen=True)
class EvalResult:
    """Greedy accuracy and format rate (fractions in [0, 1]) over `num_tasks` held-out tasks."""

    accuracy: float
    format_rate: float
    num_tasks: int
    mean_tokens: float


def heldout_tasks(spec: TaskSpec, num_tasks: int):
    return [generate_task(spec, HELDOUT_SEED, index) for index in range(num_tasks)]


@torch.no_grad()
def evaluate(model, tokenizer, spec: TaskSpec, template: str, num_tasks: int = 128,
             max_new_tokens: int = 64, batch_size: int = 256) -> EvalResult:
    tasks = heldout_tasks(spec, num_tasks)
    stop = stop_rule_for(tokenizer)
    correct = formatted = tokens = 0.0
    for start in range(0, num_tasks, batch_size):
        chunk = tasks[start: start + batch_size]
        completions = generate(model, encode_prompts(tokenizer, chunk, template), SamplingSettings(0.0, 1.0, max_new_tokens),
                               stop, tokenizer.pad_token_id, None, tokenizer)
        for task, completion in zip(chunk, completions):
            text = completion_text(tokenizer, completion.token_ids)
            correct += accuracy_reward(task, text)
            formatted += format_reward(text)
            tokens += len(completion.token_ids)
    return EvalResult(correct / num_tasks, formatted / num_tasks, num_tasks, tokens / num_tasks)
