"""`thinkmesh node doctor`: each broken part is one FAIL line naming what is wrong and its fix,
against real parts (hivemind's p2pd, anvil, a deployed ledger, real sockets)."""

from __future__ import annotations

import socket

import pytest

from tests.node.mesh_parts import anvil_ledger, closed_port
from thinkmesh.devnet import configs
from thinkmesh.protocol.cli.main import main
from thinkmesh.node.config import ChainConfig, NodeConfig
from thinkmesh.node.ops.doctor import check_device, check_disk, check_p2pd, check_ports
from thinkmesh.node.ops.doctor_chain import check_registration, check_rpc
from thinkmesh.protocol.keys.keystore import create_keys

PASSWORD = "doctor-test-password"


@pytest.fixture(scope="module")
def ledger():
    yield from anvil_ledger()


def test_a_missing_p2pd_fails_with_its_fix(tmp_path):
    check = check_p2pd(tmp_path / "no-such-p2pd")
    assert check.failed and "no binary at" in check.detail
    assert "hivemind" in check.line() and "— fix:" in check.line()


@pytest.mark.timeout(30)
def test_a_p2pd_that_dies_shows_its_stderr(tmp_path):
    broken = tmp_path / "p2pd"
    broken.write_text("#!/bin/sh\necho 'listen: address already in use' >&2\nexit 3\n")
    broken.chmod(0o755)
    check = check_p2pd(broken, timeout_s=10)
    assert check.failed and "exited with code 3" in check.detail and "address already in use" in check.detail


@pytest.mark.timeout(30)
def test_the_bundled_p2pd_starts():
    check = check_p2pd()
    assert not check.failed and "Peer ID:" in check.detail, check.line()


def test_a_port_in_use_fails_and_port_zero_passes():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        taken, free, anything = check_ports([("127.0.0.1", busy, "[network] host_maddrs"),
                                             ("127.0.0.1", closed_port(), "[network] host_maddrs"),
                                             ("127.0.0.1", 0, "[observability] http_port")])
    assert taken.failed and str(busy) in taken.detail and "host_maddrs" in taken.fix
    assert not free.failed and not anything.failed


def test_a_cuda_device_must_exist_and_the_disk_hold_the_model(tmp_path):
    import torch

    cuda = check_device("cuda", model_bytes=1024)
    if torch.cuda.is_available():
        assert not cuda.failed and "GiB free" in cuda.detail, cuda.line()
    else:
        assert cuda.failed and "no CUDA device" in cuda.detail and 'device = "cpu"' in cuda.fix
    assert not check_device("cpu", model_bytes=1024).failed
    assert not check_disk(tmp_path / "data" / "node", model_bytes=1024).failed  # the nearest existing parent
    too_big = check_disk(tmp_path, model_bytes=1 << 60)
    assert too_big.failed and "data_dir" in too_big.fix


def write_config(tmp_path, **values):
    """A node config of `values` over the doctor's minimum, written as its TOML file."""
    config = NodeConfig(run_id="doctor", base_model=tmp_path / "model", data_dir=tmp_path / "data",
                        identity={"key_dir": tmp_path / "keys"}, **values)
    return configs.write_config(config, tmp_path / "node.toml")


@pytest.mark.timeout(60)
def test_doctor_names_a_missing_p2pd_a_closed_bootstrap_port_and_a_wrong_chain_id(ledger, tmp_path, capsys, monkeypatch):
    _chain, deployed = ledger
    keys = create_keys(tmp_path / "keys", PASSWORD, kdf="light")
    monkeypatch.setenv("THINKMESH_KEY_PASSWORD", PASSWORD)
    dead = f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{keys.identity.peer_id}"
    config = write_config(tmp_path, chain_id=5, network={"initial_peers": [dead]})

    code = main(["node", "doctor", "--config", str(config), "--rpc", deployed.rpc_url, "--ledger", deployed.address,
                 "--p2pd", str(tmp_path / "missing-p2pd")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    verdicts = {line.split(":")[0]: line for line in lines if line[:4] in ("PASS", "FAIL", "SKIP")}
    assert "PASS python" in verdicts and "PASS torch" in verdicts and "PASS keystore" in verdicts
    assert "no binary at" in verdicts["FAIL p2pd"]
    assert "chain id 31337" in verdicts["FAIL rpc"] and "chain_id = 5" in verdicts["FAIL rpc"]
    bootstrap = next(line for line in lines if line.startswith(f"FAIL bootstrap {dead}"))
    assert "unreachable" in bootstrap and "Connection refused" in bootstrap
    assert all("— fix: " in line for line in lines if line.startswith("FAIL"))
    assert lines[-1].startswith("node doctor:") and "failed" in lines[-1]


@pytest.mark.timeout(60)
def test_registration_stake_and_identity_against_the_ledger(ledger, tmp_path):
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.chain.ledger import tokens

    chain, deployed = ledger
    snapshot = chain.snapshot()
    try:
        deployment = discover_deployment(deployed.rpc_url, deployed.address)
        admin = LedgerClient.connect(deployed.rpc_url, deployment, private_key=deployed.admin_key)
        node_keys = create_keys(tmp_path / "node-keys", PASSWORD, kdf="light")
        chain.rpc("anvil_setBalance", [node_keys.evm_address, hex(10**18)])
        admin.mint(node_keys.evm_address, tokens(5))
        node = LedgerClient.connect(deployed.rpc_url, deployment, private_key="0x" + node_keys.evm_private_key.hex())
        node.register(node_keys.binding, tokens(3), "grpo", "")
        config = NodeConfig(run_id="doctor", base_model=tmp_path, data_dir=tmp_path, identity={"key_dir": tmp_path},
                            chain=ChainConfig(rpc_url=deployed.rpc_url, ledger=deployed.address, stake="20"))
        (rpc, ledger_check), found, _listed = check_rpc(config)
        assert not rpc.failed and not ledger_check.failed and found == deployment
        registered = {c.name: c for c in check_registration(config, deployment, node_keys)}
        newcomer = create_keys(tmp_path / "new-keys", PASSWORD, kdf="light")
        (unfunded,) = check_registration(config, deployment, newcomer)
    finally:
        chain.revert(snapshot)
    assert not registered["registration"].failed and "stake 3" in registered["registration"].detail
    assert not registered["identity"].failed and node_keys.identity.peer_id in registered["identity"].detail
    assert unfunded.failed and "not registered" in unfunded.detail and "holds 0 tokens" in unfunded.detail
