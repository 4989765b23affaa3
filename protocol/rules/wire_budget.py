"""What a round's contribution will weigh on the wire, known before any work is done.

A contribution is its samples plus one gradient tensor per trainable parameter, so its size is
bounded by the announcement (prompts, the largest group and max_new_tokens of its terms) and the
trainable parameter count under the chosen compression (protocol/rules/gradient_codec.py's table). A
node checks the bound before it generates a token: a full-model round on a model whose gradient
cannot cross the wire is refused up front, naming the fix (adapter rounds), rather than after
minutes of rollouts and a refused upload.
"""

from __future__ import annotations

from dataclasses import dataclass

from thinkmesh.protocol.rules.messages import Contribution, MiB, RoundAnnouncement

# The coordinator's default intake limit (coordinator/config.py IntakeConfig.max_contribution_bytes).
DEFAULT_MAX_CONTRIBUTION_BYTES = 64 * MiB
BYTES_PER_ELEMENT = {"none": 4.0, "fp16": 2.0, "uniform8": 1.0, "blockwise8": 1.0 + 4 / 4096}
PER_TENSOR_BYTES = 1024 + 128  # uniform8's codebook and the blob's headers, an upper bound
PER_TOKEN_BYTES = 5 + 9  # a token id (msgpack uint32 at most) and its float64 logprob
PER_SAMPLE_BYTES = 256  # prompt index, rewards, framing


class WireLimitError(ValueError):
    """A round whose contribution would exceed the wire's limits; the message names the fix."""


@dataclass(frozen=True)
class WireEstimate:
    gradient_bytes: int
    sample_bytes: int

    @property
    def total(self) -> int:
        return self.gradient_bytes + self.sample_bytes


def estimate_contribution(announcement: RoundAnnouncement, trainable_params: int, tensors: int,
                          compression: str) -> WireEstimate:
    """An upper estimate of the contribution's encoded size under the announcement's terms."""
    gradient = int(trainable_params * BYTES_PER_ELEMENT[compression]) + tensors * PER_TENSOR_BYTES
    rows = announcement.prompts_per_node * announcement.terms.max_group_size
    samples = rows * (PER_SAMPLE_BYTES + PER_TOKEN_BYTES * announcement.terms.max_tokens)
    return WireEstimate(gradient, samples)


def check_fits_wire(announcement: RoundAnnouncement, trainable_params: int, tensors: int, compression: str,
                    max_bytes: int = DEFAULT_MAX_CONTRIBUTION_BYTES) -> WireEstimate:
    """Raises WireLimitError unless the contribution fits min(`max_bytes`, Contribution.MAX_BYTES)."""
    estimate = estimate_contribution(announcement, trainable_params, tensors, compression)
    limit = min(max_bytes, Contribution.MAX_BYTES)
    if estimate.total > limit:
        kind = "adapter" if announcement.adapter is not None else "full-model"
        fix = ("use a smaller adapter rank or fewer target modules" if announcement.adapter is not None else
               "use adapter rounds ([adapter] in the coordinator's config, `thinkmesh devnet up --adapter`): "
               "only a LoRA adapter's gradient travels")
        raise WireLimitError(
            f"round {announcement.round_id}: a {kind} contribution of {trainable_params:,} trainable parameters "
            f"under {compression} would be about {estimate.total / MiB:.1f} MiB, over the wire's limit of "
            f"{limit / MiB:.0f} MiB; not starting the work. Fix: {fix}")
    return estimate
