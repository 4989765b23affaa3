"""GRPO-family objectives: group advantages, the clipped surrogate losses, and the k3 KL.

Node and verifier both call these; the verifier recomputes a contribution's gradient from its
samples, so every function here is pure, deterministic for fixed inputs and device, and
depends on nothing but its tensors and the declared `StrategySpec`.

Shapes and units. `rewards` are [num_groups, G] scalar rule rewards. Per-token tensors are
[N, T] with N = num_groups * G (groups contiguous, row-major as `rewards.reshape(-1)`) and T
completion positions; `logprobs` are natural-log probabilities of the sampled tokens;
`completion_mask` is 1 on real completion tokens and 0 on padding. Losses are to be
minimised (the negated objective of each paper). Arithmetic runs in at least float32 whatever
the input dtype, and every log-ratio is clamped to +-LOG_RATIO_CLAMP before `exp`, so a
bf16 policy or a wild `old_logprobs` cannot produce inf/nan; a clamped token carries no
gradient, which only ever happens for ratios beyond e^20.

Papers (one line each; the per-function docstrings say which formula is used):
- GRPO     Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, eq. 3 (outcome supervision).
- Dr. GRPO Liu et al. 2025, Understanding R1-Zero-Like Training, arXiv:2503.20783.
- DAPO     Yu et al. 2025, DAPO, arXiv:2503.14476 (clip-higher, token-level loss, dynamic
           sampling, soft overlong punishment).
- GSPO     Zheng et al. 2025, Group Sequence Policy Optimization, arXiv:2507.18071.
- RLOO     Ahmadian et al. 2024, Back to Basics, arXiv:2402.14740 (leave-one-out baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.strategies import StrategySpec

ADVANTAGE_EPS = 1e-4  # added to the group std before dividing (as TRL's GRPOTrainer)
LOG_RATIO_CLAMP = 20.0  # |log ratio| bound before exp: e^20 ~ 4.9e8 is finite in float32
STD_NORMALISED_VARIANTS = ("grpo", "dapo", "gspo")
PER_SEQUENCE_MEAN_VARIANTS = ("grpo", "rloo")


class LossInputError(ProtocolError):
    """Tensors whose shape, dtype or group layout do not match what the objective needs."""


@dataclass(frozen=True)
class LossStats:
    """Diagnostics of one loss evaluation, as Python floats/ints (one device sync).

    For gspo the clip fractions and `mean_ratio` are over sequences (its ratio is per
    sequence); for the token-level variants they are over real completion tokens. `kl` is the
    mean per-token k3 KL to the reference (0.0 when no reference was given), reported even
    when beta == 0 so operators can watch drift.
    """

    clip_fraction: float
    low_clip_fraction: float  # ratio < 1 - eps_low with a negative advantage
    high_clip_fraction: float  # ratio > 1 + eps_high with a positive advantage
    kl: float
    mean_ratio: float
    num_sequences: int
    num_tokens: int


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _check_group_rewards(rewards: Tensor, spec: StrategySpec) -> None:
    if rewards.dim() != 2 or rewards.shape[1] != spec.group_size:
        raise LossInputError(
            f"rewards: expected shape [num_groups, {spec.group_size}] for group_size="
            f"{spec.group_size}, got {list(rewards.shape)}"
        )
    if spec.group_size < 2:
        raise LossInputError(
            f"spec.group_size: expected >= 2 for a group baseline, got {spec.group_size}"
        )
    if not rewards.is_floating_point():
        raise LossInputError(f"rewards: expected a floating dtype, got {rewards.dtype}")


def group_advantages(rewards: Tensor, spec: StrategySpec) -> Tensor:
    """Per-sample advantages [num_groups, G] from rewards [num_groups, G]; no gradient.

    - grpo, dapo, gspo: (r_i - mean(r)) / (std(r) + ADVANTAGE_EPS). The std is the unbiased
      (Bessel, G - 1) sample std: DeepSeekMath writes only "std", and the unbiased
      `torch.std` is what TRL and verl use, so contributions match those trainers.
    - dr_grpo: r_i - mean(r); Dr. GRPO drops the std because it up-weights groups that are
      almost all right or all wrong (question-level difficulty bias).
    - rloo: r_i - (1/(G-1)) * sum_{j != i} r_j, the paper's leave-one-out baseline, with no
      extra scaling; note it equals G/(G-1) * (r_i - mean(r)).
    A group whose rewards are all equal gets exactly zero advantage in every variant.
    """
    _check_group_rewards(rewards, spec)
    r = rewards.detach().to(_compute_dtype(rewards))
    mean = r.mean(dim=1, keepdim=True)
    if spec.loss in STD_NORMALISED_VARIANTS:
        centred = r - mean
        std = (centred.square().sum(dim=1, keepdim=True) / (r.shape[1] - 1)).sqrt()
        return centred / (std + ADVANTAGE_EPS)
    if spec.loss == "dr_grpo":
        return r - mean
    if spec.loss == "rloo":
        g = r.shape[1]
        return r - (r.sum(dim=1, keepdim=True) - r) / (g - 1)
    raise LossInputError(f"spec.loss: expected a known variant, got {spec.loss!r}")


def dynamic_sampling_mask(rewards: Tensor) -> Tensor:
    """[num_groups] bool: True for groups whose rewards are not all identical.

    DAPO's dynamic sampling keeps only groups with 0 < #correct < G; for scalar rewards that
    is "not all equal". Exact comparison is deliberate: rewards are rule outputs, and node
    and verifier must drop the same groups bit for bit.
    """
    if rewards.dim() != 2:
        raise LossInputError(f"rewards: expected shape [num_groups, G], got {list(rewards.shape)}")
    return (rewards != rewards[:, :1]).any(dim=1)


def overlong_penalty(completion_lengths: Tensor, spec: StrategySpec) -> Tensor:
    """DAPO's soft overlong punishment, same shape as `completion_lengths` (tokens).

    With L_max = spec.max_new_tokens and L_cache = spec.overlong_buffer: 0 while
    |y| <= L_max - L_cache, then ((L_max - L_cache) - |y|) / L_cache falling linearly to -1 at
    |y| = L_max, and -1 beyond. All zeros when overlong_buffer == 0 (disabled).
    """
    lengths = completion_lengths.detach().to(torch.float64)
    if spec.overlong_buffer == 0:
        return torch.zeros_like(lengths)
    budget = float(spec.max_new_tokens - spec.overlong_buffer)
    penalty = (budget - lengths) / float(spec.overlong_buffer)
    return penalty.clamp(min=-1.0, max=0.0)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): exp(ref - lp) - (ref - lp) - 1 >= 0.

    Schulman's unbiased, always non-negative estimator, as in DeepSeekMath eq. 4. The
    difference is clamped to +-LOG_RATIO_CLAMP before exp; the result is in >= float32.
    """
    dtype = _compute_dtype(logprobs)
    diff = (ref_logprobs.to(dtype) - logprobs.to(dtype)).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(diff) - diff - 1.0


def _check_token_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    spec: StrategySpec,
    ref_logprobs: Tensor | None,
) -> None:
    if logprobs.dim() != 2 or not logprobs.is_floating_point():
        raise LossInputError(
            f"logprobs: expected a floating [N, T] tensor, got {logprobs.dtype} "
            f"{list(logprobs.shape)}"
        )
    shape = list(logprobs.shape)
    named = {"old_logprobs": old_logprobs, "completion_mask": completion_mask}
    if ref_logprobs is not None:
        named["ref_logprobs"] = ref_logprobs
    for label, tensor in named.items():
        if list(tensor.shape) != shape:
            raise LossInputError(
                f"{label}: expected shape {shape} like logprobs, got {list(tensor.shape)}"
            )
    if list(advantages.shape) != shape[:1]:
        raise LossInputError(
            f"advantages: expected shape {shape[:1]}, got {list(advantages.shape)}"
        )
    if shape[1] > spec.max_new_tokens:
        raise LossInputError(
            f"logprobs: expected at most max_new_tokens={spec.max_new_tokens} completion "
            f"positions, got {shape[1]}"
        )


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    completion_mask: Tensor,
    spec: StrategySpec,
    ref_logprobs: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """The declared variant's loss (scalar, differentiable in `logprobs`) and its stats.

    With ratio r_t = exp(lp_t - old_t) and A the sequence's advantage, the token term is
    l_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t, aggregated as:
    - grpo, rloo: mean over each sequence's tokens, then mean over the N sequences
      (DeepSeekMath's 1/G sum_i 1/|o_i| sum_t). RLOO's paper scores the whole sequence
      (sum of token log-probs); the per-sequence mean keeps its gradient on the same scale
      as the other variants', so the coordinator can aggregate mixed strategies.
    - dr_grpo: sum over all tokens / (N * max_new_tokens), the constant Dr. GRPO's code uses in
      place of 1/|o_i| so no sequence length biases the update.
    - dapo: sum over all tokens / total tokens in the batch (token-level policy gradient loss).
    - gspo: one ratio per sequence, s_i = exp(mean_t(lp_t - old_t)) (the length-normalised
      sequence likelihood ratio), term -min(s_i A, clip(s_i, ...) A) + beta * mean_t k3_t,
      mean over sequences.
    When old_logprobs == logprobs.detach() every variant's gradient is the plain policy
    gradient -sum_{i,t} w_{i,t} A_i grad lp_{i,t} with the variant's weights w (plus the KL).
    Padding positions (mask 0) never contribute, even if they hold inf/nan.
    """
    _check_token_inputs(logprobs, old_logprobs, advantages, completion_mask, spec, ref_logprobs)
    dtype = _compute_dtype(logprobs)
    mask = completion_mask.to(torch.bool)
    zero = torch.zeros((), dtype=dtype, device=logprobs.device)
    # Padding becomes 0 *before* any arithmetic: a where() after exp would still send
    # 0 * nan = nan back through the unselected branch.
    lp = torch.where(mask, logprobs.to(dtype), zero)
    log_ratio = lp - torch.where(mask, old_logprobs.detach().to(dtype), zero)
    kl_tokens = None
    if ref_logprobs is not None:
        kl_tokens = k3_kl(lp, torch.where(mask, ref_logprobs.detach().to(dtype), zero))
    kl_penalty = kl_tokens if kl_tokens is not None and spec.beta > 0 else None
    adv = advantages.detach().to(dtype)
    if spec.loss == "gspo":
        loss, ratio, adv, counted = _sequence_level_loss(log_ratio, adv, mask, spec, kl_penalty)
    else:
        loss, ratio, adv, counted = _token_level_loss(log_ratio, adv, mask, spec, kl_penalty)
    kl_sum = zero if kl_tokens is None else kl_tokens.detach().sum()
    return loss, _loss_stats(ratio, adv, counted, mask, spec, kl_sum)


def _clipped_surrogate(ratio: Tensor, adv: Tensor, spec: StrategySpec) -> Tensor:
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), elementwise; ratio already finite."""
    clipped = ratio.clamp(1.0 - spec.eps_low, 1.0 + spec.eps_high)
    return -torch.minimum(ratio * adv, clipped * adv)


def _token_level_loss(
    log_ratio: Tensor, adv: Tensor, mask: Tensor, spec: StrategySpec, kl_penalty: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss, per-token ratio, per-token advantage, and which entries the stats count."""
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    adv_tokens = adv.unsqueeze(1).expand_as(ratio)
    token_loss = _clipped_surrogate(ratio, adv_tokens, spec)
    if kl_penalty is not None:
        token_loss = token_loss + spec.beta * kl_penalty
    token_loss = torch.where(mask, token_loss, torch.zeros_like(token_loss))
    num_sequences = token_loss.shape[0]
    if num_sequences == 0:
        loss = token_loss.sum()  # a differentiable zero
    elif spec.loss in PER_SEQUENCE_MEAN_VARIANTS:
        loss = (token_loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    elif spec.loss == "dr_grpo":
        loss = token_loss.sum() / (num_sequences * spec.max_new_tokens)
    elif spec.loss == "dapo":
        loss = token_loss.sum() / mask.sum().clamp(min=1)
    else:
        raise LossInputError(f"spec.loss: expected a known variant, got {spec.loss!r}")
    return loss, ratio, adv_tokens, mask


def _sequence_level_loss(
    log_ratio: Tensor, adv: Tensor, mask: Tensor, spec: StrategySpec, kl_penalty: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GSPO: loss, per-sequence ratio, per-sequence advantage, and the non-empty sequences."""
    lengths = mask.sum(dim=1)
    safe_lengths = lengths.clamp(min=1)
    mean_log_ratio = log_ratio.sum(dim=1) / safe_lengths
    seq_ratio = torch.exp(mean_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    seq_loss = _clipped_surrogate(seq_ratio, adv, spec)
    if kl_penalty is not None:
        seq_loss = seq_loss + spec.beta * kl_penalty.sum(dim=1) / safe_lengths
    non_empty = lengths > 0  # an empty completion has no likelihood ratio
    seq_loss = torch.where(non_empty, seq_loss, torch.zeros_like(seq_loss))
    loss = seq_loss.sum() / max(seq_loss.shape[0], 1)
    return loss, seq_ratio, adv, non_empty


@torch.no_grad()
def _loss_stats(
    ratio: Tensor, adv: Tensor, counted: Tensor, mask: Tensor, spec: StrategySpec, kl_sum: Tensor
) -> LossStats:
    """Gathers every figure into one tensor so a CUDA caller pays a single device sync."""
    low = counted & (ratio < 1.0 - spec.eps_low) & (adv < 0)
    high = counted & (ratio > 1.0 + spec.eps_high) & (adv > 0)
    figures = torch.stack([
        mask.sum().to(torch.float64),
        counted.sum().to(torch.float64),
        low.sum().to(torch.float64),
        high.sum().to(torch.float64),
        torch.where(counted, ratio, torch.zeros_like(ratio)).sum().to(torch.float64),
        kl_sum.to(torch.float64),
    ])
    num_tokens, count, low_count, high_count, ratio_sum, kl_total = figures.tolist()
    count = max(count, 1.0)
    return LossStats(
        clip_fraction=(low_count + high_count) / count,
        low_clip_fraction=low_count / count,
        high_clip_fraction=high_count / count,
        kl=kl_total / max(num_tokens, 1.0),
        mean_ratio=ratio_sum / count,
        num_sequences=int(mask.shape[0]),
        num_tokens=int(num_tokens),
    )


def strategy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    rewards: Tensor,
    completion_mask: Tensor,
    spec: StrategySpec,
    ref_logprobs: Tensor | None = None,
) -> tuple[Tensor, LossStats]:
    """The whole declared objective from raw rule rewards [num_groups, G]: the one call that
    node and verifier share so they cannot disagree on the order of the steps.

    1. dynamic sampling (if declared) drops groups whose raw rewards are all equal; it looks at
       the task rewards before length shaping, as DAPO filters on accuracy;
    2. DAPO's overlong penalty (if overlong_buffer > 0) is added per sample, the length being
       the number of real tokens in `completion_mask`;
    3. group advantages of the kept groups, then `policy_loss` on their samples.
    If every group is dropped the loss is a differentiable zero and `num_sequences` is 0.
    """
    _check_group_rewards(rewards, spec)
    num_groups, group_size = rewards.shape
    if logprobs.dim() != 2 or logprobs.shape[0] != num_groups * group_size:
        raise LossInputError(
            f"logprobs: expected [{num_groups * group_size}, T] for {num_groups} groups of "
            f"{group_size}, got {list(logprobs.shape)}"
        )
    if list(completion_mask.shape) != list(logprobs.shape):
        raise LossInputError(
            f"completion_mask: expected shape {list(logprobs.shape)}, "
            f"got {list(completion_mask.shape)}"
        )
    if spec.dynamic_sampling:
        keep = dynamic_sampling_mask(rewards)
    else:
        keep = torch.ones(num_groups, dtype=torch.bool, device=rewards.device)
    lengths = completion_mask.to(torch.bool).sum(dim=1).reshape(num_groups, group_size)
    shaped = rewards.to(_compute_dtype(rewards))
    shaped = shaped + overlong_penalty(lengths, spec).to(device=shaped.device, dtype=shaped.dtype)
    advantages = group_advantages(shaped[keep], spec).reshape(-1)
    rows = keep.repeat_interleave(group_size)
    return policy_loss(
        logprobs[rows],
        old_logprobs[rows],
        advantages,
        completion_mask[rows],
        spec,
        None if ref_logprobs is None else ref_logprobs[rows],
    )
