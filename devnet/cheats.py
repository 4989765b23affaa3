"""Adversarial contributions, for tests, the devnet (`devnet node-run --cheat MODE`) and `bench/verify.py`.

Test-only code, kept out of the daemons: a running node cheats only through the contribution hook
that `devnet/cheating_node.py` plugs in (node/work/contribution_hook.py).

Each mode turns honest work into the contribution a *competent* cheater would send: it is
re-signed with the cheater's own key, bound to the current round, its Merkle root recomputed, and
(where the cheat touches samples) its gradient recomputed from the cheated samples so claims and
gradient agree. Every cheap check therefore passes; what catches each mode is a deeper one:

    fake-rewards      claims full accuracy and format            -> reward-mismatch
    stale-model       rollouts and gradient from an older model  -> logprob-mismatch
    made-up-logprobs  reference answers passed off as sampled    -> logprob-mismatch
    random-gradient   noise with the honest per-tensor norms     -> gradient-mismatch
    scaled-gradient   the honest gradient times `scale`          -> gradient-mismatch
    copy-peer         a peer's contribution re-signed as its own -> replay / reward / logprob
    replay            its own old round's contribution, re-bound -> replay / reward / logprob
    off-policy        sampled at temperature `scale`, declared at the round's, with the
                      round's logprobs                           -> sampling-mismatch
    crafted-samples   one reference answer and bare EOS per group, never sampled, with
                      their true logprobs and gradient           -> sampling-mismatch
    partial-gradient  the gradient of half the prompt groups, except the tensor a fixed probe
                      would look at (the trailing one), computed in full -> gradient-mismatch

`fraction` (where it applies) is the share of prompt groups that are cheated, whole groups at a
time so the prompt set stays well formed. A cheat that changes nothing (`changes_nothing`: say,
scaled-gradient on an exactly zero gradient) returns the honest contribution itself.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from thinkmesh.node.work.contribution_step import honest_contribution, samples_and_gradients
from thinkmesh.protocol.rules.adapters import trainable_shapes
from thinkmesh.protocol.rules.audit import audited_parameter_names, recompute_gradient, rescore_logprobs
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.gradient_codec import decode_gradient, encode_gradient
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.messages import Contribution, RoundAnnouncement, Sample, samples_root, sign_message
from thinkmesh.protocol.rules.rewards import reference_completion, score_completion
from thinkmesh.protocol.rules.scoring import completion_text
from thinkmesh.protocol.rules.verification import CLAIMED_REWARD_OVERLONG_BUFFER, node_tasks, prompt_ids_for

CHEAT_MODES = (
    "fake-rewards", "stale-model", "made-up-logprobs", "random-gradient", "scaled-gradient", "copy-peer", "replay",
    "off-policy", "crafted-samples", "partial-gradient",
)
# What a running node can send: copy-peer needs another node's contribution, which a node of the
# star never sees, so it is verification-level only (tests/protocol, bench/verify.py).
NODE_CHEAT_MODES = tuple(mode for mode in CHEAT_MODES if mode != "copy-peer")
OFF_POLICY_TEMPERATURE = 1.3
MADE_UP_LOGPROB = math.log(0.9)  # "the model was confident": what a lazy forger writes


class CheatError(ProtocolError):
    """A cheat mode that is unknown, or asked for without the inputs it needs."""


@dataclass(frozen=True)
class CheatInputs:
    """What a cheater holds. `honest` is its own honest contribution to the current round;
    the optional fields are needed only by the modes named next to them."""

    announcement: RoundAnnouncement
    identity: NodeIdentity
    honest: Contribution
    model: object = None  # the round's model: fake-rewards, made-up-logprobs
    tokenizer: object = None  # fake-rewards, made-up-logprobs, stale-model
    stale_model: object = None  # stale-model: an older version of the model
    peer: Contribution | None = None  # copy-peer: another node's contribution to this round
    old: Contribution | None = None  # replay: this node's contribution to an earlier round
    fraction: float = 1.0
    scale: float = 4.0  # scaled-gradient's factor
    seed: int = 0
    temperature: float = OFF_POLICY_TEMPERATURE  # off-policy: what it really samples at
    top_p: float | None = None  # off-policy: its real top_p (None: the declared one)
    honest_tensors: tuple[str, ...] = ()  # partial-gradient: computed over all samples (empty: the trailing one)



def resign(contribution: Contribution, identity: NodeIdentity, **changes) -> Contribution:
    """`contribution` with `changes`, its root recomputed, signed by `identity` as its own."""
    changed = dataclasses.replace(contribution, node_key=identity.public_key, **changes)
    changed = dataclasses.replace(changed, samples_root=samples_root(changed.samples))
    return sign_message(changed, identity)


def _cheated_groups(contribution: Contribution, fraction: float) -> set[int]:
    prompts = len(contribution.samples) // contribution.strategy.group_size
    return set(range(max(1, round(fraction * prompts))))


def _consistent_gradient(inputs: CheatInputs, samples: tuple[Sample, ...], model) -> dict[str, torch.Tensor]:
    """The gradient the cheated samples imply, so the cheater's gradient agrees with its claims."""
    prompts = prompt_ids_for(inputs.announcement, inputs.identity.public_key, inputs.tokenizer)
    names = audited_parameter_names(model, "full")
    pad = inputs.tokenizer.pad_token_id or 0
    return recompute_gradient(model, prompts, samples, [s.rewards for s in samples], inputs.honest.strategy,
                              names, pad).gradients


def _with_samples(inputs: CheatInputs, samples: tuple[Sample, ...], model) -> Contribution:
    if not inputs.honest.gradient.tensors:  # a generation round: no gradient to keep consistent
        return resign(inputs.honest, inputs.identity, samples=samples)
    gradient = encode_gradient(_consistent_gradient(inputs, samples, model), inputs.honest.gradient.compression)
    return resign(inputs.honest, inputs.identity, samples=samples, gradient=gradient)


def fake_rewards(inputs: CheatInputs) -> Contribution:
    groups = _cheated_groups(inputs.honest, inputs.fraction)
    samples = tuple(
        dataclasses.replace(s, rewards=dataclasses.replace(s.rewards, accuracy=1.0, format=1.0))
        if s.prompt_index in groups else s
        for s in inputs.honest.samples
    )
    return _with_samples(inputs, samples, inputs.model)


def made_up_logprobs(inputs: CheatInputs) -> Contribution:
    """Reference answers (full reward) in place of sampled completions, with invented logprobs."""
    tasks = node_tasks(inputs.announcement, inputs.identity.public_key)
    groups = _cheated_groups(inputs.honest, inputs.fraction)
    strategy, tokenizer = inputs.honest.strategy, inputs.tokenizer
    samples = []
    for sample in inputs.honest.samples:
        if sample.prompt_index not in groups:
            samples.append(sample)
            continue
        task = tasks[sample.prompt_index]
        text = reference_completion(task)
        ids = tuple(tokenizer.encode(text, add_special_tokens=False))[: strategy.max_new_tokens]
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
        rewards = score_completion(task, text, len(ids), strategy.max_new_tokens, CLAIMED_REWARD_OVERLONG_BUFFER)
        samples.append(Sample(sample.prompt_index, ids, (MADE_UP_LOGPROB,) * len(ids), rewards))
    return _with_samples(inputs, tuple(samples), inputs.model)


def stale_model(inputs: CheatInputs) -> Contribution:
    """The honest pipeline run on an older model, labelled with the announced model hash."""
    if inputs.stale_model is None:
        raise CheatError("stale-model needs CheatInputs.stale_model (an older model version)")
    return honest_contribution(inputs.stale_model, inputs.tokenizer, inputs.announcement, inputs.identity,
                               inputs.honest.strategy, inputs.honest.gradient.compression)


def _decoded(contribution: Contribution, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return decode_gradient(contribution.gradient, shapes)


def random_gradient(inputs: CheatInputs, shapes: dict[str, tuple[int, ...]]) -> Contribution:
    """Gaussian noise scaled to each honest tensor's norm: the global norm looks right.

    Where the honest tensor is exactly zero (no reward signal this round), a forger who skipped
    the work cannot know that, so its noise keeps a small RMS (1e-3) instead of vanishing."""
    honest = _decoded(inputs.honest, shapes)
    generator = torch.Generator().manual_seed(inputs.seed)
    noise = {}
    for name, tensor in honest.items():
        draw = torch.randn(tensor.shape, generator=generator)
        target = tensor.norm() if tensor.norm() > 0 else 1e-3 * draw.numel() ** 0.5
        noise[name] = draw * (target / draw.norm().clamp(min=1e-30))
    return resign(inputs.honest, inputs.identity, gradient=encode_gradient(noise, inputs.honest.gradient.compression))


def scaled_gradient(inputs: CheatInputs, shapes: dict[str, tuple[int, ...]]) -> Contribution:
    """The honest gradient times `scale`: more pull on the global model than its samples earn."""
    honest = _decoded(inputs.honest, shapes)
    scaled = {name: tensor * inputs.scale for name, tensor in honest.items()}
    return resign(inputs.honest, inputs.identity, gradient=encode_gradient(scaled, inputs.honest.gradient.compression))


def _true_logprobs(inputs: CheatInputs, samples: tuple[Sample, ...], model) -> tuple[Sample, ...]:
    """`samples` with each token's logprob as the round's model gives it at the declared
    temperature: what makes forged tokens pass the logprob check."""
    prompts = prompt_ids_for(inputs.announcement, inputs.identity.public_key, inputs.tokenizer)
    indices = range(len(samples))
    rescored = rescore_logprobs(model, prompts, samples, indices, inputs.honest.strategy.temperature,
                                inputs.tokenizer.pad_token_id or 0)
    return tuple(dataclasses.replace(s, logprobs=tuple(rescored.logprobs[i])) for i, s in zip(indices, samples))


def off_policy(inputs: CheatInputs) -> Contribution:
    """Samples drawn from its public streams at temperature `inputs.temperature` and top_p
    `inputs.top_p` (say, hotter, for more diverse groups and so more informative ones), declared
    and scored at the round's."""
    strategy = inputs.honest.strategy
    hot = dataclasses.replace(strategy, temperature=inputs.temperature,
                              top_p=strategy.top_p if inputs.top_p is None else inputs.top_p)
    sampled, _ = samples_and_gradients(inputs.model, inputs.tokenizer, inputs.announcement,
                                       inputs.identity.public_key, hot)
    return _with_samples(inputs, _true_logprobs(inputs, sampled, inputs.model), inputs.model)


def crafted_samples(inputs: CheatInputs) -> Contribution:
    """Per group: the reference answer once, then a bare EOS; nothing is sampled. Logprobs,
    rewards and gradient are all the true ones for these tokens, so only the draws can show it."""
    tasks = node_tasks(inputs.announcement, inputs.identity.public_key)
    strategy, tokenizer = inputs.honest.strategy, inputs.tokenizer
    samples = []
    for index, sample in enumerate(inputs.honest.samples):
        task = tasks[sample.prompt_index]
        if index % strategy.group_size == 0:
            ids = tuple(tokenizer.encode(f"<answer>{task.solution}</answer>", add_special_tokens=False))
        else:
            ids = (tokenizer.eos_token_id,)
        ids = ids[: strategy.max_new_tokens]
        text = completion_text(tokenizer, ids)
        rewards = score_completion(task, text, len(ids), strategy.max_new_tokens, CLAIMED_REWARD_OVERLONG_BUFFER)
        samples.append(Sample(sample.prompt_index, ids, (0.0,) * len(ids), rewards))
    return _with_samples(inputs, _true_logprobs(inputs, tuple(samples), inputs.model), inputs.model)


def partial_gradient(inputs: CheatInputs, shapes: dict[str, tuple[int, ...]]) -> Contribution:
    """The gradient of the first half of the prompt groups only (half the backward saved), except
    the model's trailing tensor, which a probe fixed in advance would check, computed over all; with
    `inputs.honest_tensors`, those instead (say, the tensors a weighted probe draws most often)."""
    strategy, samples = inputs.honest.strategy, inputs.honest.samples
    kept = samples[: max(1, len(samples) // strategy.group_size // 2) * strategy.group_size]
    prompts = prompt_ids_for(inputs.announcement, inputs.identity.public_key, inputs.tokenizer)
    names = audited_parameter_names(inputs.model, "full")
    half = recompute_gradient(inputs.model, prompts, kept, [s.rewards for s in kept], strategy, names,
                              inputs.tokenizer.pad_token_id or 0).gradients
    kept_honest = set(inputs.honest_tensors or names[-1:])
    unknown = kept_honest - set(shapes)
    if unknown:
        raise CheatError(f"partial-gradient: the model has no tensors {sorted(unknown)[:3]}")
    # The honest tensors keep the honest encoded bytes: an 8-bit code decoded and encoded again
    # is not always the same code, and a competent cheater splices blobs (each tensor is encoded alone).
    faked = encode_gradient({name: half[name] for name in names}, inputs.honest.gradient.compression)
    honest = {blob.name: blob for blob in inputs.honest.gradient.tensors}
    blobs = tuple(honest[blob.name] if blob.name in kept_honest else blob for blob in faked.tensors)
    return resign(inputs.honest, inputs.identity, gradient=dataclasses.replace(faked, tensors=blobs))


def copy_peer(inputs: CheatInputs) -> Contribution:
    if inputs.peer is None:
        raise CheatError("copy-peer needs CheatInputs.peer (another node's contribution)")
    return resign(inputs.peer, inputs.identity)


def replay(inputs: CheatInputs) -> Contribution:
    """An earlier round's contribution, re-bound to this round's ids and model hash."""
    if inputs.old is None:
        raise CheatError("replay needs CheatInputs.old (an earlier round's contribution)")
    a = inputs.announcement
    return resign(inputs.old, inputs.identity, chain_id=a.chain_id, run_id=a.run_id, round_id=a.round_id,
                  model_hash=a.model_hash)


def apply_cheat(mode: str, inputs: CheatInputs) -> Contribution:
    """The contribution a cheater of `mode` sends instead of `inputs.honest`."""
    shapes = None
    if mode in ("random-gradient", "scaled-gradient", "partial-gradient"):
        if inputs.model is None:
            raise CheatError(f"{mode} needs CheatInputs.model to know the gradient's shapes")
        shapes = trainable_shapes(inputs.model)  # an adapter round's gradient is the adapter's
    table = {
        "fake-rewards": lambda: fake_rewards(inputs),
        "stale-model": lambda: stale_model(inputs),
        "made-up-logprobs": lambda: made_up_logprobs(inputs),
        "random-gradient": lambda: random_gradient(inputs, shapes),
        "scaled-gradient": lambda: scaled_gradient(inputs, shapes),
        "copy-peer": lambda: copy_peer(inputs),
        "replay": lambda: replay(inputs),
        "off-policy": lambda: off_policy(inputs),
        "crafted-samples": lambda: crafted_samples(inputs),
        "partial-gradient": lambda: partial_gradient(inputs, shapes),
    }
    if mode not in table:
        raise CheatError(f"cheat mode: expected one of {', '.join(CHEAT_MODES)}, got {mode!r}")
    needs_model = ("fake-rewards", "made-up-logprobs", "off-policy", "crafted-samples", "partial-gradient")
    if mode in ("stale-model", *needs_model) and inputs.tokenizer is None:
        raise CheatError(f"{mode} needs CheatInputs.tokenizer")
    if mode in needs_model and inputs.model is None:
        raise CheatError(f"{mode} needs CheatInputs.model")
    cheated = table[mode]()
    if changes_nothing(cheated, inputs.honest):
        return inputs.honest
    return cheated


def changes_nothing(cheated: Contribution, honest: Contribution) -> bool:
    """True when a cheat left the work as it was: a zero gradient scaled, rewards already perfect, an
    "older" model with the current weights. The node then sends (and records) honest work, so that
    a test or a benchmark never counts an honest contribution as a cheat that went unnoticed."""
    return (cheated.node_key == honest.node_key and cheated.samples == honest.samples
            and cheated.gradient == honest.gradient)


__all__ = ["CHEAT_MODES", "NODE_CHEAT_MODES", "CheatError", "CheatInputs", "apply_cheat", "changes_nothing", "honest_contribution", "resign"]
