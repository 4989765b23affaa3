"""`thinkmesh devnet join`: add your own node to a running devnet, from another terminal.

It plays the part of a newcomer's wallet and faucet: makes (or opens) the node's keys, sends the
account gas and reward tokens from the devnet's faucet, registers it with a stake, reads the
bootstrap multiaddrs from the ledger (as a node on a real network would), writes a node config,
and then becomes `thinkmesh node run --config FILE` in the foreground. The config it writes is the
whole recipe for joining by hand, which it prints first.

The node counts in the devnet's rounds like its own nodes (a round waits for every node expected
in it: coordinator/work/round_close.py), and `devnet down` stops it too: before it becomes the node,
`join` records its pid in the state dir (`control.record_joined`). With `--key-dir`, the key
password comes from THINKMESH_KEY_PASSWORD, which the node keeps to itself: the DHT process and
p2pd it starts get an environment without it (protocol/runtime/process_lifecycle.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.devnet import configs, provision
from thinkmesh.devnet.chain import DevChain, read_dev_accounts
from thinkmesh.devnet.layout import DevnetLayout, DevnetState
from thinkmesh.devnet.processes import DevnetError, pid_alive
from thinkmesh.devnet.profiles import STRATEGY_CYCLE, profile_named
from thinkmesh.devnet.up import UpOptions, round_plan


@dataclass(frozen=True)
class JoinPlan:
    """What `join` prepared: the node's config file and account, and the command that runs it."""

    name: str
    address: str
    peer_id: str
    config_file: Path
    registered_now: bool

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "thinkmesh.protocol.cli.main", "node", "run", "--config", str(self.config_file)]


def prepare_join(layout: DevnetLayout, name: str, strategy: str, key_dir: Path | None = None) -> JoinPlan:
    """Funds, registers and configures node `name`; with `key_dir`, uses those keys (THINKMESH_KEY_PASSWORD)."""
    from thinkmesh.protocol.chain.client import LedgerClient
    from thinkmesh.protocol.keys.keystore import resolve_password, unlock_keys
    from thinkmesh.protocol.chain.ledger import Deployment

    if strategy not in STRATEGY_CYCLE:
        raise DevnetError(f"--strategy: expected one of {', '.join(STRATEGY_CYCLE)}, got {strategy!r}")
    state = DevnetState.load(layout)
    if state.phase != "running" or not pid_alive(state.up_pid):
        raise DevnetError(f"the devnet in {layout.root} is not running; start it with `thinkmesh devnet up`")
    if any(node.name == name for node in state.nodes):
        raise DevnetError(f"--name {name!r} is one of the devnet's own nodes; choose another name")
    chain = DevChain(state.rpc_url, state.chain_id, read_dev_accounts(layout.anvil_accounts), resumed=True)
    deployment = Deployment.load(layout.deployment_file)
    if key_dir is None:
        keys = provision.ensure_keys(layout, name)
        key_dir, password_file = layout.key_dir(name), layout.password_file
    else:
        keys = unlock_keys(key_dir, resolve_password(None))
        password_file = None
    registration = provision.ensure_registered(chain, deployment, keys, strategy)
    bootstrap = LedgerClient.connect(chain.rpc_url, deployment).bootstrap_peers() or list(state.bootstrap)
    if not bootstrap:
        raise DevnetError("the ledger lists no bootstrap peer yet; is the coordinator up? (`thinkmesh devnet status`)")
    plan = round_plan(_options_like(state), node_count=len(state.nodes), first_round=1)
    endpoint = configs.ChainEndpoint(chain.rpc_url, deployment.ledger, layout.deployment_file)
    config = configs.node_config(
        coordinator_peer_id=state.coordinator_peer_id, bootstrap=bootstrap, base_model=Path(state.model_dir),
        data_dir=layout.data_dir(name), key_dir=key_dir, password_file=password_file, strategy=strategy,
        port_file=layout.port_file(name), plan=plan, chain=endpoint, console=True,
    )  # fmt: skip
    path = configs.write_config(config, layout.config_file(name))
    return JoinPlan(name, keys.evm_address, keys.identity.peer_id, path, registration.sent)


def describe(plan: JoinPlan, state: DevnetState) -> str:
    return "\n".join([
        f"joining the devnet as {plan.name}: account {plan.address} "
        f"({'registered now' if plan.registered_now else 'already registered'}), peer {plan.peer_id}",
        f"  RPC {state.rpc_url}   ledger {state.ledger}",
        f"  config {plan.config_file} (bootstrap, model, keys: everything a node needs)",
        f"  running: thinkmesh node run --config {plan.config_file}",
        "  it contributes from the next round on; Ctrl-C stops it (its stake stays registered)",
    ])  # fmt: skip


def run_in_foreground(plan: JoinPlan, layout: DevnetLayout) -> None:
    """Replaces this process with the node daemon (so Ctrl-C and its exit code are the node's own),
    recorded first as a joined node of `layout`'s devnet (the pid survives the exec)."""
    from thinkmesh.devnet.control import record_joined

    record_joined(layout, plan.name)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, plan.argv)


def _options_like(state: DevnetState) -> UpOptions:
    return UpOptions(state_dir=Path("."), cache_dir=Path("."), profile=profile_named(state.profile))
