"""`thinkmesh devnet status` and `thinkmesh devnet down`, from any terminal, through the state file.

`down` asks the `up` process to stop (SIGTERM), so the one process that started the children is
the one that stops them, in order, and saves the chain. If that process is gone (killed with
SIGKILL, a closed laptop lid), `down` ends the children it left behind, by the process group ids
the state file recorded, after checking each pid still runs a devnet command.

Nodes added with `devnet join` run in their own terminals, not under `up`: each records itself in
`<state-dir>/joined/<name>.json` (pid and kernel start time) before it becomes the node, and both
`up`'s stop and `down` end them (`stop_joined_nodes`), with whatever they started.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from thinkmesh.devnet.layout import DevnetLayout, DevnetState, NodeEntry
from thinkmesh.devnet.monitor import fetch_json
from thinkmesh.devnet.processes import DevnetError, pid_alive, process_start_time, stop_process_tree
from thinkmesh.protocol.runtime.atomic_files import write_atomic

DOWN_TIMEOUT_S = 90.0
JOINED_STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class DevnetStatus:
    """A devnet as seen from outside: its saved state, whether `up` still runs, the coordinator's view."""

    state: DevnetState
    running: bool
    coordinator: dict | None

    def lines(self) -> list[str]:
        state = self.state
        phase = state.phase if self.running else ("stopped" if state.phase == "stopped" else "dead (run `down`)")
        lines = [f"devnet: {phase}" + (f" (pid {state.up_pid})" if self.running else "")]
        lines += [f"  RPC          {state.rpc_url}", f"  ledger       {state.ledger}",
                  f"  dashboard    {state.dashboard_url or '-'}"]
        if self.coordinator:
            c = self.coordinator
            closed = c.get("rounds", [])
            last = closed[-1] if closed else None
            lines.append(f"  coordinator  {c.get('phase')}, round {c.get('round_id')}, model v{c.get('model_version')}, "
                         f"{len(closed)} round(s) closed" + (f", last by {last.get('closed_by')} with "
                                                               f"{len(last.get('contributors', []))} accepted" if last else ""))
        for node in state.nodes:
            lines.append(f"  {node.name:<24} {node.strategy:<8} {node.address}" + (f"  cheats: {node.cheater}" if node.cheater else ""))
        return lines


def read_status(layout: DevnetLayout) -> DevnetStatus:
    state = DevnetState.load(layout)
    running = state.phase != "stopped" and pid_alive(state.up_pid)
    coordinator = fetch_json(state.coordinator_status_url) if running and state.coordinator_status_url else None
    return DevnetStatus(state, running, coordinator)


def chain_summary(layout: DevnetLayout, state: DevnetState):
    """The ledger's per-node summary (a `DevnetSummary`), or None when the chain is not reachable."""
    from thinkmesh.devnet.summary import read_summary
    from thinkmesh.protocol.chain.client import LedgerClient
    from thinkmesh.protocol.chain.errors import ChainError
    from thinkmesh.protocol.chain.ledger import Deployment

    deployment = Deployment.load(layout.deployment_file)
    try:
        client = LedgerClient.connect(state.rpc_url, deployment, timeout_s=3.0)
        return read_summary(client, (*state.nodes, *joined_nodes(client, state)), rounds=0)
    except ChainError:
        return None


def joined_nodes(client, state: DevnetState) -> list[NodeEntry]:
    """Nodes registered on the ledger that the devnet did not start (`devnet join`, or anyone's)."""
    import base58

    own = {node.address for node in state.nodes}
    return [
        NodeEntry("joined", registration.node, base58.b58encode(registration.peer_id).decode(), registration.strategy)
        for registration in client.events.registrations()
        if registration.node not in own
    ]


def joined_dir(layout: DevnetLayout) -> Path:
    return layout.root / "joined"


def record_joined(layout: DevnetLayout, name: str, pid: int | None = None) -> Path:
    """Notes that process `pid` (default: this one, about to become the node) is joined node `name`."""
    pid = os.getpid() if pid is None else pid
    directory = joined_dir(layout)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.json"
    return write_atomic(path, json.dumps({"name": name, "pid": pid, "started": process_start_time(pid)}) + "\n")


def stop_joined_nodes(layout: DevnetLayout, grace_s: float = JOINED_STOP_GRACE_S) -> list[str]:
    """Ends every node `devnet join` started for this devnet (SIGTERM, then SIGKILL to it and its
    DHT process and p2pd after `grace_s`), together; returns the names of those that ran."""
    import threading

    stopped: list[str] = []
    threads = []
    for path in sorted(joined_dir(layout).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            name, pid, started = str(record["name"]), int(record["pid"]), record.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue

        def stop(name=name, pid=pid, started=started, path=path) -> None:
            if stop_process_tree(pid, grace_s, started=started):
                stopped.append(name)
            path.unlink(missing_ok=True)

        threads.append(threading.Thread(target=stop, name=f"stop {name}"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(stopped)


def bring_down(layout: DevnetLayout, timeout_s: float = DOWN_TIMEOUT_S) -> str:
    """Stops the devnet of `layout` and the nodes joined to it; returns what it did, in words."""
    state = DevnetState.load(layout)
    joined = stop_joined_nodes(layout)
    also = f"; stopped the joined node(s) {', '.join(joined)}" if joined else ""
    if pid_alive(state.up_pid) and state.phase != "stopped":
        os.kill(state.up_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(state.up_pid) and not _reaped(state.up_pid):
            if time.monotonic() > deadline:
                raise DevnetError(f"`devnet up` (pid {state.up_pid}) did not stop within {timeout_s:.0f}s; "
                                  f"its children are listed in {layout.state_file}")
            time.sleep(0.2)  # another process's exit offers no event to wait on
        return f"stopped the devnet (pid {state.up_pid}); chain state kept in {layout.chain_dir}{also}"
    leftovers = [child for child in state.children if pid_alive(child.pid) and _is_devnet_process(child.pid)]
    for child in leftovers:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if state.phase != "stopped":
        replace(state, phase="stopped").save(layout)
    if leftovers:
        return f"`devnet up` was gone; killed what it left running: {', '.join(c.name for c in leftovers)}{also}"
    return f"the devnet is not running{also}"


def _reaped(pid: int) -> bool:
    """True once `pid` is a zombie (it exited; its parent, a shell, has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_devnet_process(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc (not Linux): trust the recorded pid
    return b"thinkmesh" in command or b"anvil" in command
