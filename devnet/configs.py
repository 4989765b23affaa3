"""The devnet's role configs: built as the daemons' own pydantic models, written as TOML.

Building a `CoordinatorConfig` / `NodeConfig` here (rather than formatting text) means the file
that lands on disk has already passed the same validation the daemon will apply, and a renamed
key breaks the devnet's tests instead of a user's first run. Only the keys the devnet sets are
written (`exclude_unset`), so each file reads as "the devnet's choices over the defaults".

"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
import tomli_w

from thinkmesh.devnet.processes import DevnetError
from thinkmesh.protocol.runtime.atomic_files import write_atomic

RUN_ID = "devnet"


@dataclass(frozen=True)
class ChainEndpoint:
    """What a role needs to reach the devnet's ledger; the key comes from the role's own key dir."""

    rpc_url: str
    ledger: str
    deployment_file: Path

    def section(self) -> dict[str, str]:
        """The `[chain]` entries both roles' configs share: where the ledger is and how to reach it."""
        return {"rpc_url": self.rpc_url, "deployment_file": str(self.deployment_file), "ledger": self.ledger}


@dataclass(frozen=True)
class RoundPlan:
    """The round settings a devnet profile chooses (seconds, counts)."""

    rounds: int  # absolute last round id; 0 runs forever
    deadline_s: float
    close_when: int
    prompts_per_node: int
    min_peers: int
    eval_prompts: int
    eval_max_new_tokens: int
    group_size: int
    max_new_tokens: int
    task_family: str = "arithmetic"
    template: str = "r1"  # the base model's cold-start template
    lr: float = 1e-3
    adapter_rank: int = 0  # > 0: adapter rounds (the coordinator's [adapter] section)
    seed: str | None = None  # the text every round seed derives from; None: the coordinator's default


def coordinator_config(
    *, base_model: Path, data_dir: Path, key_dir: Path, password_file: Path | None, p2p_port: int | None,
    port_file: Path, maddrs_file: Path, plan: RoundPlan, chain: ChainEndpoint | None, http_port: int = 0,
    run_id: str = RUN_ID, overrides: dict | None = None,
):
    """The coordinator's config. `p2p_port` None: the daemon's default listening address; `password_file`
    None: the password comes from the environment; `overrides`: keys a bench or a test sets beyond the
    devnet's choices, merged table by table before validation."""
    from thinkmesh.coordinator.config import CoordinatorConfig

    values: dict = {
        "run_id": run_id, "base_model": str(base_model), "data_dir": str(data_dir),
        "identity": {"key_dir": str(key_dir), **({"password_file": str(password_file)} if password_file else {})},
        "network": {**({"host_maddrs": [f"/ip4/127.0.0.1/tcp/{p2p_port}"]} if p2p_port is not None else {}),
                    "maddrs_file": str(maddrs_file)},
        "round": {"rounds": plan.rounds, "deadline_s": plan.deadline_s, "close_when": plan.close_when,
                  "prompts_per_node": plan.prompts_per_node, "start_delay_s": 1.0, "min_peers": plan.min_peers,
                  "task_family": plan.task_family, "template": plan.template,
                  "group_sizes": [plan.group_size], "max_new_tokens": [plan.max_new_tokens]},
        "aggregation": {"rule": "norm_clip", "clip_norm": 10.0, "lr": plan.lr},
        "eval": {"prompts": plan.eval_prompts, "max_new_tokens": plan.eval_max_new_tokens},
        "observability": {"http_port": http_port, "port_file": str(port_file), "console": False},
    }  # fmt: skip
    if plan.seed is not None:
        values["round"]["seed"] = plan.seed
    if chain is not None:
        values["chain"] = chain.section()
    if plan.adapter_rank:
        values["adapter"] = {"rank": plan.adapter_rank, "alpha": 2.0 * plan.adapter_rank}
    return _validated(CoordinatorConfig, merge_tables(values, overrides or {}), "coordinator")


def node_config(
    *, coordinator_peer_id: str | None, bootstrap: list[str], base_model: Path, data_dir: Path, key_dir: Path,
    password_file: Path | None, strategy: str, port_file: Path, plan: RoundPlan, chain: ChainEndpoint | None,
    console: bool = False, run_id: str = RUN_ID, overrides: dict | None = None,
):
    """A node's config; `overrides` as for `coordinator_config`. `coordinator_peer_id` None and no `bootstrap`:
    the node finds both on the ledger (a `[chain]` section, or `--rpc` and `--ledger`)."""
    from thinkmesh.node.config import NodeConfig

    values: dict = {
        "run_id": run_id, **({"coordinator_peer_id": coordinator_peer_id} if coordinator_peer_id else {}),
        "base_model": str(base_model),
        "data_dir": str(data_dir),
        "identity": {"key_dir": str(key_dir), **({"password_file": str(password_file)} if password_file else {})},
        "network": {"initial_peers": list(bootstrap)},
        "strategy": {"preset": strategy, "group_size": plan.group_size, "max_new_tokens": plan.max_new_tokens},
        "round": {"poll_s": 0.3, "sync_interval_s": 1.0},
        "observability": {"port_file": str(port_file), "console": console},
    }  # fmt: skip
    if chain is not None:
        values["chain"] = chain.section()
    return _validated(NodeConfig, merge_tables(values, overrides or {}), "node")


def require_cheat_mode(mode: str) -> None:
    """`DevnetError` listing the modes a running node can cheat in (`devnet node-run --cheat`), unless `mode` is one."""
    from thinkmesh.devnet.cheats import NODE_CHEAT_MODES

    if mode not in NODE_CHEAT_MODES:
        raise DevnetError(f"--cheater: expected one of {', '.join(NODE_CHEAT_MODES)}, got {mode!r}")


def write_config(config: BaseModel, path: Path) -> Path:
    """Writes the keys the devnet set (validated already) as TOML, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, config_toml(config))


def config_toml(config: BaseModel) -> str:
    """The TOML text of the keys set on `config` (unset and `None` keys left out, as the loader's defaults)."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_unset=True, exclude_none=True))


def merge_tables(values: dict, overrides: dict) -> dict:
    """`values` with `overrides` laid over it: tables merge key by key, anything else replaces. Also for
    a caller that layers its own overrides (a test mesh's subclass over its base class's)."""
    merged = dict(values)
    for key, value in overrides.items():
        both_tables = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge_tables(merged[key], value) if both_tables else value
    return merged


def _validated(config_class: type[BaseModel], values: dict, role: str):
    from pydantic import ValidationError

    try:
        return config_class.model_validate(values)
    except ValidationError as exc:
        raise DevnetError(f"the devnet built an invalid {role} config (a daemon setting changed?): {exc}") from exc
