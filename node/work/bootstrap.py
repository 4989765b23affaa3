"""Joining from the chain alone: the ledger's bootstrap multiaddrs, each probed before the DHT uses it.

The coordinator role lists its multiaddrs in the ledger (`addBootstrapPeer`), so `--rpc` and
`--ledger` are all a node needs to find the mesh. A listed address can be stale or wrong, and a
DHT handed a dead peer only says "no peers" much later, so every address is probed first, with
bounded timeouts, and each failure is logged with its reason:

    unreachable    nothing answers on TCP (refused, timed out), or no libp2p peer answers there
    wrong PeerID   a libp2p peer answers, but not the one the multiaddr's /p2p/ part names
    wrong run      the peer answers, but serves no model for this run_id, or one for another
                   chain, or one its own key did not sign

The probe is cheap first (a TCP connect), then one short-lived hivemind `P2P` dials each peer and
asks it for its model offer (`transport.model_handler(run_id)`, answered by the coordinator of
that run only), then says "no chunks". Peers that pass become the DHT's initial peers.

Without `coordinator_peer_id` in the config, the coordinator is the first listed peer that
passes (ledger order); peers with another PeerID are then refused as "wrong PeerID". Addresses
set in `[network] initial_peers` are used as given, without reading the chain or probing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from thinkmesh.protocol.rules.errors import ProtocolError

if TYPE_CHECKING:
    from thinkmesh.node.config import ChainConfig, NodeConfig
    from thinkmesh.protocol.chain.ledger import Deployment

logger = logging.getLogger(__name__)
TCP_TIMEOUT_S = 3.0
P2P_TIMEOUT_S = 10.0  # dialing one peer, then its model offer
P2P_START_TIMEOUT_S = 15.0


class BootstrapError(ProtocolError):
    """No usable bootstrap peer, or a bootstrap multiaddr that cannot be parsed."""


class ProbeFailure(str, Enum):
    MALFORMED = "malformed"
    UNREACHABLE = "unreachable"
    WRONG_PEER_ID = "wrong PeerID"
    WRONG_RUN = "wrong run"


@dataclass(frozen=True)
class BootstrapTarget:
    multiaddr: str
    peer_id: str
    host: str | None  # None when the address has no TCP part to check cheaply (QUIC, relay)
    port: int | None


@dataclass(frozen=True)
class PeerProbe:
    multiaddr: str
    peer_id: str
    failure: ProbeFailure | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.failure is None

    def line(self) -> str:
        verdict = "answers" if self.ok else f"FAILED ({self.failure.value})"
        return f"bootstrap peer {self.multiaddr}: {verdict}: {self.detail}"


def parse_bootstrap(multiaddr: str) -> BootstrapTarget:
    """The PeerID and TCP endpoint of a bootstrap multiaddr; `BootstrapError` when it names no /p2p/ peer."""
    from hivemind.utils.multiaddr import Multiaddr

    try:
        parsed = Multiaddr(multiaddr)
    except Exception as exc:  # hivemind's multiaddr raises several unrelated types
        raise BootstrapError(f"bootstrap multiaddr {multiaddr!r} does not parse: {exc}") from None
    protocols = [p.name for p in parsed.protocols()]
    if "p2p" not in protocols:
        raise BootstrapError(f"bootstrap multiaddr {multiaddr!r}: expected a /p2p/<PeerID> part, found none")
    host = next((parsed.value_for_protocol(name) for name in ("ip4", "ip6", "dns", "dns4", "dns6")
                 if name in protocols), None)
    port = int(parsed.value_for_protocol("tcp")) if "tcp" in protocols else None
    return BootstrapTarget(multiaddr, parsed.value_for_protocol("p2p"), host if port else None, port)


def tcp_refusal(host: str, port: int, timeout_s: float = TCP_TIMEOUT_S) -> str | None:
    """Why a TCP connection to (host, port) fails, or None when it opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"TCP connect to {host}:{port} timed out after {timeout_s:g}s"
    except OSError as exc:
        return f"TCP connect to {host}:{port}: {exc.strerror or exc}"


async def probe_peer(p2p, target: BootstrapTarget, run_id: str, chain_id: int,
                     timeout_s: float = P2P_TIMEOUT_S) -> PeerProbe:
    """Dials `target` over libp2p and asks for its model offer; never raises for a bad peer."""
    try:
        return await asyncio.wait_for(_probe(p2p, target, run_id, chain_id), timeout_s)
    except asyncio.TimeoutError:
        return PeerProbe(target.multiaddr, target.peer_id, ProbeFailure.UNREACHABLE,
                         f"no libp2p answer within {timeout_s:g}s")


async def _probe(p2p, target: BootstrapTarget, run_id: str, chain_id: int) -> PeerProbe:
    from hivemind.p2p import PeerID
    from hivemind.p2p.p2p_daemon_bindings.control import P2PDaemonError
    from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure
    from hivemind.utils.multiaddr import Multiaddr

    from thinkmesh.protocol.rules.encoding import decode_message
    from thinkmesh.protocol.rules.identity import public_key_from_peer_id
    from thinkmesh.protocol.rules.messages import ZERO_HASH, ModelManifest, verify_message
    from thinkmesh.protocol.p2p.transport import (
        MANIFEST_FRAME_BYTES,
        ModelOffer,
        ModelRequest,
        model_handler,
        read_record,
        write_record,
    )

    def failed(failure: ProbeFailure, detail: str) -> PeerProbe:
        return PeerProbe(target.multiaddr, target.peer_id, failure, detail)

    peer = PeerID.from_base58(target.peer_id)
    address = Multiaddr(target.multiaddr).decapsulate(Multiaddr(f"/p2p/{target.peer_id}"))
    try:  # hivemind has no public "dial this address"; its own identity check uses the same call
        await p2p._client.connect(peer, [address])
    except (ControlFailure, P2PDaemonError, ConnectionError) as exc:
        text = _daemon_message(exc)
        if "peer id mismatch" in text:
            return failed(ProbeFailure.WRONG_PEER_ID, f"the peer there is not {target.peer_id}: {text}")
        return failed(ProbeFailure.UNREACHABLE, f"libp2p dial failed: {text}")
    try:
        _info, reader, writer = await p2p.call_binary_stream_handler(peer, model_handler(run_id))
    except (ControlFailure, P2PDaemonError, ConnectionError) as exc:
        return failed(ProbeFailure.WRONG_RUN, f"serves no model for run {run_id!r}: {_daemon_message(exc)}")
    try:
        await write_record(writer, ModelRequest(run_id=run_id, model_hash=ZERO_HASH))
        offer = await read_record(reader, ModelOffer, MANIFEST_FRAME_BYTES)
        if offer.reason != "ok":
            detail = f"serves run {run_id!r} (no model yet: {offer.reason})"
            return PeerProbe(target.multiaddr, target.peer_id, None, detail)
        await write_record(writer, ModelRequest(run_id=run_id, model_hash=ZERO_HASH))  # "no chunks"
        manifest = decode_message(offer.manifest, ModelManifest)
        verify_message(manifest, public_key_from_peer_id(target.peer_id))
    except ProtocolError as exc:
        return failed(ProbeFailure.WRONG_RUN, f"its model offer for run {run_id!r} does not check: {exc}")
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        return failed(ProbeFailure.UNREACHABLE, f"the stream broke off: {exc}")
    finally:
        writer.close()
    if (manifest.chain_id, manifest.run_id) != (chain_id, run_id):
        return failed(ProbeFailure.WRONG_RUN, f"serves run {manifest.run_id!r} on chain {manifest.chain_id}, "
                                              f"expected run {run_id!r} on chain {chain_id}")
    return PeerProbe(target.multiaddr, target.peer_id, None,
                     f"serves run {run_id!r} on chain {chain_id}, model version {manifest.version}")


def _daemon_message(exc: BaseException) -> str:
    return " ".join(str(exc).replace("Connect failed. msg=", "").split()) or type(exc).__name__


async def probe_bootstrap(
    multiaddrs: Sequence[str], run_id: str, chain_id: int, *, dial: bool = True,
    tcp_timeout_s: float = TCP_TIMEOUT_S, p2p_timeout_s: float = P2P_TIMEOUT_S,
) -> list[PeerProbe]:
    """One probe per multiaddr, in order: TCP first (all at once), then libp2p through one `P2P`
    started only if some address is TCP-reachable, and shut down before returning.
    `dial=False` stops at TCP (when p2pd itself does not start)."""
    results: dict[str, PeerProbe] = {}
    targets: list[BootstrapTarget] = []
    for multiaddr in multiaddrs:
        try:
            targets.append(parse_bootstrap(multiaddr))
        except BootstrapError as exc:
            results[multiaddr] = PeerProbe(multiaddr, "", ProbeFailure.MALFORMED, str(exc))
    refusals = await asyncio.gather(*(asyncio.to_thread(tcp_refusal, t.host, t.port, tcp_timeout_s)
                                      if t.host else _none() for t in targets))
    alive = []
    for target, refusal in zip(targets, refusals):
        if refusal is None:
            alive.append(target)
        else:
            results[target.multiaddr] = PeerProbe(target.multiaddr, target.peer_id, ProbeFailure.UNREACHABLE, refusal)
    if alive and not dial:
        results.update((t.multiaddr, PeerProbe(t.multiaddr, t.peer_id, None, "TCP port open (libp2p not probed)"))
                       for t in alive)
    elif alive:
        from hivemind.p2p import P2P

        p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], dht_mode="client", auto_nat=False,
                               nat_port_map=False, startup_timeout=P2P_START_TIMEOUT_S)
        try:
            probes = await asyncio.gather(*(probe_peer(p2p, t, run_id, chain_id, p2p_timeout_s) for t in alive))
        finally:
            await p2p.shutdown()
        results.update((probe.multiaddr, probe) for probe in probes)
    return [results[m] for m in multiaddrs]


async def _none() -> None:
    return None


def choose_coordinator(
    probes: Sequence[PeerProbe], coordinator_peer_id: str | None
) -> tuple[str | None, list[PeerProbe]]:
    """(the coordinator's PeerID, the probes with peers of another PeerID turned into failures).

    The configured PeerID wins; else the first peer that answered for the run is the coordinator.
    """
    chosen = coordinator_peer_id or next((p.peer_id for p in probes if p.ok), None)
    checked = [
        PeerProbe(p.multiaddr, p.peer_id, ProbeFailure.WRONG_PEER_ID,
                  f"lists peer {p.peer_id}, but the run's coordinator is {chosen}")
        if p.ok and p.peer_id != chosen else p
        for p in probes
    ]
    return chosen, checked


def log_probes(probes: Sequence[PeerProbe]) -> None:
    for probe in probes:
        (logger.info if probe.ok else logger.warning)(probe.line())


def read_ledger_bootstrap(chain: ChainConfig) -> tuple[Deployment, list[str]]:
    """(the `Deployment`, its bootstrap multiaddrs) for a node config's `[chain]` section."""
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.chain.ledger import Deployment

    if chain.deployment_file is not None:
        deployment = Deployment.load(chain.deployment_file)
    elif chain.ledger:
        deployment = discover_deployment(chain.rpc_url, chain.ledger)
    else:
        raise BootstrapError("[chain]: expected `ledger` (or --ledger) or `deployment_file`, got neither")
    return deployment, LedgerClient.connect(chain.rpc_url, deployment).bootstrap_peers()


def coordinator_addresses_from_ledger(chain: ChainConfig, coordinator_peer_id: str) -> tuple[str, ...]:
    """The ledger's current bootstrap multiaddrs for the coordinator's PeerID, in list order.

    Why: a coordinator restarted on another host or port rewrites its own ledger entries at
    startup (`[chain].publish_bootstrap`), so a node holding the old addresses finds the new ones
    there. A ledger that cannot be read gives () (logged), never an exception: the caller keeps
    re-dialing what it has and reads again later.
    """
    from thinkmesh.protocol.chain.errors import ChainError

    try:
        _deployment, listed = read_ledger_bootstrap(chain)
    except (ChainError, BootstrapError, OSError, ValueError) as exc:
        logger.warning("cannot re-read the ledger's bootstrap list: %s: %s", type(exc).__name__, exc)
        return ()
    return tuple(m for m in listed if m.endswith(f"/p2p/{coordinator_peer_id}"))


def complete_network(config: NodeConfig) -> NodeConfig:
    """The config the daemon runs with: bootstrap peers and coordinator settled, chain id checked.

    Configured `initial_peers` together with `coordinator_peer_id` are used as given. Otherwise the
    candidates (the configured peers, else the ledger's list) are probed and only those that
    answer are kept; `BootstrapError` when none does. With `[chain]`, an unset `chain_id` is the
    RPC's, and a configured one must match it.
    """
    update: dict = {}
    candidates = list(config.network.initial_peers)
    if config.chain is not None and (not candidates or "chain_id" not in config.model_fields_set):
        deployment, listed = read_ledger_bootstrap(config.chain)
        if "chain_id" in config.model_fields_set and config.chain_id != deployment.chain_id:
            raise BootstrapError(f"chain_id: configured {config.chain_id}, but {config.chain.rpc_url} "
                                 f"serves chain {deployment.chain_id}")
        update["chain_id"] = deployment.chain_id
        if not candidates:
            if not listed:
                raise BootstrapError(f"the ledger {deployment.ledger} lists no bootstrap peer yet "
                                     "(the coordinator role adds its multiaddrs with addBootstrapPeer)")
            candidates = listed
            logger.info("the ledger %s lists %d bootstrap peer(s)", deployment.ledger, len(listed))
    if config.network.initial_peers and config.coordinator_peer_id:
        return config.model_copy(update=update)
    chain_id = update.get("chain_id", config.chain_id)
    probes = asyncio.run(probe_bootstrap(candidates, config.run_id, chain_id))
    coordinator, probes = choose_coordinator(probes, config.coordinator_peer_id)
    log_probes(probes)
    kept = [p.multiaddr for p in probes if p.ok]
    if not kept:
        reasons = "; ".join(f"{p.multiaddr}: {p.failure.value}" for p in probes)
        raise BootstrapError(f"none of the {len(probes)} bootstrap peer(s) answered for run {config.run_id!r}: "
                             f"{reasons}")
    logger.info("joining through %d of %d bootstrap peer(s); coordinator %s", len(kept), len(probes), coordinator)
    network = config.network.model_copy(update={"initial_peers": kept})
    return config.model_copy(update={**update, "network": network, "coordinator_peer_id": coordinator})
