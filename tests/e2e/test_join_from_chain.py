"""End to end: a node joins from the chain alone. Its config names no bootstrap peer and no
coordinator; `thinkmesh node run --rpc URL --ledger ADDRESS` reads the ledger's bootstrap list
(on anvil), where a dead multiaddr sits before the coordinator's live ones, drops the dead one
with its reason, and contributes to a round of a real coordinator process over real p2pd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.models import boost_eos
from tests.e2e.polling import wait_for
from tests.e2e.processes import stop_groups
from tests.e2e.test_mesh import get_status
from tests.node.mesh_parts import anvil_ledger, closed_port
from thinkmesh.devnet import configs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "join-test-password"


@pytest.fixture
def ledger():
    yield from anvil_ledger()


PLAN = configs.RoundPlan(rounds=1, deadline_s=60, close_when=1, prompts_per_node=2, min_peers=1, eval_prompts=2,
                         eval_max_new_tokens=8, group_size=4, max_new_tokens=8)


def coordinator_config(root: Path, base: Path) -> Path:
    return configs.write_config(configs.coordinator_config(
        base_model=base, data_dir=root / "coordinator", key_dir=root / "keys" / "coordinator", password_file=None,
        p2p_port=None, port_file=root / "coordinator.port", maddrs_file=root / "coordinator.maddrs", plan=PLAN,
        chain=None, run_id="join"), root / "coordinator.toml")


def node_config(root: Path, base: Path, rpc_url: str) -> Path:
    """No [network] initial_peers, no coordinator_peer_id, no ledger: `--rpc` and `--ledger` fill in the rest."""
    return configs.write_config(configs.node_config(
        coordinator_peer_id=None, bootstrap=[], base_model=base, data_dir=root / "node", key_dir=root / "keys" / "node",
        password_file=None, strategy="grpo", port_file=root / "node.port", plan=PLAN, chain=None, run_id="join",
        overrides={"chain": {"rpc_url": rpc_url, "auto_register": False}}), root / "node.toml")


@pytest.mark.timeout(240)
def test_a_node_joins_from_the_ledger_past_a_dead_bootstrap_peer(ledger, tmp_path):
    from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.keys.keystore import create_keys

    _chain, deployed = ledger
    base = tmp_path / "base-model"
    init_model_dir(base, TinyModelSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                       intermediate_size=128, max_positions=512))
    boost_eos(base)
    keys = {name: create_keys(tmp_path / "keys" / name, PASSWORD, kdf="light") for name in ("coordinator", "node")}
    env = dict(os.environ, THINKMESH_KEY_PASSWORD=PASSWORD, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, argv: list[str]) -> None:
        log = open(tmp_path / f"{name}.log", "ab")
        procs[name] = subprocess.Popen([sys.executable, "-m", "thinkmesh.protocol.cli.main", *argv], env=env, stdout=log,
                                       stderr=log, start_new_session=True, cwd=tmp_path)

    try:
        start("coordinator", ["coordinator", "run", "--config", str(coordinator_config(tmp_path, base))])
        maddrs_file = tmp_path / "coordinator.maddrs"
        wait_for(maddrs_file.exists, 120, "the coordinator's multiaddrs")
        live = [m for m in maddrs_file.read_text().split() if m]
        dead = f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{keys['node'].identity.peer_id}"
        admin = LedgerClient.connect(deployed.rpc_url, discover_deployment(deployed.rpc_url, deployed.address),
                                     private_key=deployed.admin_key)
        for multiaddr in (dead, *live):  # the deployer holds the coordinator role
            admin.add_bootstrap_peer(multiaddr)

        start("node", ["node", "run", "--config", str(node_config(tmp_path, base, deployed.rpc_url)),
                       "--rpc", deployed.rpc_url, "--ledger", deployed.address])
        final = wait_for(lambda: (s := get_status(tmp_path / "coordinator.port")) and s["phase"] == "done" and s,
                         150, "the round to close")
        (round_one,) = final["rounds"]
        assert [c["peer_id"] for c in round_one["contributors"]] == [keys["node"].identity.peer_id], round_one
        node_log = (tmp_path / "node.log").read_text(errors="replace")
        assert f"bootstrap peer {dead}: FAILED (unreachable)" in node_log
        assert f"coordinator {keys['coordinator'].identity.peer_id}" in node_log
        status = get_status(tmp_path / "node.port")
        assert status is not None and status["counters"]["contributions_accepted"] == 1
    except AssertionError:
        for name in procs:
            print(f"===== {name} =====\n{(tmp_path / f'{name}.log').read_text(errors='replace')[-3000:]}")
        raise
    finally:
        stop_groups(procs)
