"""The coordinator's connection to its ledger: a signing client, a reading client, the registry.

`connect_chain` builds them from the `[chain]` config; `ChainConnection.registry` is what the verifier
asks before it reads a contribution's body (which keys are bound to an Active address on chain), and
keeps answering from its `RegistryCache` while the chain is away.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from thinkmesh.coordinator.settlement.retry_queue import FailureLog, failure_kind
from thinkmesh.protocol.chain.errors import RpcUnreachableError
from thinkmesh.protocol.chain.ledger import NodeStatus, bound_nodes
from thinkmesh.protocol.runtime.atomic_files import write_atomic

logger = logging.getLogger(__name__)

REGISTRY_RETRY_S = 15.0  # after a failed registry read, the last one serves this long before the chain is asked again
REGISTRY_WAIT_S = 2.0  # how long a caller waits for a registry read when an earlier one can stand in


class RegistryCache:
    """The registry as last read, kept when the chain stops answering, so verification (and the round
    loop, which refreshes it at each round's opening) never waits on a chain that is away:

    - a read runs in a short-lived thread of its own; once a registry is known (read before, or kept
      on disk at `path` from an earlier run), a caller waits at most `wait_s` for it and otherwise
      gets the known one while the read finishes (only one read is in flight at a time);
    - after a failed read the known registry serves for `retry_s` before the chain is asked again;
    - a node new since the last good read waits for the chain; the very first read waits in full.
    Thread-safe."""

    def __init__(self, path: Path | None = None, retry_s: float = REGISTRY_RETRY_S, wait_s: float = REGISTRY_WAIT_S):
        self.path, self.retry_s, self.wait_s = path, retry_s, wait_s
        self._lock = threading.Lock()
        self._known: dict[bytes, str] | None = self._load()
        self._skip_until = float("-inf")
        self._inflight: threading.Event | None = None
        self._log = FailureLog(log=logger, event="registry-retry")

    def read(self, reader) -> dict[bytes, str]:
        with self._lock:
            known = self._known
            if known is not None and (time.monotonic() < self._skip_until or self._inflight is not None):
                return dict(known)
            finished = self._inflight = threading.Event()
        threading.Thread(target=self._read, args=(reader, finished), name="registry-read", daemon=True).start()
        finished.wait(None if known is None else self.wait_s)
        with self._lock:
            return dict(self._known or {})

    def _read(self, reader, finished: threading.Event) -> None:
        try:
            registry = read_registry(reader)
        except Exception as exc:  # noqa: BLE001 - whatever the read met, the known registry stands in
            with self._lock:
                self._skip_until = time.monotonic() + self.retry_s
                count = len(self._known or {})
                self._log.failed(failure_kind(exc), f"expected the node registry from the chain, the read failed "
                                 f"({exc}); verifying against the {count} node(s) it last listed")
        else:
            with self._lock:
                changed, self._known, self._skip_until = registry != self._known, registry, float("-inf")
                self._log.reset()
            if changed and self.path is not None:
                self._save(registry)
        finally:
            with self._lock:
                self._inflight = None
            finished.set()

    def _load(self) -> dict[bytes, str] | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            return {bytes.fromhex(key): address for key, address in json.loads(self.path.read_text()).items()}
        except (ValueError, AttributeError) as exc:
            logger.warning("ignoring the unreadable registry cache %s: %s", self.path, exc)
            return None

    def _save(self, registry: dict[bytes, str]) -> None:
        try:
            write_atomic(self.path, json.dumps({key.hex(): address for key, address in sorted(registry.items())}, indent=1))
        except OSError as exc:
            logger.warning("could not keep the registry in %s: %s", self.path, exc)


@dataclass(frozen=True)
class ChainConnection:
    """The coordinator's two clients: `signer` sends (the settlement queue sends from its own copy),
    `reader` serves the verifier's registry reads; amounts in token units."""

    signer: object
    reader: object
    reward_per_prompt: int
    slash_amount: int
    registry_cache: RegistryCache = field(default_factory=RegistryCache)
    reward_per_trace: int = 0  # generation rounds (protocol/rules/payout.py)

    def registry(self) -> dict[bytes, str]:
        """The bound, Active nodes; the last known ones while the chain does not answer."""
        return self.registry_cache.read(self.reader)


def connect_chain(config, evm_private_key: bytes | None) -> ChainConnection:
    """Connects the `[chain]` section of a `CoordinatorConfig`; checks the account may settle.

    With a `deployment_file`, a chain that does not answer does not stop the start: the clients are
    built unchecked, rounds run, and settlements queue until it answers (the role is checked then,
    by the contract). Discovering a deployment from a `ledger` address needs the chain.
    """
    from thinkmesh.coordinator.settlement.round_settlement import SettlementError
    from thinkmesh.protocol.keys.account_lock import acquire_account_lock
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.chain.ledger import Deployment, checksum_address, tokens

    chain = config.chain
    if chain.deployment_file is not None:
        deployment = Deployment.load(chain.deployment_file)
        if chain.ledger and checksum_address(chain.ledger, "[chain] ledger") != deployment.ledger:
            raise SettlementError(f"[chain] ledger {chain.ledger} differs from {chain.deployment_file}'s {deployment.ledger}")
    elif chain.ledger:
        deployment = discover_deployment(chain.rpc_url, chain.ledger, from_block=chain.from_block)
    else:
        raise SettlementError("[chain]: expected deployment_file or ledger, got neither")
    if chain.private_key_env:
        key = os.environ.get(chain.private_key_env)
        if not key:
            raise SettlementError(f"[chain] private_key_env: expected ${chain.private_key_env} to hold a 0x-hex key, it is unset")
    elif evm_private_key:
        key = "0x" + evm_private_key.hex()
    else:
        raise SettlementError("[chain]: expected the coordinator's EVM key (its keystore or private_key_env), got none")
    cache = RegistryCache(config.data_dir / "registry-cache.json")
    try:
        signer = LedgerClient.connect(chain.rpc_url, deployment, private_key=key)
        reader = LedgerClient.connect(chain.rpc_url, deployment)
        acquire_account_lock(deployment.chain_id, signer.address, role="coordinator")
        if not signer.is_coordinator(signer.address):
            raise SettlementError(f"the coordinator account {signer.address} lacks COORDINATOR_ROLE on ledger {deployment.ledger}")
    except RpcUnreachableError as exc:
        logger.warning("%s; starting anyway with the deployment in %s: rounds run, their settlements queue until the "
                       "chain answers", exc, chain.deployment_file)
        signer = LedgerClient.offline(chain.rpc_url, deployment, private_key=key)
        reader = LedgerClient.offline(chain.rpc_url, deployment)
        acquire_account_lock(deployment.chain_id, signer.address, role="coordinator")
    return ChainConnection(signer, reader, tokens(chain.reward_per_prompt), tokens(chain.slash_amount), cache,
                           tokens(chain.reward_per_trace))


def read_registry(client) -> dict[bytes, str]:
    """Ed25519 key -> address of every validly bound node whose account is Active."""
    bound = bound_nodes(client.events.registrations())
    return {key: reg.node for key, reg in bound.items() if client.node(reg.node).status == NodeStatus.ACTIVE}
