"""The coordinator's configuration: one typed tree, loaded from TOML with env overrides.

Defaults run the devnet on loopback. Every section forbids unknown keys, so a typo is an error
naming the key rather than a silently ignored setting. Durations are seconds, sizes bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from thinkmesh.protocol.runtime.config_files import ConfigSection, IdentityConfig, load_config
from thinkmesh.protocol.rules.errors import EncodingError
from thinkmesh.protocol.rules.messages import COMPRESSIONS, MiB, RoundTerms


class NetworkConfig(ConfigSection):
    host_maddrs: list[str] = ["/ip4/127.0.0.1/tcp/0"]
    announce_maddrs: list[str] = []
    initial_peers: list[str] = []
    maddrs_file: Path | None = None  # where to write the visible multiaddrs, one per line


class RoundConfig(ConfigSection):
    rounds: int = Field(3, ge=0)  # training rounds to run; 0 runs forever
    deadline_s: float = Field(60.0, gt=0)
    # Close before the deadline once every node expected in the round arrived (round_close.py) and at
    # least this many verdicts are in; 0 = never early.
    close_when: int = Field(0, ge=0)
    min_contributions: int = Field(1, ge=1)  # fewer than this: the round ends with no update
    prompts_per_node: int = Field(4, ge=1, le=4096)
    task_family: Literal["arithmetic", "countdown", "linear"] = "arithmetic"
    task_difficulty: int = Field(1, ge=1, le=5)
    seed: str = "thinkmesh-devnet"  # the round seeds derive from it
    start_delay_s: float = Field(0.0, ge=0)  # wait before the first announcement
    min_peers: int = Field(0, ge=0)  # before the first announcement, wait for this many p2p peers
    template: Literal["r1", "r1-compact"] = "r1"  # the prompt template announced to nodes (protocol.tasks.TEMPLATES): the base model's SFT one
    # The round's terms (protocol/rules/terms.py): each a small allowed set a node's strategy must take its
    # sampling values from; they bound the work, the pay and the bytes of every contribution.
    temperatures: list[float] = Field([1.0], min_length=1, max_length=8)
    top_ps: list[float] = Field([1.0], min_length=1, max_length=8)
    group_sizes: list[int] = Field([8], min_length=1, max_length=8)
    max_new_tokens: list[int] = Field([512], min_length=1, max_length=8)
    # Generation rounds (protocol/rules/generation.py: samples only, no gradient, no model step; the correct,
    # well-formed traces are paid and published): round r is one when r is in `generation_rounds`, or
    # when `generation_every` = N > 0 and r % N == 0 (rounds N, 2N, ...: N = 1 makes them all).
    generation_every: int = Field(0, ge=0)
    generation_rounds: list[int] = Field([], max_length=4096)

    def is_generation_round(self, round_id: int) -> bool:
        """Whether round `round_id` is announced as a generation round (see the fields above)."""
        every = self.generation_every
        return round_id in self.generation_rounds or (every > 0 and round_id % every == 0)

    def terms(self) -> RoundTerms:
        """The announcement's `RoundTerms`; its errors name the bad set."""
        try:
            return RoundTerms(tuple(self.temperatures), tuple(self.top_ps), tuple(self.group_sizes), tuple(self.max_new_tokens))
        except EncodingError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _terms_valid(self) -> "RoundConfig":
        self.terms()
        return self


class IntakeConfig(ConfigSection):
    max_contribution_bytes: int = Field(64 * MiB, gt=0)
    allowed_nodes: list[str] = []  # PeerIDs; empty admits every well-signed node
    compressions: list[Literal["none", "fp16", "uniform8", "blockwise8"]] = list(COMPRESSIONS)


class AggregationConfig(ConfigSection):
    rule: Literal["mean", "norm_clip", "centered_clip"] = "mean"
    clip_norm: float = Field(1.0, gt=0)  # for norm_clip and centered_clip
    centered_clip_iters: int = Field(3, ge=1)
    # The step that makes a version: AdamW, or SGD with momentum, whose step is the aggregate itself,
    # so its noise shrinks as more nodes contribute (measured on the tiny model: docs/learning.md).
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    max_grad_norm: float = Field(0.0, ge=0)  # clip of the aggregate before the step; 0 = off


class AdapterConfig(ConfigSection):
    """Adapter rounds (protocol/rules/adapters.py): `base_model` stays frozen, pinned by its hash, and a
    LoRA adapter is what rounds train, verify and sync. Without this section rounds move the whole
    model (fine for small models; a node refuses a round whose gradient would not fit the wire)."""

    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    target_modules: list[str] = []  # empty: every linear layer of the base (attention and MLP), not the head
    seed: int = Field(0, ge=0)  # the LoRA A initialisation of version 0 (B starts at zero)


class EvalConfig(ConfigSection):
    prompts: int = Field(8, ge=0)  # 0 disables the held-out evaluation
    max_new_tokens: int = Field(32, ge=1)
    seed: str = "thinkmesh-heldout"
    template: Literal["r1", "r1-compact"] | None = None  # default: the round's template, so the eval asks what training asks
    # Contribution values (protocol/rules/contribution_value.py): a validation batch of value_prompts x
    # value_group completions per round, each accepted update scored on it alone; 0 prompts: off.
    value_prompts: int = Field(8, ge=0)
    value_group: int = Field(4, ge=2)
    # At most this many contributions are valued per round (a public draw, `valued_indices`): one
    # forward pass over the validation batch each, so the round's cost does not grow with the nodes.
    value_max_contributions: int = Field(16, ge=1)


class ChainConfig(ConfigSection):
    """Settlement on an EVM chain. The coordinator's EVM key is its keystore's (`identity.key_dir`)
    unless `private_key_env` names an environment variable holding a 0x-hex key. Token amounts are
    decimal strings of whole tokens (e.g. "0.05")."""

    rpc_url: str
    deployment_file: Path | None = None  # a Deployment JSON; else `ledger` (discovered from the chain)
    ledger: str | None = None
    from_block: int = Field(0, ge=0)  # with `ledger` only: the deployment block, for event scans
    private_key_env: str | None = None
    reward_per_prompt: str = "0.08"  # tokens per verified prompt (a group) at score 1.0
    reward_per_trace: str = "0.02"  # generation rounds: tokens per accepted trace (protocol/rules/payout.py)
    slash_amount: str = "5"  # tokens slashed per failed contribution (capped at the stake)
    evidence_dir: Path | None = None  # default: <data_dir>/evidence
    publish_bootstrap: bool = True  # keep this coordinator's multiaddrs in the ledger's bootstrap list


class VerificationConfig(ConfigSection):
    """Re-scoring of every contribution (docs/verification.md). Runs whenever `[chain]` is set;
    `enabled = true` turns it on for a mesh without a chain (no registry, nothing paid)."""

    enabled: bool = False
    logprob_samples: int = Field(8, ge=1)
    probe_rate: float = Field(1.0, ge=0, le=1)
    full_gradient_rate: float = Field(0.01, ge=0, le=1)  # the probe deters partial fakes; this sees every tensor at once
    probe_tensors: int = Field(1, ge=1)  # drawn after the deadline (protocol/rules/audit.py probe_weights)
    probe_floor: float = Field(0.1, gt=0, le=1)  # share of probe draws uniform over all parameters: deters partial fakes
    probe_window: float = Field(0.1, gt=0, le=1)  # the rest: uniform over this last share of them (cheap to reach)


class ObservabilityConfig(ConfigSection):
    http_host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)  # 0 picks a free port (written to port_file)
    port_file: Path | None = None
    console: bool = True


class CoordinatorConfig(ConfigSection):
    chain_id: int = 31337
    run_id: str = "devnet"
    base_model: Path  # a causal-LM directory: version 0 of the model
    data_dir: Path  # checkpoints, round records
    device: str = "cpu"
    torch_threads: int = Field(1, ge=0)  # 0 leaves torch's default
    identity: IdentityConfig
    network: NetworkConfig = NetworkConfig()
    round: RoundConfig = RoundConfig()
    intake: IntakeConfig = IntakeConfig()
    aggregation: AggregationConfig = AggregationConfig()
    eval: EvalConfig = EvalConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    chain: ChainConfig | None = None
    verification: VerificationConfig = VerificationConfig()
    adapter: AdapterConfig | None = None  # set: adapter rounds on the frozen base_model

    @property
    def verifies(self) -> bool:
        return self.chain is not None or self.verification.enabled


def load_coordinator_config(path: str | Path | None, environ=None) -> CoordinatorConfig:
    return load_config(CoordinatorConfig, path, "coordinator", environ)
