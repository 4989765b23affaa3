"""A node refuses keys the ledger ties to someone else, and a second node on one account, before sending."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contracts.conftest import MIN_STAKE, Actors
from tests.protocol.keys.test_account_lock import hold_in_another_process
from thinkmesh.devnet.anvil import Anvil
from thinkmesh.node.config import ChainConfig, IdentityConfig, NetworkConfig, NodeConfig
from thinkmesh.node.work.daemon import NodeDaemon
from thinkmesh.protocol.chain.errors import AccountInUseError, IdentityMismatchError
from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity
from thinkmesh.protocol.keys.identity_guard import check_identity_owner
from thinkmesh.protocol.keys.keystore import UnlockedKeys
from thinkmesh.protocol.chain.ledger import Deployment, NodeStatus


def keys_of(private_key: str, tag: int) -> UnlockedKeys:
    """A keystore's contents: the Ed25519 identity seeded by `tag`, bound to the account of `private_key`."""
    identity = NodeIdentity.from_seed(bytes([tag]) * 32)
    evm_key = bytes.fromhex(private_key.removeprefix("0x"))
    return UnlockedKeys(identity, evm_key, bind_identity(identity, evm_key))


def node_daemon(tmp_path: Path, anvil: Anvil, deployment: Deployment, keys: UnlockedKeys) -> NodeDaemon:
    deployment_file = tmp_path / "deployment.json"
    deployment.save(deployment_file)
    coordinator = NodeIdentity.from_seed(b"\x77" * 32)
    config = NodeConfig(
        coordinator_peer_id=coordinator.peer_id, base_model=tmp_path, data_dir=tmp_path / "data",
        identity=IdentityConfig(key_dir=tmp_path / "keys"),
        network=NetworkConfig(initial_peers=[f"/ip4/127.0.0.1/tcp/1/p2p/{coordinator.peer_id}"]),
        chain=ChainConfig(rpc_url=anvil.rpc_url, deployment_file=deployment_file, stake="10"),
    )
    return NodeDaemon(config, keys.identity, keys)


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THINKMESH_LOCK_DIR", str(tmp_path / "locks"))


def test_identity_registered_to_another_account_is_refused_naming_both(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, actors: Actors
) -> None:
    actors.alice.register(actors.binding(actors.alice, 1), MIN_STAKE, "grpo", "")
    copied = keys_of(anvil.accounts[2].private_key, 1)  # alice's identity, bound to bob's account
    daemon = node_daemon(tmp_path, anvil, deployment, copied)
    try:
        with pytest.raises(IdentityMismatchError) as refused:
            daemon._ensure_registered()
    finally:
        daemon.account_lock.release()
    message = str(refused.value)
    assert actors.alice.address in message and actors.bob.address in message
    assert copied.identity.peer_id in message
    assert refused.value.registered_account == actors.alice.address
    assert actors.bob.node().status == NodeStatus.NONE, "nothing was sent"


def test_account_registered_with_another_identity_is_refused_naming_both_peer_ids(
    actors: Actors, anvil: Anvil
) -> None:
    actors.alice.register(actors.binding(actors.alice, 1), MIN_STAKE, "grpo", "")
    registered = keys_of(anvil.accounts[1].private_key, 1).identity.peer_id
    other = keys_of(anvil.accounts[1].private_key, 2)
    with pytest.raises(IdentityMismatchError) as refused:
        check_identity_owner(actors.alice, other.binding)
    message = str(refused.value)
    assert actors.alice.address in message and registered in message and other.identity.peer_id in message
    assert check_identity_owner(actors.alice, actors.binding(actors.alice, 1)).status == NodeStatus.ACTIVE


@pytest.mark.timeout(120)
def test_two_nodes_on_one_account_the_second_is_refused_then_starts_once_the_first_is_gone(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, actors: Actors
) -> None:
    keys = keys_of(anvil.accounts[2].private_key, 9)
    first = hold_in_another_process(deployment.chain_id, actors.bob.address, tmp_path / "locks")
    daemon = node_daemon(tmp_path, anvil, deployment, keys)
    try:
        with pytest.raises(AccountInUseError) as refused:
            daemon._ensure_registered()
        assert actors.bob.address in str(refused.value) and f"pid {first.pid}" in str(refused.value)
        assert actors.bob.node().status == NodeStatus.NONE, "the refused node sent nothing"
    finally:
        first.kill()
        first.wait()
    registration = daemon._ensure_registered()
    try:
        assert registration["registered_now"] and registration["address"] == actors.bob.address
        assert actors.bob.node().ed25519_key == keys.identity.public_key
        assert daemon.account_lock.held
    finally:
        daemon.account_lock.release()
