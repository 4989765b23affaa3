"""Generation rounds: the network's own rejection sampling (R1's data step), as a round kind.

A round is announced as one of two kinds (`RoundAnnouncement.kind`):

    training    (the default) samples + a gradient; the coordinator aggregates and steps the model
    generation  samples only: nodes draw G completions per prompt from the round's model under the
                round's terms, exactly as in a training round, and send an *empty* gradient
                (`GradientPayload` with no tensors); the model version does not change

A generation round is verified as a training round is (signature, terms, prompt set, sample
shape, rewards recomputed on every sample, logprobs and the sampling proof) except that nothing
is differentiated: the gradient must be empty (`malformed-gradient` otherwise), and every sample is
re-scored and its draws replayed, since each accepted trace is paid and published on its own.

**The acceptance rule.** A trace of a verified generation contribution is *accepted* iff its
(recomputed, hence equal to claimed) rewards have accuracy 1 and format 1: a correct answer in
the `<think>…</think>` then answer form. Only accepted traces enter the round's traces tree (the
Merkle root on chain) and only they are paid (`payout.generation_payout`: per accepted trace).
An honest incorrect trace is simply left out: the contribution is still verified, nothing is
slashed. A trace claimed correct that is not (reward-mismatch) or drawn off the round's streams
(sampling-mismatch) fails the whole contribution, which is refused and slashed.

Pure: no I/O; anyone re-derives a generation round's accepted traces from its contributions.
"""

from __future__ import annotations

from thinkmesh.protocol.rules.rewards import RewardBreakdown

ROUND_KIND_TRAINING = "training"
ROUND_KIND_GENERATION = "generation"
ROUND_KINDS = (ROUND_KIND_TRAINING, ROUND_KIND_GENERATION)
ACCEPTED_ACCURACY = 1.0
ACCEPTED_FORMAT = 1.0


def is_generation(announcement) -> bool:
    """True for a generation round's announcement (`kind` absent: a training round)."""
    return getattr(announcement, "kind", ROUND_KIND_TRAINING) == ROUND_KIND_GENERATION


def trace_accepted(rewards: RewardBreakdown) -> bool:
    """The generation round's acceptance rule: accuracy 1 and format 1 (see the module docstring)."""
    return rewards.accuracy == ACCEPTED_ACCURACY and rewards.format == ACCEPTED_FORMAT


def accepted_trace_indices(contribution) -> tuple[int, ...]:
    """The sample indices of a verified generation contribution whose traces are accepted, in order."""
    return tuple(i for i, sample in enumerate(contribution.samples) if trace_accepted(sample.rewards))
