"""`thinkmesh devnet up`: a whole thinkmesh network on this machine, started and stopped as one.

Order of start: anvil (its saved state if any), the ledger (deployed or reused), identities and
their registrations, the coordinator, N nodes with different strategies (plus one cheater if
asked), the dashboard (which looks serving nodes up in the devnet's DHT). Order of stop: dashboard, nodes and the nodes `devnet join` added
together, the coordinator, anvil last (it dumps its state on SIGTERM, and that dump becomes the
next `up`'s chain). Stopping happens on Ctrl-C, on SIGTERM (which is what `devnet down` sends),
after `--rounds R`, or when anvil dies; in every case no child outlives this process.

A role that dies (the coordinator, a node, the dashboard) is reported with its cause and started
again (`ProcessGroup.revive`, a few times at most): the coordinator resumes from its checkpoint and
the nodes find it again. The coordinator closes a round early only once every node expected in
it has arrived (coordinator/work/round_close.py), so the devnet's `close_when` is a floor of one, not a
node count: a node added by `devnet join` counts, and nobody's work is cut off as late.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from thinkmesh.devnet import configs, provision
from thinkmesh.devnet.chain import DevChain, persist_chain_state, require_anvil, start_chain
from thinkmesh.devnet.control import stop_joined_nodes
from thinkmesh.devnet.layout import ChildEntry, DevnetLayout, DevnetState, NodeEntry
from thinkmesh.devnet.model_cache import ensure_model, is_ready, model_path
from thinkmesh.devnet.monitor import RoundWatcher
from thinkmesh.devnet.ports import require_free_ports
from thinkmesh.devnet.processes import (
    DevnetError,
    ManagedProcess,
    ProcessGroup,
    pid_alive,
    stop_together,
    wait_for,
)
from thinkmesh.devnet.profiles import DevnetProfile, strategy_for
from thinkmesh.devnet.summary import DevnetSummary, read_summary

logger = logging.getLogger(__name__)
COORDINATOR_START_TIMEOUT_S = 180.0
SETTLEMENT_WAIT_S = 120.0  # after the coordinator's last round, for its settlements to land
POLL_S = 1.0
NODE_STOP_GRACE_S = 10.0
COORDINATOR_STOP_GRACE_S = 10.0  # its settlement is journaled: a kill mid-send is recovered on restart
CHILD_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class DevnetPorts:
    """Fixed ports from `--base-port P`: anvil P, dashboard P+1, coordinator p2p P+2, coordinator status P+3."""

    anvil: int
    dashboard: int
    coordinator_p2p: int
    coordinator_http: int

    @classmethod
    def from_base(cls, base: int) -> DevnetPorts:
        if not 1024 <= base <= 65535 - 3:
            raise DevnetError(f"--base-port: expected a port in 1024..65532, got {base}")
        return cls(base, base + 1, base + 2, base + 3)

    def named(self, with_dashboard: bool) -> dict[str, int]:
        ports = {"anvil": self.anvil, "coordinator p2p": self.coordinator_p2p, "coordinator status": self.coordinator_http}
        return {**ports, "dashboard": self.dashboard} if with_dashboard else ports


@dataclass(frozen=True)
class UpOptions:
    state_dir: Path
    cache_dir: Path
    profile: DevnetProfile
    nodes: int = 4
    cheater: str | None = None
    rounds: int | None = None  # None: run until stopped
    fresh: bool = False
    base_port: int = 8545
    dashboard: bool = True
    seed: str | None = None  # the rounds' seed text (prompts and sampling streams); None: the coordinator's default


class StopRequested(Exception):
    """Raised in the main thread by SIGINT/SIGTERM so that every exit path runs the same cleanup."""


def _raise_stop(signum, _frame) -> None:
    raise StopRequested(signal.Signals(signum).name)


def run_up(options: UpOptions, say: Callable[[str], None]) -> DevnetSummary | None:
    """Runs the devnet until stopped (or `options.rounds` rounds); returns the chain's summary after `--rounds`."""
    if options.nodes < 1:
        raise DevnetError(f"--nodes: expected at least 1, got {options.nodes}")
    if options.cheater is not None:
        configs.require_cheat_mode(options.cheater)
    layout = DevnetLayout(options.state_dir)
    refuse_if_running(layout)
    require_anvil()
    ports = DevnetPorts.from_base(options.base_port)
    with_dashboard = options.dashboard and dashboard_command_exists()
    require_free_ports(ports.named(with_dashboard))
    if options.fresh and layout.root.exists():
        shutil.rmtree(layout.root)
    layout.ensure()

    recipe = options.profile.recipe
    if not is_ready(model_path(recipe, options.cache_dir)):
        say(f"building the {recipe.name} base model (a cold start of a few minutes on a CPU, once; cached in {options.cache_dir}) ...")
    model = ensure_model(recipe, options.cache_dir, progress=True)
    say(f"model: {model.path} ({'cached' if model.cached else f'built in {model.built_s:.0f}s'})")

    group = ProcessGroup()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    state: DevnetState | None = None
    summary = None
    try:
        chain = start_chain(layout, ports.anvil, group)
        say(f"chain: {chain.rpc_url} ({'resumed from ' + str(layout.chain_state) if chain.resumed else 'new'})")
        coordinator_keys = provision.ensure_keys(layout, "coordinator")
        deployment, reused = provision.deploy_or_reuse(chain, layout, coordinator_keys.evm_address)
        provision.ensure_gas(chain, coordinator_keys.evm_address)
        provision.ensure_pool(chain, deployment)
        say(f"ledger: {deployment.ledger} ({'reused' if reused else 'deployed'}), token: {deployment.token}")
        nodes = register_nodes(layout, chain, deployment, options.nodes, options.cheater)
        endpoint = configs.ChainEndpoint(chain.rpc_url, deployment.ledger, layout.deployment_file)
        state = DevnetState(
            phase="starting", up_pid=os.getpid(), rpc_url=chain.rpc_url, chain_id=chain.chain_id,
            ledger=deployment.ledger, token=deployment.token, coordinator_peer_id=coordinator_keys.identity.peer_id,
            coordinator_status_url=f"http://127.0.0.1:{ports.coordinator_http}/status", model_dir=str(model.path),
            profile=options.profile.recipe.name, nodes=nodes, started_at=time.time(),
        )  # fmt: skip
        _save(state, group, layout)

        first_round = completed_rounds(layout) + 1
        plan = round_plan(options, len(nodes), first_round)
        state = start_roles(group, layout, state, plan, endpoint, ports, with_dashboard,
                            chain=chain, deployment=deployment)
        say(banner(state, layout))

        ledger = _reader(chain, deployment)
        watcher = RoundWatcher(state.coordinator_status_url, first_round, ledger)
        watch(watcher, group, options.rounds, say, layout)
        if options.rounds is not None:
            summary = read_summary(_reader(chain, deployment), nodes, rounds=watcher.done_rounds())
    except StopRequested as stop:
        say(f"stopping the devnet ({stop}) ...")
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        stop_devnet(group, layout, say)
        if state is not None:
            _save(replace(state, phase="stopped"), group, layout)  # pids kept: `down` re-checks none survived
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return summary


def start_roles(
    group: ProcessGroup, layout: DevnetLayout, state: DevnetState, plan: configs.RoundPlan,
    endpoint: configs.ChainEndpoint, ports: DevnetPorts, with_dashboard: bool, *, chain: DevChain,
    deployment,
) -> DevnetState:
    """Writes the configs and starts the coordinator, the nodes and the dashboard; returns the running state."""
    model = Path(state.model_dir)
    coordinator = configs.coordinator_config(
        base_model=model, data_dir=layout.data_dir("coordinator"), key_dir=layout.key_dir("coordinator"),
        password_file=layout.password_file, p2p_port=ports.coordinator_p2p, http_port=ports.coordinator_http,
        port_file=layout.port_file("coordinator"), maddrs_file=layout.maddrs_file, plan=plan, chain=endpoint,
    )  # fmt: skip
    layout.maddrs_file.unlink(missing_ok=True)
    start_role(group, layout, "coordinator",
               ["coordinator", "run", "--config", str(configs.write_config(coordinator, layout.config_file("coordinator")))])
    bootstrap = wait_for(lambda: _read_maddrs(layout.maddrs_file), COORDINATOR_START_TIMEOUT_S,
                         "the coordinator to listen", interval_s=0.3, group=group)
    for node in state.nodes:
        config = configs.node_config(
            coordinator_peer_id=state.coordinator_peer_id, bootstrap=bootstrap, base_model=model,
            data_dir=layout.data_dir(node.name), key_dir=layout.key_dir(node.name), password_file=layout.password_file,
            strategy=node.strategy, port_file=layout.port_file(node.name), plan=plan, chain=endpoint,
        )  # fmt: skip
        path = str(configs.write_config(config, layout.config_file(node.name)))
        start_role(group, layout, node.name, ["node", "run", "--config", path] if node.cheater is None
                   else ["devnet", "node-run", "--config", path, "--cheat", node.cheater])
    dashboard_url = None
    if with_dashboard:
        start_role(group, layout, "dashboard", dashboard_argv(
            rpc_url=chain.rpc_url, deployment=deployment, port=ports.dashboard,
            evidence_dir=layout.data_dir("coordinator") / "evidence", dht_peers=bootstrap,
        ))  # fmt: skip
        dashboard_url = f"http://127.0.0.1:{ports.dashboard}/"
    state = replace(state, phase="running", bootstrap=tuple(bootstrap), dashboard_url=dashboard_url)
    _save(state, group, layout)
    return state


def dashboard_argv(*, rpc_url: str, deployment, port: int, evidence_dir: Path, dht_peers: list[str]) -> list[str]:
    """The dashboard's command line: the ledger from its deployment block, the coordinator's evidence,
    and serving nodes looked up in the devnet's DHT through the coordinator's multiaddrs, so a
    `thinkmesh serve --announce` on the devnet shows up (a lookup that fails leaves the page up)."""
    return ["dashboard", "--rpc", rpc_url, "--ledger", deployment.ledger, "--from-block", str(deployment.block_number),
            "--port", str(port), "--evidence-dir", str(evidence_dir), "--find-servers", "--initial-peers", *dht_peers]


def register_nodes(layout: DevnetLayout, chain: DevChain, deployment, count: int, cheater: str | None) -> tuple[NodeEntry, ...]:
    """Keys, gas, tokens and a stake for `node-1..N` (strategies cycling) and the optional cheater."""
    wanted = [(f"node-{i + 1}", strategy_for(i), None) for i in range(count)]
    if cheater:
        wanted.append((f"cheater-{cheater}", "grpo", cheater))
    entries = []
    for name, strategy, cheat in wanted:
        keys = provision.ensure_keys(layout, name)
        provision.ensure_registered(chain, deployment, keys, strategy)
        entries.append(NodeEntry(name, keys.evm_address, keys.identity.peer_id, strategy, cheat))
    return tuple(entries)


def round_plan(options: UpOptions, node_count: int, first_round: int) -> configs.RoundPlan:
    profile = options.profile
    return configs.RoundPlan(
        rounds=0 if options.rounds is None else first_round - 1 + options.rounds,
        # close_when is the floor of an early close; the coordinator waits for every node expected in the round
        deadline_s=profile.deadline_s, close_when=1, prompts_per_node=profile.prompts_per_node,
        min_peers=node_count, eval_prompts=profile.eval_prompts, eval_max_new_tokens=profile.eval_max_new_tokens,
        group_size=profile.group_size, max_new_tokens=profile.max_new_tokens, task_family=profile.task_family,
        template=profile.recipe.coldstart.template, lr=profile.lr, adapter_rank=profile.adapter_rank,
        seed=options.seed,
    )  # fmt: skip


def completed_rounds(layout: DevnetLayout) -> int:
    """Rounds an earlier `up` already ran: the coordinator's checkpoint says which round comes next."""
    from thinkmesh.coordinator.work.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(layout.data_dir("coordinator"), configs.RUN_ID)
    return 0 if checkpoint is None else checkpoint.next_round - 1


def watch(watcher: RoundWatcher, group: ProcessGroup, rounds: int | None, say: Callable[[str], None],
          layout: DevnetLayout) -> None:
    """Prints progress until `rounds` rounds are done (forever if None). A role that died is said and
    restarted; anvil's death, or a role that keeps dying, ends it with the child's log."""
    finished_at = None
    while True:
        if group.revive(lambda name: name != "anvil", say):
            _save_children(group, layout)
        for line in watcher.poll():
            say(line)
        if rounds is not None and watcher.done_rounds() >= rounds:
            return
        if rounds is not None and watcher.coordinator_finished():
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > SETTLEMENT_WAIT_S:
                raise DevnetError(
                    f"the coordinator finished its rounds but only {watcher.done_rounds()} of {rounds} settled on chain "
                    f"within {SETTLEMENT_WAIT_S:.0f}s; see its log"
                )
        time.sleep(POLL_S)  # the coordinator offers no push channel; its status is polled


def stop_devnet(group: ProcessGroup, layout: DevnetLayout, say: Callable[[str], None]) -> None:
    by_name = {p.name: p for p in group.processes}
    waves = (
        ("nodes", [p for name, p in by_name.items() if name not in ("coordinator", "anvil")], NODE_STOP_GRACE_S),
        ("coordinator", [p for name, p in by_name.items() if name == "coordinator"], COORDINATOR_STOP_GRACE_S),
        ("chain", [p for name, p in by_name.items() if name == "anvil"], NODE_STOP_GRACE_S),
    )
    for what, processes, grace_s in waves:
        started = time.monotonic()
        if what == "nodes":  # `devnet join`'s nodes, beside the devnet's own
            joiner = threading.Thread(target=lambda: say_joined(stop_joined_nodes(layout, grace_s), say))
            joiner.start()
        stop_together(processes, grace_s)
        if what == "nodes":
            joiner.join()
        logger.debug("stopped %s in %.1fs", what, time.monotonic() - started)
    if "anvil" in by_name:
        if persist_chain_state(layout):
            say(f"chain state saved to {layout.chain_state}")
        else:
            say(f"warning: anvil left no readable state dump; the next `up` resumes from the previous save, if any")


def say_joined(names: list[str], say: Callable[[str], None]) -> None:
    if names:
        say(f"stopped the joined node(s) {', '.join(names)}")


def start_role(group: ProcessGroup, layout: DevnetLayout, name: str, argv: list[str]) -> ManagedProcess:
    command = [sys.executable, "-m", "thinkmesh.protocol.cli.main", *argv]
    # Every anvil is chain 31337 with the same dev accounts: account locks stay within this devnet.
    env = {**CHILD_ENV, "THINKMESH_LOCK_DIR": os.environ.get("THINKMESH_LOCK_DIR", str(layout.root / "locks"))}
    process = group.start(ManagedProcess(name, command, layout.log_file(name), env=env))
    _save_children(group, layout)
    return process


def refuse_if_running(layout: DevnetLayout) -> None:
    if not layout.state_file.exists():
        return
    state = DevnetState.load(layout)
    if state.phase != "stopped" and pid_alive(state.up_pid) and state.up_pid != os.getpid():
        raise DevnetError(f"a devnet is already running from {layout.root} (pid {state.up_pid}); "
                          f"`thinkmesh devnet status` shows it, `thinkmesh devnet down` stops it")


def dashboard_command_exists() -> bool:
    from thinkmesh.protocol.cli.main import build_parser

    import argparse

    commands = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return any("dashboard" in action.choices for action in commands)


def banner(state: DevnetState, layout: DevnetLayout) -> str:
    join = "thinkmesh devnet join --strategy rloo"
    if layout.root.resolve() != Path(".thinkmesh/devnet").resolve():
        join += f" --state-dir {layout.root}"
    lines = [
        "", "thinkmesh devnet is up",
        f"  dashboard    {state.dashboard_url or '(not available in this build)'}",
        f"  RPC          {state.rpc_url}  (chain id {state.chain_id})",
        f"  ledger       {state.ledger}",
        f"  token        {state.token}",
        f"  coordinator  {state.coordinator_peer_id}  status {state.coordinator_status_url}",
        f"  bootstrap    {state.bootstrap[0] if state.bootstrap else '-'}",
        "  settlement   on chain, every round",
        "  nodes",
        *(f"    {n.name:<24} {n.strategy:<8} {n.address}" + (f"  CHEATS: {n.cheater}" if n.cheater else "")
          for n in state.nodes),
        f"  logs         {layout.root / 'logs'}",
        "", "Add your own node from another terminal (a funded, registered account is made for it):",
        f"  {join}", "Stop with Ctrl-C here, or `thinkmesh devnet down` from anywhere.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def _reader(chain: DevChain, deployment):
    from thinkmesh.protocol.chain.client import LedgerClient

    return LedgerClient.connect(chain.rpc_url, deployment)


def _read_maddrs(path: Path) -> list[str] | None:
    try:
        maddrs = [line for line in path.read_text().split() if line]
    except OSError:
        return None
    return maddrs or None


def _save(state: DevnetState, group: ProcessGroup, layout: DevnetLayout) -> None:
    children = tuple(ChildEntry(p.name, p.pid, str(p.log_path)) for p in group.processes if p.pid is not None)
    replace(state, children=children).save(layout)


def _save_children(group: ProcessGroup, layout: DevnetLayout) -> None:
    if layout.state_file.exists():
        _save(DevnetState.load(layout), group, layout)
