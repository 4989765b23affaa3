"""Fitting a round's work to the machine: batch sizes from the model and free memory, and halving
on out-of-memory instead of dying.

Two sizes, in sequences: the rollout batch (how many completions are sampled at once; each holds a
KV cache) and the micro-batch (how many sequences one forward/backward of the loss holds
activations for). Neither changes the result: sampling draws per-row random streams
(`protocol.rules.sampling`), and the loss is accumulated over micro-batches with each one weighted by its
share of the full batch's normaliser (`train_step.policy_gradient`), so a node that settled on
smaller sizes sends the gradient the verifier recomputes in one batch, up to float summation order.

The estimate is deliberately rough (it picks a starting point); the out-of-memory guard is what
makes it safe. A size that had to shrink stays shrunk for later rounds (`MemoryFit` lives as long
as the daemon), so a node pays for an OOM once, not every round.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")
MIB = 1 << 20
MAX_PLANNED_BATCH = 4096  # a plan never asks for more sequences at once than this
CPU_ALLOCATION_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory", "std::bad_alloc")


@dataclass(frozen=True)
class SequenceCost:
    """Bytes one sequence of a round needs beyond the resident weights."""

    generation: int  # KV cache for prompt + completion and one step's logits
    training: int  # activations kept for backward and the completion positions' logits


def model_shape(config) -> tuple[int, int, int, int, int, int]:
    """(layers, hidden, intermediate, kv_heads, head_dim, vocab) from a transformers config."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    return config.num_hidden_layers, hidden, intermediate, kv_heads, head_dim, config.vocab_size


def sequence_cost(config, prompt_tokens: int, new_tokens: int, dtype_bytes: int) -> SequenceCost:
    """KV cache = 2 * layers * kv_heads * head_dim * dtype_bytes per token; backward keeps roughly
    12 * hidden + 4 * intermediate values per token and layer (attention in/out, norms, the MLP's
    three projections), and the loss holds float32 logits, their log-softmax and its gradient
    over the completion positions."""
    layers, hidden, intermediate, kv_heads, head_dim, vocab = model_shape(config)
    tokens = prompt_tokens + new_tokens
    kv_cache = 2 * layers * kv_heads * head_dim * dtype_bytes * tokens
    generation = kv_cache + 3 * vocab * 4
    activations = tokens * layers * (12 * hidden + 4 * intermediate) * dtype_bytes
    training = activations + 3 * (new_tokens + 1) * vocab * 4
    return SequenceCost(generation=generation, training=training)


def free_memory_bytes(device: torch.device | str, cpu_cap_bytes: int = 0) -> int:
    """What can still be allocated: CUDA's free memory, or the OS's MemAvailable on CPU capped at
    `cpu_cap_bytes` (0: no cap) so a node can leave room for the rest of the machine."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = _cpu_available_bytes()
    return min(available, cpu_cap_bytes) if cpu_cap_bytes > 0 else available


def _cpu_available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the available memory: no psutil and no MemAvailable in /proc/meminfo")


@dataclass(frozen=True)
class BatchPlan:
    rollout_batch: int
    micro_batch: int
    free_bytes: int
    budget_bytes: int


def plan_batch_sizes(
    model, prompt_tokens: int, new_tokens: int, free_bytes: int,
    fraction: float = 0.8, extra_models: int = 0,
) -> BatchPlan:
    """Largest sizes (at least 1, at most MAX_PLANNED_BATCH) whose estimated cost fits in
    `fraction` of `free_bytes` less the float32 gradient buffers (the weights are resident already,
    so free memory excludes them). `extra_models` counts frozen copies (a KL reference) whose
    forward also runs per micro-batch."""
    parameters = list(model.parameters())
    dtype_bytes = parameters[0].element_size() if parameters else 4
    gradient_bytes = sum(p.numel() for p in parameters if p.requires_grad) * 4
    cost = sequence_cost(model.config, prompt_tokens, new_tokens, dtype_bytes)
    return plan_from_cost(cost, gradient_bytes, free_bytes, fraction, extra_models)


def plan_from_cost(cost: SequenceCost, gradient_bytes: int, free_bytes: int, fraction: float = 0.8,
                   extra_models: int = 0) -> BatchPlan:
    """The sizes `plan_batch_sizes` picks, from a sequence's cost and the gradient buffers alone."""
    budget = max(int(free_bytes * fraction) - gradient_bytes, 0)
    per_training = cost.training + extra_models * cost.generation
    rollout = max(1, min(MAX_PLANNED_BATCH, budget // max(cost.generation, 1)))
    micro = max(1, min(MAX_PLANNED_BATCH, budget // max(per_training, 1)))
    return BatchPlan(int(rollout), int(micro), int(free_bytes), int(budget))


def parameter_count(config) -> int:
    """The parameters of `config`'s causal LM, counted on the meta device (no weights, no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class FitEstimate:
    """Whether a round's work fits a device before any weight is loaded (`thinkmesh node doctor`).

    `need_bytes` is the least a node can run with: the weights in their dtype, float32 gradient
    buffers for the trainable parameters, a frozen reference copy when the strategy has a KL term,
    and one sequence's generation or training cost (micro-batch 1: the OOM guard goes that low).
    `plan` is the batch the node would start from with the memory left over."""

    parameters: int
    trainable: int
    weight_bytes: int
    gradient_bytes: int
    sequence: SequenceCost
    need_bytes: int
    free_bytes: int
    plan: BatchPlan

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes


def estimate_fit(config, parameters: int, dtype_bytes: int, trainable: int, prompt_tokens: int, new_tokens: int,
                 free_bytes: int, fraction: float = 0.8, extra_models: int = 0) -> FitEstimate:
    """A pure estimate over a transformers config (see `FitEstimate`); `trainable` is every
    parameter in a full-model round, the LoRA's in an adapter round (`adapters.lora_parameter_count`)."""
    weight_bytes = parameters * dtype_bytes * (1 + extra_models)
    gradient_bytes = trainable * 4
    cost = sequence_cost(config, prompt_tokens, new_tokens, dtype_bytes)
    one_sequence = max(cost.generation, cost.training + extra_models * cost.generation)
    plan = plan_from_cost(cost, gradient_bytes, max(free_bytes - weight_bytes, 0), fraction, extra_models)
    return FitEstimate(parameters=parameters, trainable=trainable, weight_bytes=weight_bytes,
                       gradient_bytes=gradient_bytes, sequence=cost,
                       need_bytes=weight_bytes + gradient_bytes + one_sequence, free_bytes=int(free_bytes), plan=plan)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or torch's CPU allocator failure."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in CPU_ALLOCATION_FAILURES)


def release_memory(device: torch.device | str) -> None:
    """Drops the failed attempt's tensors (they die with its frames) and the CUDA cache."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class MemoryFit:
    """The node's current rollout and micro-batch sizes; an OOM halves the one that failed.

    Not thread-safe: one round's work uses it at a time (the daemon's worker thread). Sizes of 0
    mean "the whole batch" until a plan or an OOM sets them.
    """

    def __init__(self, rollout_batch: int = 0, micro_batch: int = 0, free_fraction: float = 0.8,
                 cpu_cap_bytes: int = 0, auto_plan: bool = True):
        if rollout_batch < 0 or micro_batch < 0:
            raise ValueError(f"expected batch sizes >= 0, got rollout {rollout_batch}, micro {micro_batch}")
        if not 0 < free_fraction <= 1:
            raise ValueError(f"expected free_fraction in (0, 1], got {free_fraction}")
        self.rollout_batch = rollout_batch
        self.micro_batch = micro_batch
        self.free_fraction = free_fraction
        self.cpu_cap_bytes = cpu_cap_bytes
        self.auto_plan = auto_plan
        self.oom_events = 0
        self.round_sizes: dict[str, int] = {}  # the largest size that worked per kind, this round
        self.planned: BatchPlan | None = None

    def size(self, kind: str, total: int) -> int:
        """The size to try now for `kind` over `total` sequences."""
        current = self.rollout_batch if kind == "rollout" else self.micro_batch
        return total if current <= 0 else min(current, total)

    def shrink(self, kind: str, failed_size: int, exc: BaseException) -> int:
        """Halves `kind` below the size that failed; re-raises when that size was already 1."""
        if failed_size <= 1:
            raise exc
        new = failed_size // 2
        if kind == "rollout":
            self.rollout_batch = new
        else:
            self.micro_batch = new
        self.oom_events += 1
        logger.warning("out of memory at %s batch %d (%s); retrying with %d", kind, failed_size,
                       type(exc).__name__, new)
        return new

    def run(self, kind: str, total: int, attempt: Callable[[int], T], device, on_retry: Callable[[], None] = lambda: None) -> T:
        """`attempt(size)` with the current size for `kind`; on OOM frees memory, calls
        `on_retry` (undo partial effects), halves, and tries again, down to size 1."""
        while True:
            size = self.size(kind, total)
            try:
                result = attempt(size)
                self.round_sizes[kind] = max(self.round_sizes.get(kind, 0), size)
                return result
            except Exception as exc:  # noqa: BLE001 - only OOMs are handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                self.shrink(kind, size, exc)
            release_memory(device)
            on_retry()

    def begin_round(self) -> None:
        """Starts `status()["last_round"]` afresh: the sizes this round actually ran at."""
        self.round_sizes = {}

    def plan_once(self, model, prompt_tokens: int, new_tokens: int, extra_models: int = 0) -> None:
        """On the first round, sizes left on automatic (0) come from `plan_batch_sizes` over the
        device's free memory now; later rounds keep them (and whatever an OOM made of them)."""
        if self.planned is not None or not self.auto_plan or (self.rollout_batch > 0 and self.micro_batch > 0):
            return
        device = next(model.parameters()).device
        free = free_memory_bytes(device, self.cpu_cap_bytes)
        plan = plan_batch_sizes(model, prompt_tokens, new_tokens, free, self.free_fraction, extra_models)
        self.adopt_plan(plan)
        logger.info("batch sizes: rollout %d, micro %d (free %d MiB, budget %d MiB)", self.rollout_batch,
                    self.micro_batch, plan.free_bytes // MIB, plan.budget_bytes // MIB)

    def adopt_plan(self, plan: BatchPlan) -> None:
        """Takes a plan's sizes for the sizes still on automatic (0); never grows a size an OOM shrank."""
        self.planned = plan
        if self.rollout_batch <= 0:
            self.rollout_batch = plan.rollout_batch
        if self.micro_batch <= 0:
            self.micro_batch = plan.micro_batch

    def status(self) -> dict:
        plan = self.planned
        return {"rollout_batch": self.rollout_batch, "micro_batch": self.micro_batch, "oom_events": self.oom_events,
                "last_round": dict(self.round_sizes),
                "planned": None if plan is None else {"rollout_batch": plan.rollout_batch, "micro_batch": plan.micro_batch,
                                                      "free_mib": plan.free_bytes // MIB,
                                                      "budget_mib": plan.budget_bytes // MIB}}
