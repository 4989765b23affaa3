"""End to end on loopback: a coordinator and three nodes (three strategies) as real processes,
talking through real p2pd daemons, train a tiny model for three rounds. One node is killed
mid-round and rejoins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.models import boost_eos
from tests.e2e.polling import wait_for
from tests.e2e.processes import stop_groups
from thinkmesh.devnet.configs import RoundPlan, coordinator_config, node_config, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "mesh-test-password"
STRATEGIES = ("grpo", "dapo", "gspo")
COMPRESSIONS = ("uniform8", "fp16", "blockwise8")



def get_status(port_file: Path) -> dict | None:
    try:
        port = int(port_file.read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def get_metrics(port_file: Path) -> str:
    port = int(port_file.read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


class Mesh:
    """Config files, keys and processes of one loopback mesh under `root`."""

    def __init__(self, root: Path):
        from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir
        from thinkmesh.protocol.keys.keystore import create_keys

        self.root = root
        self.base = root / "base-model"
        init_model_dir(self.base, TinyModelSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                                intermediate_size=128, max_positions=512))
        boost_eos(self.base)
        self.keys = {name: create_keys(root / "keys" / name, PASSWORD, kdf="light")
                     for name in ("coordinator", *STRATEGIES)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, THINKMESH_KEY_PASSWORD=PASSWORD, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

    def plan(self, rounds: int, deadline_s: float) -> RoundPlan:
        return RoundPlan(rounds=rounds, deadline_s=deadline_s, close_when=3, prompts_per_node=2, min_peers=3,
                         eval_prompts=4, eval_max_new_tokens=16, group_size=4, max_new_tokens=12)

    def coordinator_config(self, rounds: int, deadline_s: float, *, p2p_port: int | None = None,
                           overrides: dict | None = None) -> Path:
        """`p2p_port` None: any free port; `overrides` as for devnet/configs.py's builder."""
        return write_config(coordinator_config(
            base_model=self.base, data_dir=self.root / "coordinator", key_dir=self.root / "keys" / "coordinator",
            password_file=None, p2p_port=p2p_port, port_file=self.root / "coordinator.port",
            maddrs_file=self.root / "coordinator.maddrs", plan=self.plan(rounds, deadline_s), chain=None,
            run_id="e2e", overrides=overrides), self.root / "coordinator.toml")

    def node_config(self, name: str, compression: str) -> Path:
        maddrs = [m for m in (self.root / "coordinator.maddrs").read_text().split() if m]
        return write_config(node_config(
            coordinator_peer_id=self.keys["coordinator"].identity.peer_id, bootstrap=maddrs, base_model=self.base,
            data_dir=self.root / f"node-{name}", key_dir=self.root / "keys" / name, password_file=None,
            strategy=name, port_file=self.root / f"node-{name}.port", plan=self.plan(0, 60.0), chain=None,  # the node reads the group and token sizes
            run_id="e2e", overrides={"strategy": {"overlong_buffer": 11, "dynamic_sampling": False},
                                     "round": {"compression": compression}}), self.root / f"node-{name}.toml")

    def start(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, *argv], env=self.env, stdout=log, stderr=log,
                                            start_new_session=True, cwd=self.root)

    def start_coordinator(self, rounds: int, deadline_s: float) -> None:
        self.start("coordinator", ["-m", "thinkmesh.protocol.cli.main", "coordinator", "run", "--config",
                                   str(self.coordinator_config(rounds, deadline_s))])

    def start_node(self, name: str, compression: str) -> None:
        self.start(name, ["-m", "thinkmesh.protocol.cli.main", "node", "run", "--config",
                          str(self.node_config(name, compression))])

    def kill(self, name: str) -> None:
        """SIGKILL to the whole process group: the daemon, its DHT process and their p2pd."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        stop_groups(self.procs, grace_s=10)

    def status(self, name: str) -> dict | None:
        return get_status(self.root / (f"{name}.port" if name == "coordinator" else f"node-{name}.port"))

    def tail(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.mark.timeout(420)
def test_three_nodes_three_rounds_with_a_node_killed_mid_round(tmp_path):
    mesh = Mesh(tmp_path)
    try:
        mesh.start_coordinator(rounds=3, deadline_s=40)
        wait_for(lambda: (tmp_path / "coordinator.maddrs").exists(), 90, "the coordinator's multiaddrs")
        for name, compression in zip(STRATEGIES, COMPRESSIONS):
            mesh.start_node(name, compression)
        peer = {name: mesh.keys[name].identity.peer_id for name in STRATEGIES}

        # Round 1: everyone contributes. The gspo node is killed the moment its round-1 work is
        # accepted: a round's work takes well under a second here, so waiting for round 1 to close
        # first would race its round-2 upload. The coordinator still expects it in round 2 (it
        # took part in round 1), so round 2 closes at its deadline without it.
        victim = "gspo"
        wait_for(lambda: (s := mesh.status(victim)) and any(h["round_id"] == 1 for h in s["history"]), 180,
                 "the victim's round-1 work to be accepted", poll=0.05)
        mesh.kill(victim)
        first = wait_for(lambda: (s := mesh.status("coordinator")) and len(s["rounds"]) >= 1 and s, 180,
                         "round 1 to close")["rounds"][0]
        assert {c["peer_id"] for c in first["contributors"]} == set(peer.values()), first
        second = wait_for(lambda: (s := mesh.status("coordinator")) and len(s["rounds"]) >= 2 and s, 90,
                          "round 2 to close")["rounds"][1]
        assert second["closed_by"] == "deadline"
        assert peer[victim] not in {c["peer_id"] for c in second["contributors"]}
        assert second["model_version_after"] == second["model_version_before"] + 1

        # The victim rejoins with the same identity, catches up and takes part in round 3.
        mesh.start_node(victim, "blockwise8")
        final = wait_for(lambda: (s := mesh.status("coordinator")) and s["phase"] == "done" and s, 150,
                         "round 3 to close")
        third = final["rounds"][2]
        assert peer[victim] in {c["peer_id"] for c in third["contributors"]}, third

        versions = [(r["model_version_before"], r["model_version_after"]) for r in final["rounds"]]
        assert versions == [(0, 1), (1, 2), (2, 3)]
        assert len({r["model_hash_after"] for r in final["rounds"]}) == 3  # each round made a new model
        included = {c["peer_id"] for r in final["rounds"] for c in r["contributors"]}
        assert included == set(peer.values())
        assert [e["version"] for e in final["evals"]] == [0, 1, 2, 3]

        # Every node ends on the coordinator's model, fetched over p2p and hash-checked.
        wait_for(lambda: all((s := mesh.status(n)) and s["model_hash"] == final["model_hash"] for n in STRATEGIES),
                 60, "every node to hold the final model")
        for name in STRATEGIES:
            status = mesh.status(name)
            assert status["model_version"] == 3
            assert status["counters"]["models_fetched"] >= 1
        metrics = get_metrics(tmp_path / "coordinator.port")
        assert 'thinkmesh_coordinator_model_version{' in metrics and "} 3.0" in metrics
    except AssertionError:
        for name in ("coordinator", *STRATEGIES):
            if (tmp_path / f"{name}.log").exists():
                print(f"===== {name} =====\n{mesh.tail(name)}")
        raise
    finally:
        mesh.stop_all()
