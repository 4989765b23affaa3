"""End to end, as a user runs it: `thinkmesh devnet up --rounds 2 --json`, then a second `up` that
resumes the same chain, `devnet status` and `devnet down` from another "terminal" (process).

Real anvil, real p2pd, real coordinator and node daemons; the micro model profile with a short
cold start keeps the whole file to a few minutes on two cores. The model is built once per session
in a shared cache directory, as a user's second `up` would find it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.polling import wait_for

from thinkmesh.devnet.layout import DevnetLayout, DevnetState
from thinkmesh.devnet.processes import pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COLDSTART_EXAMPLES = "128"
MODEL_ARGS = ["--model", "micro", "--coldstart-examples", COLDSTART_EXAMPLES]
ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


def thinkmesh(*args: str) -> list[str]:
    return [sys.executable, "-m", "thinkmesh.devnet.cli", *args]


def free_base_port() -> int:
    """A port P with P..P+3 free (the devnet's fixed ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 65000:
            continue
        try:
            for offset in range(4):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise AssertionError("no four consecutive free ports")



def running_state(layout: DevnetLayout) -> DevnetState | None:
    try:
        state = DevnetState.load(layout)
    except Exception:
        return None
    return state if state.phase == "running" else None


def logs_of(layout: DevnetLayout) -> str:
    parts = []
    for log in sorted((layout.root / "logs").glob("*.log")):
        parts.append(f"===== {log.name} =====\n{log.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


@pytest.mark.timeout(900)
def test_up_for_two_rounds_then_resume_status_and_down(tmp_path, model_cache):
    state_dir = tmp_path / "devnet"
    layout = DevnetLayout(state_dir)
    common = ["--state-dir", str(state_dir), "--cache-dir", str(model_cache), *MODEL_ARGS]

    # 1. Two rounds, then a JSON summary read back from the chain as the last stdout line.
    base = free_base_port()
    first = subprocess.run(thinkmesh("devnet", "up", "--nodes", "3", "--rounds", "2", "--json", "--no-dashboard",
                                     "--base-port", str(base), *common),
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, f"{first.stderr[-4000:]}\n{logs_of(layout)}"
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["rounds"] == 2
    nodes = summary["nodes"]
    assert [n["strategy"] for n in nodes] == ["grpo", "dapo", "gspo"]
    assert all(n["cheater"] is False for n in nodes)
    assert len({n["address"] for n in nodes}) == 3
    assert all(n["stake"] > 0 for n in nodes)
    assert "round 1:" in first.stderr and "round 2:" in first.stderr
    assert not pid_alive(DevnetState.load(layout).children[0].pid)
    assert layout.chain_state.is_file()

    # 2. A second `up` resumes the same chain: same ledger, and the events the summary came from.
    base = free_base_port()
    up = subprocess.Popen(thinkmesh("devnet", "up", "--nodes", "3", "--base-port", str(base), *common),
                          env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    try:
        state = wait_for(lambda: up.poll() is None and running_state(layout) or (up.poll() is not None and "exited"),
                         300, "the second devnet to run")
        assert state != "exited", up.stdout.read()[-4000:]
        assert state.ledger == summary["ledger"]
        assert [n.address for n in state.nodes] == [n["address"] for n in nodes]
        _assert_summary_matches_chain(state, layout, summary)

        # 3. `status` from another process sees the running devnet and the chain's record.
        status = subprocess.run(thinkmesh("devnet", "status", "--json", "--state-dir", str(state_dir)),
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout.strip().splitlines()[-1])
        assert report["running"] is True and report["ledger"] == summary["ledger"]
        assert [n["address"] for n in report["chain"]["nodes"]] == [n["address"] for n in nodes]
        if state.dashboard_url:
            with urllib.request.urlopen(state.dashboard_url, timeout=10) as page:
                assert page.status == 200

        # 4. `down` from another process stops `up`, which stops every child and saves the chain.
        children = [child.pid for child in DevnetState.load(layout).children]
        down = subprocess.run(thinkmesh("devnet", "down", "--state-dir", str(state_dir)),
                              env=ENV, capture_output=True, text=True, timeout=150)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0
        assert not [pid for pid in children if pid_alive(pid)]
        assert DevnetState.load(layout).phase == "stopped"
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        subprocess.run(thinkmesh("devnet", "down", "--state-dir", str(state_dir)), env=ENV, capture_output=True,
                       timeout=150)


def _assert_summary_matches_chain(state: DevnetState, layout: DevnetLayout, summary: dict) -> None:
    from thinkmesh.devnet.summary import reward_claims
    from thinkmesh.protocol.chain import LedgerClient
    from thinkmesh.protocol.ledger import Deployment

    client = LedgerClient.connect(state.rpc_url, Deployment.load(layout.deployment_file))
    registered = {registration.node for registration in client.events.registrations()}
    compensations = client.events.compensations()
    slashes = client.events.slashes()
    claims = reward_claims(client)
    for node in summary["nodes"]:
        address = node["address"]
        assert address in registered
        paid = [c for c in compensations if c.node == address and c.round_id <= summary["rounds"]]
        assert node["earned"] == sum(c.payout for c in paid)
        assert node["verified_samples"] == sum(c.verified_samples for c in paid)
        assert node["slashed"] == sum(s.amount for s in slashes if s.node == address and s.round_id <= summary["rounds"])
        assert node["claimed"] == claims.get(address, 0)
    if summary["settled_rounds"]:  # the coordinator settles on chain: someone honest was paid
        assert any(n["earned"] > 0 and n["verified_samples"] > 0 for n in summary["nodes"]), summary


@pytest.mark.timeout(120)
def test_up_names_the_port_in_use(tmp_path, model_cache):
    base = free_base_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 2))
        squatter.listen()
        result = subprocess.run(thinkmesh("devnet", "up", "--state-dir", str(tmp_path / "d"), "--base-port", str(base),
                                          "--cache-dir", str(model_cache), *MODEL_ARGS),
                                env=ENV, capture_output=True, text=True, timeout=100)
    assert result.returncode == 1
    assert f"port(s) in use: coordinator p2p 127.0.0.1:{base + 2}" in result.stderr
    assert "--base-port" in result.stderr


@pytest.mark.timeout(120)
def test_up_without_the_npm_toolchain_says_run_make_install(tmp_path):
    env = dict(ENV, THINKMESH_ANVIL=str(tmp_path / "no-anvil-here"))
    result = subprocess.run(thinkmesh("devnet", "up", "--state-dir", str(tmp_path / "d")), env=env,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 1
    assert "the npm toolchain is missing" in result.stderr and "make install" in result.stderr


@pytest.mark.timeout(60)
def test_status_and_down_without_a_devnet_say_how_to_start_one(tmp_path):
    for command in ("status", "down"):
        result = subprocess.run(thinkmesh("devnet", command, "--state-dir", str(tmp_path / "none")), env=ENV,
                                capture_output=True, text=True, timeout=50)
        assert result.returncode == 1
        assert "thinkmesh devnet up" in result.stderr
