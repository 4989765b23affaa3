"""The node daemon's configuration: one typed tree, loaded from TOML with env overrides
(`THINKMESH_NODE__SECTION__KEY=value`). Unknown keys are errors naming the key."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from thinkmesh.protocol.runtime.config_files import ConfigSection, IdentityConfig, load_config
from thinkmesh.protocol.rules.strategies import StrategySpec, strategy_from_name, validate_strategy


class NetworkConfig(ConfigSection):
    # The coordinator's multiaddrs (bootstrap); empty: read from the ledger of `[chain]` (node/work/bootstrap.py)
    initial_peers: list[str] = []
    host_maddrs: list[str] = ["/ip4/127.0.0.1/tcp/0"]
    announce_maddrs: list[str] = []
    client_mode: bool = False  # behind NAT: reach out only, serve no DHT records
    use_auto_relay: bool = False  # find a libp2p relay to become reachable behind NAT


class StrategyConfig(ConfigSection):
    preset: str = "grpo"
    group_size: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    overlong_buffer: int | None = None  # DAPO's soft length penalty window, in tokens
    dynamic_sampling: bool | None = None  # DAPO: drop groups whose rewards are all equal

    def spec(self) -> StrategySpec:
        """The preset with the overrides applied (DAPO's overlong buffer shrinks to fit unless set)."""
        base = strategy_from_name(self.preset)
        pairs = (("group_size", self.group_size), ("max_new_tokens", self.max_new_tokens),
                 ("temperature", self.temperature), ("top_p", self.top_p),
                 ("overlong_buffer", self.overlong_buffer), ("dynamic_sampling", self.dynamic_sampling))
        overrides = {k: v for k, v in pairs if v is not None}
        spec = dataclasses.replace(base, **overrides)
        shrink = spec.overlong_buffer >= spec.max_new_tokens or (base.overlong_buffer and "max_new_tokens" in overrides)
        if shrink and "overlong_buffer" not in overrides:
            spec = dataclasses.replace(spec, overlong_buffer=spec.max_new_tokens // 5)
        return validate_strategy(spec)


class RoundConfig(ConfigSection):
    poll_s: float = Field(1.0, gt=0)  # how often to read the announcement from the DHT
    sync_interval_s: float = Field(10.0, gt=0)  # how often an idle node checks the coordinator's head
    # blockwise8: the same bytes as uniform8 (a quarter of fp32) at ~1.3% per-tensor error where
    # uniform8, clipped at 3 sigma, loses 5-9% (median, measured on the tiny model's real gradients)
    compression: Literal["none", "fp16", "uniform8", "blockwise8"] = "blockwise8"
    upload_timeout_s: float = Field(120.0, gt=0)
    # The coordinator's intake limit (its [intake] max_contribution_bytes; 64 MiB by default): a round
    # whose contribution would be larger is refused before any work (protocol/rules/wire_budget.py).
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)


class ChainConfig(ConfigSection):
    """The ledger this node is paid on. The node registers itself (signing with its keystore's EVM
    key) unless it already is; `stake` is a decimal string of whole tokens."""

    rpc_url: str
    deployment_file: Path | None = None  # a Deployment JSON; else `ledger` (discovered from the chain)
    ledger: str | None = None
    stake: str = "10"
    auto_register: bool = True
    endpoint: str = ""  # published with the registration (a multiaddr or URL)


class MemoryConfig(ConfigSection):
    """Batch sizes in sequences (0: planned from the model and free memory on the first round, see
    node/model/memory_fit.py); an out-of-memory error halves them either way."""

    rollout_batch: int = Field(0, ge=0)
    micro_batch: int = Field(0, ge=0)
    free_fraction: float = Field(0.8, gt=0, le=1)  # of the device's free memory the plan may use
    cpu_cap_mb: int = Field(0, ge=0)  # on CPU, plan within min(MemAvailable, this); 0: no cap


class ObservabilityConfig(ConfigSection):
    http_host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)
    port_file: Path | None = None
    console: bool = True


class NodeConfig(ConfigSection):
    chain_id: int = 31337
    run_id: str = "devnet"
    # `12D3KooW...`: whose announcements and models to trust; unset: the first ledger bootstrap peer that answers
    coordinator_peer_id: str | None = None
    base_model: Path  # tokenizer and starting weights (a causal-LM directory)
    data_dir: Path
    device: str = "cpu"
    # The weights' dtype on `device`. Rounds verify in float32 today (docs/verification.md): a bfloat16
    # node's logprobs miss the float32 tolerances unless the coordinator's audit policy uses bf16 ones.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    torch_threads: int = Field(1, ge=0)
    identity: IdentityConfig
    network: NetworkConfig = NetworkConfig()
    strategy: StrategyConfig = StrategyConfig()
    round: RoundConfig = RoundConfig()
    memory: MemoryConfig = MemoryConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    chain: ChainConfig | None = Field(None, validate_default=True)

    @field_validator("chain")
    @classmethod
    def _bootstrap_source(cls, chain: ChainConfig | None, info: ValidationInfo) -> ChainConfig | None:
        network = info.data.get("network")
        if chain is None and network is not None and not network.initial_peers:
            raise ValueError("expected a [chain] section (or --rpc and --ledger) whose ledger lists the bootstrap "
                             "peers, or [network] initial_peers")
        return chain


def load_node_config(path: str | Path | None, environ=None, *, rpc_url: str | None = None,
                     ledger: str | None = None) -> NodeConfig:
    """`rpc_url` / `ledger` (the `--rpc` / `--ledger` flags) fill `[chain]` over the file and the
    environment; a `--ledger` replaces the file's `deployment_file`."""
    env = dict(os.environ if environ is None else environ)
    for key, value in (("RPC_URL", rpc_url), ("LEDGER", ledger)):
        if value is not None:  # quoted: an address would otherwise parse as a TOML hex integer
            env[f"THINKMESH_NODE__CHAIN__{key}"] = json.dumps(value)
    config = load_config(NodeConfig, path, "node", env)
    if ledger is not None and config.chain is not None and config.chain.deployment_file is not None:
        config = config.model_copy(update={"chain": config.chain.model_copy(update={"deployment_file": None})})
    return config
