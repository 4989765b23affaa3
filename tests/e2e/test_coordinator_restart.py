"""End to end on loopback: the coordinator is killed (SIGKILL) mid-round and restarted with the
same identity, data dir and listen address; both nodes find it again by themselves, contribute to
the re-run round, and end on the model it committed -- never on a half-written one.

The address must stay the same: a node knows the coordinator only by its bootstrap multiaddrs, and
a restarted coordinator's DHT starts with no peers, so one on a new port is found by nobody."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.polling import wait_for
from tests.e2e.processes import free_port
from tests.e2e.test_mesh import Mesh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = ("grpo", "dapo")



class RestartMesh(Mesh):
    """Two nodes; the coordinator listens on a port the test chooses, so a restart can keep it."""

    def coordinator_config(self, rounds: int, deadline_s: float, port: int = 0) -> Path:
        everyone = {"close_when": len(NODES), "min_peers": len(NODES)}
        return super().coordinator_config(rounds, deadline_s, p2p_port=port, overrides={"round": everyone})

    def start_coordinator(self, rounds: int, deadline_s: float, port: int = 0) -> None:
        self.start("coordinator", ["-m", "thinkmesh.protocol.cli.main", "coordinator", "run", "--config",
                                   str(self.coordinator_config(rounds, deadline_s, port))])


@pytest.mark.timeout(240)
def test_nodes_rejoin_a_coordinator_killed_mid_round(tmp_path):
    mesh = RestartMesh(tmp_path)
    port = free_port()
    try:
        mesh.start_coordinator(rounds=3, deadline_s=90, port=port)
        wait_for(lambda: (tmp_path / "coordinator.maddrs").exists(), 90, "the coordinator's multiaddrs")
        for name, compression in zip(NODES, ("uniform8", "fp16")):
            mesh.start_node(name, compression)
        peers = {mesh.keys[name].identity.peer_id for name in NODES}

        first = wait_for(lambda: (s := mesh.status("coordinator")) and len(s["rounds"]) >= 1 and s, 150,
                         "round 1 to close")
        committed = first["rounds"][0]
        assert committed["model_version_after"] == 1
        # Kill it while round 2 is open (announced, collecting): that round's work is lost.
        wait_for(lambda: (s := mesh.status("coordinator")) and s["open_round"]
                 and s["open_round"]["round_id"] == 2, 60, "round 2 to open")
        mesh.kill("coordinator")
        for stale in ("coordinator.maddrs", "coordinator.port"):  # so what is read next is the new process's
            (tmp_path / stale).unlink()
        # As if it had died while writing the next checkpoint: a torn temp file beside the committed one.
        (tmp_path / "coordinator" / ".checkpoint.pt.tmp-1").write_bytes(b"PK\x03\x04 torn checkpoint")

        mesh.start_coordinator(rounds=3, deadline_s=90, port=port)
        restarted = wait_for(lambda: mesh.status("coordinator"), 90, "the restarted coordinator's status")
        assert restarted["model_hash"] == committed["model_hash_after"]  # the committed head, served
        final = wait_for(lambda: (s := mesh.status("coordinator")) and s["phase"] == "done" and s, 180,
                         "the restarted coordinator to finish round 3")
        rounds = final["rounds"]
        # It resumed from the committed version 1 and re-ran round 2: no half-made version 2 served.
        assert [(r["round_id"], r["model_version_before"]) for r in rounds] == [(1, 0), (2, 1), (3, 2)]
        assert rounds[1]["model_hash_before"] == committed["model_hash_after"]
        for record in rounds[1:]:
            assert {c["peer_id"] for c in record["contributors"]} == peers, record

        wait_for(lambda: all((s := mesh.status(n)) and s["model_hash"] == final["model_hash"] for n in NODES),
                 60, "every node to hold the restarted coordinator's final model")
        for name in NODES:
            status = mesh.status(name)
            assert status["model_version"] == 3
            assert {h["round_id"] for h in status["history"]} >= {2, 3}
    except AssertionError:
        for name in ("coordinator", *NODES):
            if (tmp_path / f"{name}.log").exists():
                print(f"===== {name} =====\n{mesh.tail(name)}")
        raise
    finally:
        mesh.stop_all()
