"""The devnet's state record, password and `down` for an `up` that is already gone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from thinkmesh.devnet.control import bring_down
from thinkmesh.devnet.layout import ChildEntry, DevnetLayout, DevnetState, NodeEntry
from thinkmesh.devnet.processes import DevnetError, pid_alive


def _state(**changes) -> DevnetState:
    values = dict(phase="running", up_pid=os.getpid(), rpc_url="http://127.0.0.1:8545", chain_id=31337,
                  ledger="0x" + "11" * 20, token="0x" + "22" * 20, coordinator_peer_id="12D3KooWExample",
                  nodes=(NodeEntry("node-1", "0x" + "33" * 20, "12D3KooWNode", "grpo"),
                         NodeEntry("cheater-replay", "0x" + "44" * 20, "12D3KooWBad", "grpo", "replay")))
    return DevnetState(**{**values, **changes})


def test_state_round_trips(tmp_path):
    layout = DevnetLayout(tmp_path)
    layout.ensure()
    state = _state(bootstrap=("/ip4/127.0.0.1/tcp/1/p2p/x",), children=(ChildEntry("anvil", 123, "/l"),))
    state.save(layout)
    assert DevnetState.load(layout) == state


def test_missing_state_says_how_to_start(tmp_path):
    with pytest.raises(DevnetError, match="thinkmesh devnet up"):
        DevnetState.load(DevnetLayout(tmp_path / "nothing"))


def test_password_is_made_once_and_private(tmp_path):
    layout = DevnetLayout(tmp_path / "d")
    first = layout.password()
    assert first == layout.password() and len(first) > 20
    assert layout.password_file.stat().st_mode & 0o077 == 0


def test_down_after_up_died_kills_the_children_it_left(tmp_path):
    layout = DevnetLayout(tmp_path)
    layout.ensure()
    # an orphaned "child": a process in its own group whose command line names thinkmesh
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "thinkmesh"],
                              start_new_session=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        _state(up_pid=dead.pid, children=(ChildEntry("node-1", orphan.pid, "/l"),)).save(layout)
        message = bring_down(layout)
        assert "node-1" in message
        orphan.wait(timeout=10)
        assert not pid_alive(orphan.pid)
        assert DevnetState.load(layout).phase == "stopped"
        assert bring_down(layout) == "the devnet is not running"
    finally:
        if orphan.poll() is None:
            orphan.kill()
