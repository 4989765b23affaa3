"""Where a devnet keeps its files, and the record that `up`, `status`, `down` and `join` share.

One state directory holds one devnet: its chain state, deployment, keys, configs, the
coordinator's checkpoints, every child's log, and `devnet.json` (the `DevnetState` that a second
terminal reads to find the running devnet). The cold-started model lives in a cache directory
beside it, so `--fresh` starts a new chain without paying for a new model.

    <state-dir>/devnet.json          DevnetState, rewritten atomically
    <state-dir>/password             the devnet-only key password (mode 0600)
    <state-dir>/chain/               anvil's state file, dev accounts, deployment.json
    <state-dir>/keys/<name>/         one encrypted key directory per identity
    <state-dir>/config/<name>.toml   the coordinator's and each node's config
    <state-dir>/data/<name>/         the coordinator's checkpoints, each node's data
    <state-dir>/logs/<name>.log      every child's stdout and stderr
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from thinkmesh.devnet.processes import DevnetError
from thinkmesh.protocol.runtime.atomic_files import PRIVATE_MODE, write_atomic

HOME_ENV = "THINKMESH_HOME"
STATE_FILE = "devnet.json"
PASSWORD_FILE = "password"
STATE_FORMAT = 1


def thinkmesh_home() -> Path:
    """`$THINKMESH_HOME`, else `.thinkmesh` in the working directory (a devnet belongs to a checkout)."""
    return Path(os.environ.get(HOME_ENV) or ".thinkmesh")


def default_state_dir() -> Path:
    return thinkmesh_home() / "devnet"


def default_cache_dir() -> Path:
    return thinkmesh_home() / "cache"


@dataclass(frozen=True)
class DevnetLayout:
    """The paths of one devnet's state directory; creating them is `ensure()`'s job, reading them is free."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def password_file(self) -> Path:
        return self.root / PASSWORD_FILE

    @property
    def chain_dir(self) -> Path:
        return self.root / "chain"

    @property
    def chain_state(self) -> Path:
        """anvil's dumped state: blocks, receipts and accounts, loaded by the next `up`."""
        return self.chain_dir / "anvil-state.json"

    @property
    def chain_state_next(self) -> Path:
        """Where anvil dumps on exit; renamed over `chain_state` only once it parses (no half-written state)."""
        return self.chain_dir / "anvil-state.next.json"

    @property
    def anvil_accounts(self) -> Path:
        return self.chain_dir / "anvil-accounts.json"

    @property
    def deployment_file(self) -> Path:
        return self.chain_dir / "deployment.json"

    def key_dir(self, name: str) -> Path:
        return self.root / "keys" / name

    def config_file(self, name: str) -> Path:
        return self.root / "config" / f"{name}.toml"

    def data_dir(self, name: str) -> Path:
        return self.root / "data" / name

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def port_file(self, name: str) -> Path:
        return self.data_dir(name) / "http.port"

    @property
    def maddrs_file(self) -> Path:
        return self.data_dir("coordinator") / "maddrs.txt"

    def ensure(self) -> None:
        for directory in (self.root, self.chain_dir, self.root / "keys", self.root / "config", self.root / "logs"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def password(self) -> str:
        """The devnet's key password: made once, kept in the state dir. It guards devnet keys only."""
        path = self.password_file
        if not path.exists():
            self.ensure()
            write_atomic(path, f"devnet-{secrets.token_hex(16)}\n", mode=PRIVATE_MODE, exclusive=True)
        return path.read_text().strip()


@dataclass(frozen=True)
class NodeEntry:
    """One node of the devnet as `status` and the summary name it (addresses are EVM checksum form)."""

    name: str
    address: str
    peer_id: str
    strategy: str
    cheater: str | None = None


@dataclass(frozen=True)
class ChildEntry:
    """A child of `devnet up`, by name and pid (its process group id too), so `down` can clean up after a crash."""

    name: str
    pid: int
    log: str


@dataclass(frozen=True)
class DevnetState:
    """What a second terminal needs to find, inspect, join or stop a running devnet.

    `phase` is "starting", "running" or "stopped"; `up_pid` is the `devnet up` process that owns
    every child (signalling it is how `down` stops the devnet).
    """

    phase: str
    up_pid: int
    rpc_url: str
    chain_id: int
    ledger: str
    token: str
    coordinator_peer_id: str
    bootstrap: tuple[str, ...] = ()
    coordinator_status_url: str = ""
    dashboard_url: str | None = None
    model_dir: str = ""
    profile: str = "tiny"
    nodes: tuple[NodeEntry, ...] = field(default_factory=tuple)
    children: tuple[ChildEntry, ...] = field(default_factory=tuple)
    started_at: float = 0.0

    def save(self, layout: DevnetLayout) -> None:
        payload = {"format": STATE_FORMAT, **asdict(self)}
        write_atomic(layout.state_file, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load(cls, layout: DevnetLayout) -> DevnetState:
        """The saved state; `DevnetError` saying how to start a devnet when there is none."""
        try:
            raw = json.loads(layout.state_file.read_text())
        except FileNotFoundError:
            raise DevnetError(
                f"no devnet in {layout.root} (expected {layout.state_file}); start one with `thinkmesh devnet up`"
            ) from None
        except (OSError, ValueError) as exc:
            raise DevnetError(f"{layout.state_file}: unreadable devnet state ({exc})") from exc
        if raw.pop("format", None) != STATE_FORMAT:
            raise DevnetError(f"{layout.state_file}: expected devnet state format {STATE_FORMAT}")
        try:
            nodes = tuple(NodeEntry(**entry) for entry in raw.pop("nodes", ()))
            children = tuple(ChildEntry(**entry) for entry in raw.pop("children", ()))
            raw["bootstrap"] = tuple(raw.get("bootstrap", ()))
            return cls(nodes=nodes, children=children, **raw)
        except TypeError as exc:
            raise DevnetError(f"{layout.state_file}: malformed devnet state ({exc})") from exc
