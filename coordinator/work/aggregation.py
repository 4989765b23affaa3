"""Folding accepted gradients into one update, and the optimizer step that makes a version.

Rules (all sample-weighted, weights w_i = samples_i / sum samples):
    mean           g = sum_i w_i g_i
    norm_clip      each g_i is first scaled to norm <= clip_norm, then the weighted mean
    centered_clip  Karimireddy et al. 2021 (arXiv:2012.10333): start at the coordinate-wise
                   median v (robust, where the paper uses the previous step's momentum) and
                   repeat v <- v + sum_i w_i (g_i - v) min(1, tau / ||g_i - v||) a few times; a
                   minority of outliers moves the result by at most ~tau each
Norms are over the whole flattened gradient (all tensors together). Pure and deterministic for
fixed inputs: the order of contributions does not matter beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from thinkmesh.protocol.rules.adapters import trainable_named_parameters
from thinkmesh.protocol.rules.errors import ProtocolError

RULES = ("mean", "norm_clip", "centered_clip")


class AggregationError(ProtocolError):
    """Gradients that cannot be combined: none given, mismatched names or shapes, bad weights."""


@dataclass(frozen=True)
class WeightedGradient:
    gradients: Mapping[str, Tensor]
    weight: float  # samples behind this gradient


def global_norm(gradients: Mapping[str, Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in gradients.values())).item())


def _scaled(gradients: Mapping[str, Tensor], factor: float) -> dict[str, Tensor]:
    return {name: t * factor for name, t in gradients.items()}


def _weighted_sum(items: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    names = sorted(items[0])
    return {name: sum(w * g[name] for g, w in zip(items, weights)) for name in names}


def _check(contributions: Sequence[WeightedGradient]) -> list[float]:
    if not contributions:
        raise AggregationError("expected at least one gradient to aggregate, got none")
    names = sorted(contributions[0].gradients)
    for index, item in enumerate(contributions):
        if sorted(item.gradients) != names:
            raise AggregationError(f"gradient {index}: expected tensors {names[:3]}..., got other names")
        for name in names:
            if item.gradients[name].shape != contributions[0].gradients[name].shape:
                raise AggregationError(f"gradient {index}: tensor {name!r} has another shape")
        if not item.weight > 0:
            raise AggregationError(f"gradient {index}: expected a positive weight, got {item.weight}")
    total = sum(item.weight for item in contributions)
    return [item.weight / total for item in contributions]


def aggregate(
    contributions: Sequence[WeightedGradient], rule: str = "mean", clip_norm: float = 1.0, iterations: int = 3
) -> dict[str, Tensor]:
    """One combined gradient under `rule` (see module docstring)."""
    weights = _check(contributions)
    grads = [item.gradients for item in contributions]
    if rule == "mean":
        return _weighted_sum(grads, weights)
    if rule == "norm_clip":
        clipped = [_scaled(g, min(1.0, clip_norm / max(global_norm(g), 1e-12))) for g in grads]
        return _weighted_sum(clipped, weights)
    if rule == "centered_clip":
        center = {n: torch.stack([g[n] for g in grads]).median(dim=0).values for n in grads[0]}
        for _ in range(iterations):
            deltas = [{n: g[n] - center[n] for n in center} for g in grads]
            factors = [min(1.0, clip_norm / max(global_norm(d), 1e-12)) for d in deltas]
            step = _weighted_sum(deltas, [w * f for w, f in zip(weights, factors)])
            center = {n: center[n] + step[n] for n in center}
        return center
    raise AggregationError(f"rule: expected one of {RULES}, got {rule!r}")


def build_optimizer(params, kind: str, lr: float, *, betas: tuple[float, float] = (0.9, 0.999),
                    weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """The coordinator's optimizer over `params` (`[aggregation] optimizer`)."""
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise AggregationError(f"optimizer: expected adamw or sgd, got {kind!r}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restores a checkpoint's optimizer state, refusing one another optimizer saved (switching
    `[aggregation] optimizer` under a running model would silently drop or misread its moments)."""
    saved = "adamw" if "betas" in state["param_groups"][0] else "sgd" if "momentum" in state["param_groups"][0] else "?"
    wanted = "adamw" if isinstance(optimizer, torch.optim.AdamW) else "sgd"
    if saved != wanted:
        raise AggregationError(f"the checkpoint's optimizer state is {saved}'s but [aggregation] optimizer is "
                               f"{wanted!r}: keep {saved!r} for this run, or start a new run")
    optimizer.load_state_dict(state)


def apply_update(model, optimizer: torch.optim.Optimizer, gradient: Mapping[str, Tensor], max_grad_norm: float = 0.0) -> float:
    """Sets `gradient` as the trainable parameters' .grad (an adapter round: the adapter's) and
    takes one optimizer step; returns the norm."""
    params = dict(trainable_named_parameters(model))
    if sorted(params) != sorted(gradient):
        raise AggregationError("aggregate gradient names do not match the model's parameters")
    for name, param in params.items():
        param.grad = gradient[name].to(device=param.device, dtype=param.dtype).clone()
    norm = global_norm(gradient)
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
