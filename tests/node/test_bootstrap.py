"""Joining from the chain alone: the bootstrap list comes from a real anvil-deployed ledger, and
each listed multiaddr is probed through real p2pd daemons; a dead one among live ones is dropped
with its reason, and the node keeps the ones that answer."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.node.mesh_parts import anvil_ledger, closed_port, serving_coordinator
from thinkmesh.node.work.bootstrap import (
    BootstrapError,
    PeerProbe,
    ProbeFailure,
    choose_coordinator,
    complete_network,
    parse_bootstrap,
    probe_bootstrap,
    read_ledger_bootstrap,
)
from thinkmesh.node.config import ChainConfig, NodeConfig
from thinkmesh.protocol.rules.identity import NodeIdentity

RUN = "boot"
CHAIN_ID = 31337
COORDINATOR = NodeIdentity.from_seed(b"\x07" * 32)
STRANGER = NodeIdentity.from_seed(b"\x08" * 32)


@pytest.fixture(scope="module")
def ledger():
    yield from anvil_ledger()


def node_config(tmp_path, **fields) -> NodeConfig:
    return NodeConfig(run_id=RUN, base_model=tmp_path / "model", data_dir=tmp_path / "data",
                      identity={"key_dir": tmp_path / "keys"}, **fields)


def test_a_bootstrap_multiaddr_must_name_its_peer():
    target = parse_bootstrap(f"/ip4/10.1.2.3/tcp/4001/p2p/{COORDINATOR.peer_id}")
    assert (target.host, target.port, target.peer_id) == ("10.1.2.3", 4001, COORDINATOR.peer_id)
    with pytest.raises(BootstrapError, match="/p2p/"):
        parse_bootstrap("/ip4/10.1.2.3/tcp/4001")
    with pytest.raises(BootstrapError, match="does not parse"):
        parse_bootstrap("/ip4/not-an-ip/tcp/4001")


def test_without_a_configured_coordinator_the_first_answering_peer_is_it():
    dead = PeerProbe("/a", STRANGER.peer_id, ProbeFailure.UNREACHABLE, "refused")
    first = PeerProbe("/b", COORDINATOR.peer_id, None, "ok")
    other = PeerProbe("/c", STRANGER.peer_id, None, "ok")
    chosen, checked = choose_coordinator([dead, first, other], None)
    assert chosen == COORDINATOR.peer_id
    assert [p.failure for p in checked] == [ProbeFailure.UNREACHABLE, None, ProbeFailure.WRONG_PEER_ID]
    chosen, checked = choose_coordinator([dead, first, other], STRANGER.peer_id)
    assert chosen == STRANGER.peer_id and [p.ok for p in checked] == [False, False, True]


@pytest.mark.timeout(60)
def test_probe_says_why_each_bad_address_fails(tmp_path):
    async def scenario():
        async with serving_coordinator(tmp_path, COORDINATOR, RUN, CHAIN_ID) as live:
            port = parse_bootstrap(live).port
            dead = f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{COORDINATOR.peer_id}"
            impostor = f"/ip4/127.0.0.1/tcp/{port}/p2p/{STRANGER.peer_id}"
            right = await probe_bootstrap([live, dead, impostor, "/ip4/127.0.0.1/tcp/1"], RUN, CHAIN_ID)
            other_run = await probe_bootstrap([live], "another-run", CHAIN_ID)
            other_chain = await probe_bootstrap([live], RUN, 5)
            return right, other_run, other_chain

    (live, dead, impostor, malformed), (other_run,), (other_chain,) = asyncio.run(scenario())
    assert live.ok and "model version 0" in live.detail, live
    assert dead.failure == ProbeFailure.UNREACHABLE and "TCP connect" in dead.detail, dead
    assert impostor.failure == ProbeFailure.WRONG_PEER_ID and "peer id mismatch" in impostor.detail, impostor
    assert malformed.failure == ProbeFailure.MALFORMED, malformed
    assert other_run.failure == ProbeFailure.WRONG_RUN and "another-run" in other_run.detail, other_run
    assert other_chain.failure == ProbeFailure.WRONG_RUN and "chain 31337" in other_chain.detail, other_chain


@pytest.mark.timeout(90)
def test_node_joins_through_the_live_peers_the_ledger_lists(ledger, tmp_path, caplog):
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment

    chain, deployed = ledger
    client = LedgerClient.connect(deployed.rpc_url, discover_deployment(deployed.rpc_url, deployed.address),
                                  private_key=deployed.admin_key)
    snapshot = chain.snapshot()
    config = node_config(tmp_path, chain=ChainConfig(rpc_url=deployed.rpc_url, ledger=deployed.address))
    try:
        with pytest.raises(BootstrapError, match="lists no bootstrap peer"):
            complete_network(config)

        async def scenario():
            async with serving_coordinator(tmp_path, COORDINATOR, RUN, CHAIN_ID) as live:
                dead = f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{STRANGER.peer_id}"
                for multiaddr in (dead, live):
                    client.add_bootstrap_peer(multiaddr)
                listed = read_ledger_bootstrap(config.chain)[1]
                with caplog.at_level(logging.INFO, logger="thinkmesh.node.work.bootstrap"):
                    completed = await asyncio.to_thread(complete_network, config)
                failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                client.remove_bootstrap_peer(live)
                with pytest.raises(BootstrapError, match="unreachable"):
                    await asyncio.to_thread(complete_network, config)
                return live, dead, listed, completed, failures

        live, dead, listed, completed, failures = asyncio.run(scenario())
    finally:
        chain.revert(snapshot)
    assert listed == [dead, live]
    assert completed.network.initial_peers == [live]
    assert completed.coordinator_peer_id == COORDINATOR.peer_id  # the first peer that answered
    assert completed.chain_id == CHAIN_ID
    assert len(failures) == 1 and dead in failures[0] and "unreachable" in failures[0], failures


def test_a_configured_chain_id_must_match_the_rpc(ledger, tmp_path):
    _chain, deployed = ledger
    config = node_config(tmp_path, chain_id=5, chain=ChainConfig(rpc_url=deployed.rpc_url, ledger=deployed.address))
    with pytest.raises(BootstrapError, match="configured 5, but .* serves chain 31337"):
        complete_network(config)


def test_configured_peers_and_coordinator_are_used_as_given(tmp_path):
    peers = [f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{COORDINATOR.peer_id}"]
    config = node_config(tmp_path, coordinator_peer_id=COORDINATOR.peer_id, network={"initial_peers": peers})
    assert complete_network(config) == config  # no chain, no probe: the operator's explicit choice


def test_a_node_rereads_the_coordinators_addresses_from_the_ledger(ledger, tmp_path, caplog):
    """A coordinator restarted on another port rewrites its ledger entries; a node that lost it
    replaces the coordinator's old multiaddrs with the listed ones and keeps its other peers."""
    from thinkmesh.node.work.bootstrap import coordinator_addresses_from_ledger
    from thinkmesh.node.work.daemon import NodeDaemon
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment

    chain, deployed = ledger
    client = LedgerClient.connect(deployed.rpc_url, discover_deployment(deployed.rpc_url, deployed.address),
                                  private_key=deployed.admin_key)
    old = f"/ip4/127.0.0.1/tcp/4001/p2p/{COORDINATOR.peer_id}"
    new = f"/ip4/127.0.0.1/tcp/4555/p2p/{COORDINATOR.peer_id}"
    other = f"/ip4/127.0.0.1/tcp/4002/p2p/{STRANGER.peer_id}"
    chain_config = ChainConfig(rpc_url=deployed.rpc_url, ledger=deployed.address)
    config = node_config(tmp_path, chain=chain_config, coordinator_peer_id=COORDINATOR.peer_id,
                         network={"initial_peers": [old, other]})
    daemon = NodeDaemon(config, NodeIdentity.from_seed(b"\x09" * 32))
    snapshot = chain.snapshot()
    try:
        for multiaddr in (other, new):
            client.add_bootstrap_peer(multiaddr)
        assert coordinator_addresses_from_ledger(chain_config, COORDINATOR.peer_id) == (new,)
        with caplog.at_level(logging.INFO, logger="thinkmesh.node.work.daemon"):
            assert asyncio.run(daemon._adopt_ledger_addresses()) is True
        assert daemon.config.network.initial_peers == [new, other]
        assert any(new in r.getMessage() for r in caplog.records)
        assert asyncio.run(daemon._adopt_ledger_addresses()) is False  # nothing new: no churn
    finally:
        chain.revert(snapshot)
    unreachable = ChainConfig(rpc_url=f"http://127.0.0.1:{closed_port()}", ledger=deployed.address)
    with caplog.at_level(logging.WARNING, logger="thinkmesh.node.work.bootstrap"):
        assert coordinator_addresses_from_ledger(unreachable, COORDINATOR.peer_id) == ()
    assert any("cannot re-read the ledger" in r.getMessage() for r in caplog.records)


def test_a_lost_coordinator_is_looked_up_on_chain_at_most_every_ledger_reread_s(tmp_path, monkeypatch):
    import thinkmesh.node.work.bootstrap as bootstrap
    from thinkmesh.node.work.daemon import LEDGER_REREAD_S, NodeDaemon

    old = f"/ip4/127.0.0.1/tcp/4001/p2p/{COORDINATOR.peer_id}"
    new = f"/ip4/127.0.0.1/tcp/4555/p2p/{COORDINATOR.peer_id}"
    reads, dialed = [], []
    monkeypatch.setattr(bootstrap, "coordinator_addresses_from_ledger", lambda chain, peer: reads.append(peer) or (new,))

    class DHT:  # answers only once the node dials the coordinator's new address
        async def run_coroutine(self, rejoin, return_future=True):
            dialed.append(rejoin.args[1])
            return new in rejoin.args[1]

    config = node_config(tmp_path, chain=ChainConfig(rpc_url="http://127.0.0.1:1", ledger="0x" + "11" * 20),
                         coordinator_peer_id=COORDINATOR.peer_id, network={"initial_peers": [old]})
    daemon = NodeDaemon(config, NodeIdentity.from_seed(b"\x0a" * 32))
    daemon.dht = DHT()
    assert asyncio.run(daemon.reach_coordinator()) is True
    assert dialed == [(old,), (new,)] and len(reads) == 1
    daemon.config = config  # lost again, at the old address: the ledger is not read again yet
    assert asyncio.run(daemon.reach_coordinator()) is False
    assert len(reads) == 1 and LEDGER_REREAD_S >= 1
