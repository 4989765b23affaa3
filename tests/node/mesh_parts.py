"""Real parts for the bootstrap and doctor tests: an anvil-deployed ledger, and the p2p side of a
coordinator (a hivemind `P2P` serving `CoordinatorService`'s model offer for one run)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.anvil_required import require_anvil

from thinkmesh.protocol.rules.identity import NodeIdentity


@dataclass(frozen=True)
class Ledger:
    rpc_url: str
    address: str
    admin_key: str  # also the coordinator role (the deployer)


def anvil_ledger() -> Iterator[tuple[object, Ledger]]:
    """(the Anvil, a deployed ledger); skips without anvil installed, fails under CI."""
    from thinkmesh.devnet.anvil import Anvil
    from thinkmesh.protocol.chain.client import deploy
    from thinkmesh.protocol.chain.ledger import tokens

    require_anvil()
    with Anvil(accounts=3) as chain:
        admin = chain.accounts[0]
        deployment = deploy(chain.rpc_url, admin.private_key, unbonding_delay_s=3600, min_stake=tokens(1))
        yield chain, Ledger(chain.rpc_url, deployment.ledger, admin.private_key)


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def serving_coordinator(tmp: Path, identity: NodeIdentity, run_id: str, chain_id: int) -> AsyncIterator[str]:
    """Yields the multiaddr of a peer with `identity` that serves a signed model for (run_id, chain_id)."""
    import torch
    from hivemind.p2p import P2P

    from thinkmesh.coordinator.work.p2p_service import CoordinatorService
    from thinkmesh.protocol.rules.messages import ZERO_HASH, sign_message
    from thinkmesh.protocol.rules.model_manifest import build_manifest

    key_file = tmp / f"{identity.peer_id}.key"
    key_file.write_bytes(identity.libp2p_private_key_bytes())
    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], identity_path=str(key_file),
                           check_if_identity_free=False)
    service = CoordinatorService(p2p, run_id, intake=None)
    try:
        await service.start()
        manifest, chunks = build_manifest({"w": torch.zeros(4)}, "{}", chain_id=chain_id, run_id=run_id,
                                          version=0, round_id=0, parent_hash=ZERO_HASH)
        service.publish(sign_message(manifest, identity), chunks)
        yield str((await p2p.get_visible_maddrs())[0])
    finally:
        await service.stop()
        await p2p.shutdown()
