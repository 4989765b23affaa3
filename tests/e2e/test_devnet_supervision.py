"""End to end, as a user runs it: `thinkmesh devnet up --nodes 3`, then `thinkmesh devnet join`
from another terminal. From the round after the join, every round waits for all four nodes and
accepts them: none is refused as late. Then the coordinator's DHT process and one node's are
killed with SIGKILL in the middle of a round: within one round deadline the network closes rounds
again, with all four nodes. `devnet down` leaves no process behind, the joined node's included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.polling import wait_for
from tests.e2e.test_devnet import ENV, MODEL_ARGS, free_base_port, logs_of, running_state, thinkmesh
from tests.e2e.test_mesh import get_status

from thinkmesh.devnet.layout import DevnetLayout
from thinkmesh.devnet.monitor import fetch_json
from thinkmesh.devnet.processes import alive, descendants
from thinkmesh.devnet.profiles import profile_named

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEADLINE_S = profile_named("micro").deadline_s
NODES = ("node-1", "node-2", "node-3")
GUEST = "guest"


@pytest.mark.timeout(480)
def test_every_node_counts_in_every_round_and_a_killed_dht_process_is_survived(tmp_path, model_cache):
    state_dir = tmp_path / "devnet"
    layout = DevnetLayout(state_dir)
    up_log, join_log = open(tmp_path / "up.log", "wb"), open(tmp_path / "join.log", "wb")
    up = subprocess.Popen(
        thinkmesh("devnet", "up", "--nodes", "3", "--no-dashboard", "--base-port", str(free_base_port()),
                  "--state-dir", str(state_dir), "--cache-dir", str(model_cache), *MODEL_ARGS),
        env=ENV, stdout=up_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    join = None
    try:
        state = wait_for(lambda: up.poll() is None and running_state(layout) or (up.poll() is not None and "exited"),
                         300, "the devnet to run")
        assert state != "exited", (tmp_path / "up.log").read_text()[-4000:]
        coordinator = lambda: fetch_json(state.coordinator_status_url)  # noqa: E731
        wait_for(lambda: (s := coordinator()) and s["rounds"], 180, "the first round to close")

        # `devnet join` in another terminal: it becomes the node, in the foreground.
        join = subprocess.Popen(thinkmesh("devnet", "join", "--state-dir", str(state_dir), "--strategy", "rloo"),
                                env=ENV, stdout=join_log, stderr=subprocess.STDOUT, start_new_session=True)
        guest = wait_for(lambda: get_status(layout.port_file(GUEST)), 180, "the joined node to run")
        peers = {node.peer_id for node in state.nodes} | {guest["peer_id"]}
        after_join = coordinator()["round_id"] + 1  # the first round announced after the node joined
        _assert_rounds_take_everyone(layout, coordinator, peers, after_join, count=2)

        # SIGKILL to the coordinator's DHT process and to node-1's, while a round is open.
        open_round = wait_for(lambda: (s := coordinator()) and s["open_round"] and s, 120, "a round to be open")
        node = get_status(layout.port_file("node-1"))
        killed = {"coordinator": open_round["p2p"]["dht_pid"], "node-1": node["p2p"]["dht_pid"]}
        roles = {child.name: child.pid for child in _state(layout).children}
        for pid in killed.values():
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        interrupted = open_round["open_round"]["round_id"]
        wait_for(lambda: _closed(coordinator(), interrupted), DEADLINE_S + 15, "a round to close within one deadline")
        assert time.monotonic() - killed_at <= DEADLINE_S + 15
        _assert_rounds_take_everyone(layout, coordinator, peers, interrupted + 1, count=1)
        for name, pid in killed.items():
            status = coordinator() if name == "coordinator" else get_status(layout.port_file(name))
            assert status["p2p"]["restarts"] == 1, status["p2p"]
            assert status["p2p"]["last_cause"] == f"the hivemind DHT process (pid {pid}) was killed by SIGKILL"
            assert status["p2p"]["dht_pid"] != pid
        assert {c.name: c.pid for c in _state(layout).children} == roles  # restarted in place, not by devnet

        # `devnet down` from a third terminal: it stops `up`'s children and the joined node.
        everything = {up.pid, join.pid, *descendants(up.pid), *descendants(join.pid)}
        down = subprocess.run(thinkmesh("devnet", "down", "--state-dir", str(state_dir)), env=ENV,
                              capture_output=True, text=True, timeout=150)
        assert down.returncode == 0, down.stderr
        assert f"stopped the joined node(s) {GUEST}" in down.stdout
        assert up.wait(timeout=60) == 0 and join.wait(timeout=30) == 0
        wait_for(lambda: not alive(everything), 15, "every devnet process to be gone")
        assert not _processes_mentioning(state_dir)
    except Exception:
        print((tmp_path / "up.log").read_text(errors="replace")[-3000:])
        print((tmp_path / "join.log").read_text(errors="replace")[-3000:])
        print(logs_of(layout))
        raise
    finally:
        for proc in (join, up):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        subprocess.run(thinkmesh("devnet", "down", "--state-dir", str(state_dir)), env=ENV, capture_output=True,
                       timeout=150)
        up_log.close()
        join_log.close()


def _assert_rounds_take_everyone(layout: DevnetLayout, coordinator, peers: set[str], first: int, count: int) -> None:
    """Rounds first..first+count-1 each accepted every peer and closed as soon as all had arrived,
    and every node's own receipt for each of them says ok (no `late`, no work left unsent)."""
    wanted = range(first, first + count)
    status = wait_for(lambda: (s := coordinator()) and all(_closed(s, r) for r in wanted) and s,
                      DEADLINE_S * count + 120, f"rounds {first}..{first + count - 1} to close")
    for record in (r for r in status["rounds"] if r["round_id"] in wanted):
        assert {c["peer_id"] for c in record["contributors"]} == peers, record
        assert record["closed_by"] == "all-arrived" and set(record["expected"]) == peers, record
        assert "late" not in record["refusals_by_reason"], record  # (a retried upload's copy may be refused)
    for name in (*NODES, GUEST):
        history = {h["round_id"]: h["reason"] for h in get_status(layout.port_file(name))["history"]}
        assert [history.get(r) for r in wanted] == ["ok"] * count, (name, history)


def _closed(status: dict | None, round_id: int) -> bool:
    return bool(status) and any(r["round_id"] == round_id for r in status["rounds"])


def _state(layout: DevnetLayout):
    from thinkmesh.devnet.layout import DevnetState

    return DevnetState.load(layout)


def _processes_mentioning(path: Path) -> list[str]:
    """Live processes whose command line names `path` (p2pd, a DHT process, a node, anvil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in command and alive([int(entry.name)]):
                found.append(f"{entry.name}: {command[:200]}")
    return found
