"""The model-side audit of one contribution: which samples are re-scored, and the gradient check.

Everything here is a pure function of (round seed, contribution hash, beacon, policy, model):
anyone holding the round's model can replay which samples were checked and get the same numbers.

**Audit plan.** A `DrawStream` keyed by sha256(AUDIT_DOMAIN, round seed, contribution hash,
beacon) picks, per contribution, a gradient audit level and a logprob subset:

- `full` (probability `full_gradient_rate`): one forward over *all* samples with autograd on,
  `strategy_loss` exactly as the node computes it, and the gradient of every parameter;
- `probe` (probability `probe_rate` of the rest): the same forward, but the gradient of only
  `probe_tensors` parameters drawn after the deadline by the same draws (`probe_names`), with
  weights that favour the tensors nearest the output, which are the cheapest to reach, while every
  tensor keeps a floor (`probe_weights`): the probe draws one trainable *scalar* and recomputes its
  tensor, uniformly over all N with probability `probe_floor`, else uniformly over the last
  `probe_window` share of them in model order. Only the probed tensors require grad
  (`gradient_only_for`), so autograd records nothing before the earliest of them: a probe costs the
  forward plus the backward from the output down to that tensor. A node learns what was probed
  only after it sent its gradient, so a fake of the whole gradient (random, scaled, computed over a
  subset of the samples) is caught by any probe, and a fake confined to a set T of tensors is caught
  with probability W(T) >= `probe_floor` * (T's share of the parameters), about the floor times
  the share of the backward that faking T saves: enough to make every such fake lose money at the
  default stake and pay (`audit_economics.minimum_probe_floor`; docs/verification.md, "The probe");
- `none`: a no-grad prefill of `logprob_samples` samples drawn without replacement.
Any gradient audit re-scores the logprobs of every sample for free (its forward computes them).
Every forward here runs each distinct prompt once (`protocol/rules/prefix_scoring.py`): a group's G
samples share their prompt's KV cache, with the node's value and gradient.

**Beacon.** Signatures here are deterministic, so a node knows its contribution hash before it
sends it, and the round seed is public from the announcement. With an empty beacon a cheater can
grind (re-sign a slightly changed contribution until the plan misses its fakes). The coordinator
must therefore pass a value fixed only after the deadline (a block hash after the deadline, or a
secret committed on chain at round opening) and publish it with the evidence.

**Gradient tolerances.** The verifier quantises its own float32 recomputation with the node's
codec (`dequantized`: what `encode_gradient` then decoding gives, deterministic) and compares
the decoded tensors, so the codec's own error cancels and what is left is (a) float32
kernel-order noise between two machines (measured ~1e-6 relative; identical bits on one
machine), (b) the codes that this noise pushes across a bin edge: with relative noise d, a
fraction ~d of codes move by one bin, which changes the norm by
far less than 1e-3. The bounds below leave >= 10x margin over the largest honest gap measured in
`bench/verify.py`, and still reject a gradient scaled by 1.01 (8-bit) or 1.001 (fp32/fp16), or
one turned by more than 2.6 degrees (cos 0.999) / 0.8 degrees (cos 0.9999). A gradient that
passes moves the model at most that much differently from the honest one. All tolerances assume a
float32 round model on both sides (a bf16 model needs `SCORING_TOLERANCE_BF16`-scale bounds).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from thinkmesh.protocol.rules.adapters import trainable_named_parameters
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.gradient_codec import dequantized
from thinkmesh.protocol.rules.grpo import strategy_loss
from thinkmesh.protocol.rules.messages import COMPRESSIONS, Finding, Sample
from thinkmesh.protocol.rules.prefix_scoring import shared_prefix_logprobs
from thinkmesh.protocol.rules.rewards import RewardBreakdown, RewardConfig, total_reward
from thinkmesh.protocol.rules.sampling import SAMPLING_TOLERANCE_FP32, DrawCheck
from thinkmesh.protocol.rules.scoring import SCORING_TOLERANCE_FP32
from thinkmesh.protocol.rules.strategies import StrategySpec
from thinkmesh.protocol.rules.tasks import DrawStream

AUDIT_DOMAIN = b"thinkmesh/audit/v1"
PROBE_DOMAIN = b"thinkmesh/audit-probe/v1"
RATE_SCALE = 1_000_000  # rates are compared as integer parts per million: exact on every platform
GRADIENT_NONE, GRADIENT_PROBE, GRADIENT_FULL = "none", "probe", "full"
GRADIENT_AUDITS = (GRADIENT_NONE, GRADIENT_PROBE, GRADIENT_FULL)
CONTRIBUTION_LEVEL = -1  # Finding.sample_index of a finding about the whole contribution
# Below this L2 norm (over the compared tensors) a gradient is numerically zero. A contribution with
# no advantage signal has an exactly zero policy term, and with beta > 0 in the first rounds a KL
# term of ~1e-9 that is float32 rounding of two forward orders (the node's full forward, the
# verifier's shared-prefix one): cosine and norm ratio of two such vectors are noise. Any gradient
# that moves a model is orders of magnitude above it, and sending zero for it gains nothing.
GRADIENT_NOISE_FLOOR = 1e-6


class AuditError(ProtocolError):
    """An audit that cannot run: a bad policy, or a model that does not fit the contribution."""


@dataclass(frozen=True)
class GradientTolerance:
    """Bounds for one compression mode: cosine(claimed, reference) >= min_cosine and
    |norm(claimed) / norm(reference) - 1| <= max_norm_error (see the module docstring)."""

    compression: str
    min_cosine: float
    max_norm_error: float


GRADIENT_TOLERANCES: tuple[GradientTolerance, ...] = (
    GradientTolerance("none", 0.9999, 1e-3),
    GradientTolerance("fp16", 0.9999, 1e-3),
    GradientTolerance("uniform8", 0.999, 1e-2),
    GradientTolerance("blockwise8", 0.999, 1e-2),
)


@dataclass(frozen=True)
class AuditPolicy:
    """How hard the coordinator looks; travels inside evidence so a re-run uses the same numbers.

    Rates are probabilities per contribution; `logprob_samples` counts samples; tolerances are
    in nats per token (logprobs) and in the units of `GradientTolerance`. `probe_floor` and
    `probe_window` shape the probe's draw (`probe_weights`): the floor must exceed
    `audit_economics.minimum_probe_floor` for the stake and pay in force (0.060 at the coordinator's
    defaults), and with the probe on every contribution the full audit is a backstop.
    """

    logprob_samples: int = 8
    probe_rate: float = 1.0
    full_gradient_rate: float = 0.01
    probe_tensors: int = 1
    probe_floor: float = 0.1
    probe_window: float = 0.1
    logprob_tolerance: float = SCORING_TOLERANCE_FP32
    sampling_tolerance: float = SAMPLING_TOLERANCE_FP32
    gradient_tolerances: tuple[GradientTolerance, ...] = GRADIENT_TOLERANCES

    def __post_init__(self) -> None:
        for name in ("probe_rate", "full_gradient_rate", "logprob_tolerance", "sampling_tolerance"):
            value = getattr(self, name)
            if type(value) is not float or not math.isfinite(value) or value < 0:
                raise AuditError(f"audit policy {name}: expected a finite float >= 0, got {value!r}")
        if self.probe_rate > 1 or self.full_gradient_rate > 1:
            raise AuditError(
                f"audit policy rates: expected <= 1, got probe {self.probe_rate}, full {self.full_gradient_rate}"
            )
        for name in ("probe_floor", "probe_window"):  # > 0: every tensor can be drawn; a window of nothing is no window
            value = getattr(self, name)
            if type(value) is not float or not 0 < value <= 1:
                raise AuditError(f"audit policy {name}: expected a float in (0, 1], got {value!r}")
        for name in ("logprob_samples", "probe_tensors"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise AuditError(f"audit policy {name}: expected an int >= 1, got {value!r}")
        modes = [t.compression for t in self.gradient_tolerances]
        if sorted(modes) != sorted(COMPRESSIONS):
            raise AuditError(f"audit policy: expected one gradient tolerance per mode {COMPRESSIONS}, got {modes}")

    def tolerance_for(self, compression: str) -> GradientTolerance:
        for tolerance in self.gradient_tolerances:
            if tolerance.compression == compression:
                return tolerance
        raise AuditError(f"no gradient tolerance for compression {compression!r}")


@dataclass(frozen=True)
class AuditPlan:
    """What this contribution gets: a gradient audit level and the samples whose logprobs are
    re-scored (sorted; every sample when a gradient audit runs)."""

    gradient: str
    rescored: tuple[int, ...]
    probe_key: bytes = b""  # keys `probe_names`: which tensors a probe recomputes


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def audit_seed(round_seed: bytes, contribution_hash: bytes, beacon: bytes) -> bytes:
    """The 32-byte key of a contribution's audit draws (see the module docstring on `beacon`)."""
    return hashlib.sha256(
        AUDIT_DOMAIN + _length_prefixed(round_seed) + _length_prefixed(contribution_hash) + _length_prefixed(beacon)
    ).digest()


def audit_plan(
    round_seed: bytes, contribution_hash: bytes, beacon: bytes, num_samples: int, policy: AuditPolicy
) -> AuditPlan:
    """The plan for one contribution: two rate draws, then a partial Fisher-Yates shuffle."""
    if num_samples < 1:
        raise AuditError(f"audit plan: expected at least one sample, got {num_samples}")
    draws = DrawStream(audit_seed(round_seed, contribution_hash, beacon))
    full = draws.below(RATE_SCALE) < round(policy.full_gradient_rate * RATE_SCALE)
    probe = draws.below(RATE_SCALE) < round(policy.probe_rate * RATE_SCALE)
    if full or probe:
        probe_key = hashlib.sha256(PROBE_DOMAIN + audit_seed(round_seed, contribution_hash, beacon)).digest()
        return AuditPlan(GRADIENT_FULL if full else GRADIENT_PROBE, tuple(range(num_samples)), probe_key)
    order = list(range(num_samples))
    for i in range(min(policy.logprob_samples, num_samples)):
        j = i + draws.below(num_samples - i)
        order[i], order[j] = order[j], order[i]
    return AuditPlan(GRADIENT_NONE, tuple(sorted(order[: min(policy.logprob_samples, num_samples)])))


def probe_weights(sizes: Sequence[int], floor: float, window: float) -> tuple[int, ...]:
    """Integer draw weights of tensors of `sizes` elements (model order), exact on every platform.

    With N elements in all and the window the last M = ceil(window * N) of them, tensor i holding
    n_i elements, m_i of them inside the window, is drawn with probability

        w_i = floor * n_i / N + (1 - floor) * m_i / M

    (floor and window as parts per million, like the rates): a draw picks one scalar, uniformly
    over the whole model with probability `floor`, else uniformly over the window, and probes its
    tensor. Every tensor with an element gets w_i >= floor * n_i / N > 0; the window holds the
    tensors nearest the output, whose gradient needs the least of the backward."""
    if any(type(n) is not int or n < 1 for n in sizes) or not sizes:
        raise AuditError(f"probe weights: expected tensor sizes >= 1, got {list(sizes)[:4]}...")
    floor_ppm = round(floor * RATE_SCALE)
    if not 0 < floor_ppm <= RATE_SCALE:
        raise AuditError(f"probe weights: expected a floor in (0, 1], got {floor}")
    total, inside = sum(sizes), probe_window_overlap(sizes, window)
    kept = sum(inside)
    return tuple(floor_ppm * n * kept + (RATE_SCALE - floor_ppm) * m * total for n, m in zip(sizes, inside))


def probe_window_overlap(sizes: Sequence[int], window: float) -> tuple[int, ...]:
    """m_i of `probe_weights`: how many of each tensor's elements lie in the last
    M = ceil(window * N) of the model's N (at least one), in model order."""
    window_ppm = round(window * RATE_SCALE)
    if not 0 < window_ppm <= RATE_SCALE:
        raise AuditError(f"probe window: expected a share in (0, 1], got {window}")
    total = sum(sizes)
    kept = max(1, -(-total * window_ppm // RATE_SCALE))
    start, inside = 0, []
    for n in sizes:
        inside.append(max(0, start + n - max(start, total - kept)))  # overlap of [start, start + n) with [N - M, N)
        start += n
    return tuple(inside)


def _below(draws: DrawStream, n: int) -> int:
    """A uniform integer in 0..n-1 for any n >= 1 (weights outgrow 64 bits on a large model):
    `DrawStream.below` itself up to 2**62, else base-2**62 digits by rejection."""
    if n <= 1 << 62:
        return draws.below(n)
    digits = -(-n.bit_length() // 62)
    span = 1 << (62 * digits)
    limit = span - span % n
    while True:
        value = 0
        for _ in range(digits):
            value = (value << 62) | draws.below(1 << 62)
        if value < limit:
            return value % n


def probe_names(
    names: Sequence[str], sizes: Sequence[int], probe_tensors: int, probe_key: bytes,
    floor: float = AuditPolicy.probe_floor, window: float = AuditPolicy.probe_window,
) -> tuple[str, ...]:
    """`probe_tensors` distinct names drawn by `probe_weights` without replacement (each draw over
    the tensors not yet drawn, in proportion to their weights), keyed by `probe_key`, in model order."""
    if len(names) != len(sizes):
        raise AuditError(f"probe names: {len(names)} names for {len(sizes)} sizes")
    draws, weights = DrawStream(probe_key), list(probe_weights(sizes, floor, window))
    chosen: set[int] = set()
    for _ in range(min(probe_tensors, len(names))):
        point = _below(draws, sum(weights))
        for i, weight in enumerate(weights):
            if point < weight:
                break
            point -= weight
        chosen.add(i)
        weights[i] = 0
    return tuple(names[i] for i in sorted(chosen))


def audited_parameter_names(model, level: str, policy: AuditPolicy | None = None, probe_key: bytes = b"") -> tuple[str, ...]:
    """Every trainable parameter for `full`; for `probe`, `probe_names` of them under `policy`'s
    count and weights. A tied head is registered once, under the embedding's name. Trainable: all of
    a plain model's parameters, an adapter's alone under peft (protocol/rules/adapters.py)."""
    trainable = trainable_named_parameters(model)
    names = tuple(name for name, _ in trainable)
    if level == GRADIENT_FULL:
        return names
    if level == GRADIENT_PROBE:
        policy = policy or AuditPolicy()
        return probe_names(names, [p.numel() for _, p in trainable], policy.probe_tensors, probe_key,
                           policy.probe_floor, policy.probe_window)
    raise AuditError(f"gradient audit level: expected probe or full, got {level!r}")


@dataclass(frozen=True)
class Rescoring:
    """The verifier's forward over some samples: each one's token logprobs and, when the draws
    were replayed, each token's draw gap (`protocol/rules/sampling.py`); gradients when audited."""

    logprobs: dict[int, list[float]]
    draw_gaps: dict[int, list[float]]
    gradients: dict[str, Tensor] | None = None


def _draw_gaps(indices: Sequence[int], samples: Sequence[Sample], scored) -> dict[int, list[float]]:
    if scored.draw_gaps is None:
        return {}
    rows = scored.draw_gaps.tolist()
    return {i: row[: len(s.completion_ids)] for i, row, s in zip(indices, rows, samples)}


def rescore_logprobs(
    model, prompt_ids: Sequence[Sequence[int]], samples: Sequence[Sample], indices: Sequence[int],
    temperature: float, pad_token_id: int, draw: DrawCheck | None = None,
) -> Rescoring:
    """Re-scored token logprobs of `samples[i]` for i in `indices`: one no-grad prefill, each
    distinct prompt run once (`shared_prefix_logprobs`); with `draw` (rows in `indices` order),
    every token's draw replayed from the same logits."""
    chosen = [samples[i] for i in indices]
    with torch.no_grad():
        scored = shared_prefix_logprobs(
            model, [prompt_ids[s.prompt_index] for s in chosen], [s.completion_ids for s in chosen],
            temperature, pad_token_id, draw,
        )
    rows = scored.logprobs.cpu().tolist()
    logprobs = {i: row[: len(s.completion_ids)] for i, row, s in zip(indices, rows, chosen)}
    return Rescoring(logprobs, _draw_gaps(indices, chosen, scored))


@contextmanager
def gradient_only_for(model, parameter_names: Sequence[str]):
    """Within the block, only the named parameters require grad, so autograd records no op that
    precedes them: a probe of the trailing tensors runs the body of the model as a no-grad forward
    and keeps a graph (and saved activations) only from the probed tensors on. `requires_grad` is
    restored on exit; callers already hold the model exclusively (the coordinator's model lock)."""
    wanted = set(parameter_names)
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for name, param in model.named_parameters():
            param.requires_grad_(name in wanted)
        yield
    finally:
        for param, requires in saved:
            param.requires_grad_(requires)


def recompute_gradient(
    model, prompt_ids: Sequence[Sequence[int]], samples: Sequence[Sample], rewards: Sequence[RewardBreakdown],
    strategy: StrategySpec, parameter_names: Sequence[str], pad_token_id: int,
    reward_config: RewardConfig = RewardConfig(), reference_model=None, draw: DrawCheck | None = None,
) -> Rescoring:
    """The node's loss chain on the submitted samples, exactly: one batched forward over all
    samples in order (`shared_prefix_logprobs`: each distinct prompt run once, same value and
    graph as the node's `completion_logprobs`), `strategy_loss` with old = detached current
    logprobs and the config-weighted total rewards reshaped to [prompts, group_size]; then the
    gradient of the named parameters only; with beta > 0 the k3 KL to `reference_model` (required then) enters
    as in the node's step. The model must be in eval mode; it is not modified."""
    params = dict(model.named_parameters())
    missing = [n for n in parameter_names if n not in params]
    if missing:
        raise AuditError(f"recompute_gradient: the model has no parameters {missing[:3]}")
    if strategy.beta > 0 and reference_model is None:
        raise AuditError(f"strategy {strategy.name!r} has beta={strategy.beta}: the gradient audit needs the reference model")
    prompts = [prompt_ids[s.prompt_index] for s in samples]
    completions = [s.completion_ids for s in samples]
    reference = None
    if strategy.beta > 0:
        with torch.no_grad():
            reference = shared_prefix_logprobs(reference_model, prompts, completions, strategy.temperature, pad_token_id).logprobs
    wanted = [params[n] for n in parameter_names]
    with torch.enable_grad(), gradient_only_for(model, parameter_names):
        scored = shared_prefix_logprobs(model, prompts, completions, strategy.temperature, pad_token_id, draw)
        totals = torch.tensor([total_reward(r, reward_config) for r in rewards], dtype=torch.float32)
        totals = totals.reshape(-1, strategy.group_size).to(scored.logprobs.device)
        loss, _stats = strategy_loss(scored.logprobs, scored.logprobs.detach(), totals, scored.mask, strategy, reference)
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    gradients = {
        name: (g.detach().to("cpu", torch.float32) if g is not None else torch.zeros(p.shape))
        for name, p, g in zip(parameter_names, wanted, grads)
    }
    rows = scored.logprobs.detach().cpu().tolist()
    logprobs = {i: row[: len(s.completion_ids)] for i, (row, s) in enumerate(zip(rows, samples))}
    return Rescoring(logprobs, _draw_gaps(range(len(samples)), samples, scored), gradients)


@dataclass(frozen=True)
class GradientComparison:
    """cosine(claimed, reference) and both norms, over the compared tensors flattened together."""

    cosine: float
    claimed_norm: float
    reference_norm: float

    @property
    def norm_error(self) -> float:
        """|claimed / reference - 1|; finite (1e30 stands for "reference is zero, claimed is not")."""
        if self.reference_norm == 0.0:
            return 0.0 if self.claimed_norm == 0.0 else 1e30
        return abs(self.claimed_norm / self.reference_norm - 1.0)


def quantized_reference(reference: Mapping[str, Tensor], compression: str) -> dict[str, Tensor]:
    """`reference` passed through the node's codec and back: the value an honest node would
    have sent for these tensors, so the codec's error cancels out of the comparison. Computed
    without the wire bytes (`dequantized`: the codec's own quantizer, bit-identical values)."""
    if compression == "none":  # float32 as is: the round trip is the identity
        return {name: t.detach().to("cpu", torch.float32) for name, t in reference.items()}
    return dequantized(reference, compression)


def compare_gradients(claimed: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> GradientComparison:
    """Cosine and norms in float64 over the names of `reference` (which `claimed` must hold)."""
    dot = aa = bb = 0.0
    for name in sorted(reference):  # tensor by tensor: no copy of the whole gradient in float64
        a, b = claimed[name].reshape(-1).double(), reference[name].reshape(-1).double()
        dot, aa, bb = dot + float(torch.dot(a, b)), aa + float(torch.dot(a, a)), bb + float(torch.dot(b, b))
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na == 0.0 and nb == 0.0:
        cosine = 1.0
    elif na == 0.0 or nb == 0.0:
        cosine = 0.0
    else:
        cosine = dot / (na * nb)
    return GradientComparison(cosine=cosine, claimed_norm=na, reference_norm=nb)


def logprob_findings(samples, rescored: dict[int, list[float]], tolerance: float) -> tuple[Finding, ...]:
    """Per checked sample over tolerance: its worst token, as check "logprob:<position>".

    The bound is relative above a logprob of magnitude 1: `tolerance * max(1, |logprob|)`. Float32
    rounding in a log-softmax grows with the magnitude of the values summed, so an honest node's
    unlikely token (logprob -10 on a trained model) differs from the verifier's prefill by more than
    a likely one; a flat bound slashed such a node (devnet, round 9: a gap of 1.001e-4 at -9.9).
    The slack this leaves changes a token's ratio in the loss by at most a factor e^(tolerance*|lp|)
    on tokens the sampling proof already checks were drawn."""
    findings = []
    for index in sorted(rescored):
        recorded = samples[index].logprobs
        excess = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(recorded, rescored[index])]
        worst = max(range(len(excess)), key=excess.__getitem__)
        if not excess[worst] <= tolerance:
            findings.append(Finding(index, f"logprob:{worst}", rescored[index][worst], recorded[worst]))
    return tuple(findings)


def sampling_findings(draw_gaps: dict[int, list[float]], tolerance: float) -> tuple[Finding, ...]:
    """Per checked sample with a draw gap over `tolerance`: its first such token (the first that
    could not have been drawn), as check "draw:<position>", expected 0 (inside its interval),
    claimed the gap (a share of the probability mass)."""
    findings = []
    for index in sorted(draw_gaps):
        first = next((t for t, gap in enumerate(draw_gaps[index]) if not gap <= tolerance), None)
        if first is not None:
            findings.append(Finding(index, f"draw:{first}", 0.0, draw_gaps[index][first]))
    return tuple(findings)


def gradient_findings(claimed, reference, compression: str, policy: AuditPolicy) -> tuple[Finding, ...]:
    """Cosine ("gradient-cosine": expected the bound, claimed the value) and norm
    ("gradient-norm": expected the reference norm, claimed the submitted one)."""
    tolerance = policy.tolerance_for(compression)
    comparison = compare_gradients(claimed, quantized_reference(reference, compression))
    if max(comparison.claimed_norm, comparison.reference_norm) <= GRADIENT_NOISE_FLOOR:
        return ()
    findings = []
    if not comparison.cosine >= tolerance.min_cosine:
        findings.append(Finding(CONTRIBUTION_LEVEL, "gradient-cosine", tolerance.min_cosine, comparison.cosine))
    if not comparison.norm_error <= tolerance.max_norm_error:
        findings.append(Finding(CONTRIBUTION_LEVEL, "gradient-norm", comparison.reference_norm, comparison.claimed_norm))
    return tuple(findings)
