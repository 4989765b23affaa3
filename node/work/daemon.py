"""The node process: watch the DHT for the coordinator's round, sync the model, work, contribute.

Lifecycle: `NodeDaemon(config, identity)`, then `await run()` on the process's main thread.
hivemind's DHT (its own child process, started before torch spins up threads) carries the
`AnnouncementValidator`, so a forged announcement never reaches this loop; the loop re-checks
the signature anyway. Rollouts and the backward pass run in a worker thread; every hivemind
object stays on the main thread's event loop. The DHT process and its p2pd are watched
(`protocol/p2p/dht_process.py`): one that dies is restarted in place, the model and the round's work
kept; when restarts do not hold, `run` raises the cause and the process exits non-zero.

A node holds one model version. It fetches a version only when the announced (or, when idle,
the coordinator's head) hash differs from the one it holds, and it persists what it fetched
(checked again on load), so a restarted node catches up from where it was.

The round's work is `contribution_step.honest_contribution` (node/work/train_step.py's rollouts and gradient,
exactly what the coordinator's verifier recomputes), sent as it is. Tests and the devnet may plug in a
`ContributionHook` (node/work/contribution_hook.py) that replaces it; `thinkmesh node run` plugs in none.
With `[chain]`, the node registers itself before its first round.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import time
from collections import deque
from functools import partial

from thinkmesh.node.model.base_cache import base_path, load_base, save_base
from thinkmesh.node.config import NodeConfig
from thinkmesh.node.work.contribution_hook import ContributionHook
from thinkmesh.node.work.p2p_client import (
    CoordinatorUnreachable,
    FetchedModel,
    fetch_model,
    rejoin_coordinator,
    upload_contribution,
)
from thinkmesh.protocol.keys.account_lock import acquire_account_lock
from thinkmesh.protocol.rules.adapters import (
    adapter_architecture,
    adapter_from_architecture,
    attach_adapter,
    detach_adapter,
    trainable_count,
    trainable_parameters,
    trainable_shapes,
)
from thinkmesh.protocol.p2p.dht_process import P2PProcessDied, WatchedDHT
from thinkmesh.protocol.p2p.dht_records import AnnouncementValidator, announcement_key, check_announcement_bytes
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.keys.identity_guard import check_identity_owner
from thinkmesh.protocol.rules.scoring import load_tokenizer
from thinkmesh.protocol.runtime.atomic_files import atomic_path, write_atomic
from thinkmesh.protocol.rules.identity import NodeIdentity, public_key_from_peer_id
from thinkmesh.protocol.rules.messages import (
    ZERO_HASH,
    Contribution,
    ModelManifest,
    RoundAnnouncement,
    decode_message,
    encode_message,
    message_hash,
)
from thinkmesh.protocol.rules.rewards import total_reward
from thinkmesh.protocol.rules.terms import strategy_under_terms
from thinkmesh.protocol.p2p.transport import TransportError
from thinkmesh.protocol.rules.model_manifest import (
    ManifestError,
    assign_parameters,
    canonical_architecture,
    load_state_dict,
    model_parameters,
    parameters_hash,
)
from thinkmesh.protocol.runtime.observability import StatusServer
from thinkmesh.protocol.rules.wire_budget import WireLimitError, check_fits_wire

logger = logging.getLogger(__name__)
MODEL_CACHE = "model_cache.pt"
HISTORY_LIMIT = 100  # rounds kept in /status's history
LEDGER_REREAD_S = 10.0  # a node that lost its coordinator reads the ledger's list at most this often
LEGACY_IDENTITY_FILE = "p2p_identity.key"  # where versions before the memfd kept p2pd's key, in the clear


class NodeDaemon:
    def __init__(self, config: NodeConfig, identity: NodeIdentity, keys=None, *,
                 contribution_hook: ContributionHook | None = None):
        """`keys` (the keystore's `UnlockedKeys`) is needed only to register on chain.
        `contribution_hook`: tests and the devnet only (node/work/contribution_hook.py); None sends honest work."""
        self.config = config
        self.identity = identity
        self.keys = keys
        self.contribution_hook = contribution_hook
        self.reference_model = None
        self.registration: dict | None = None
        self.coordinator_key = public_key_from_peer_id(config.coordinator_peer_id)
        self.strategy = config.strategy.spec()
        self.phase = "starting"
        self.model_hash = ZERO_HASH
        self.model_version = -1
        self.done: dict[bytes, None] = {}  # announcements taken part in, oldest first, bounded
        self.history: deque[dict] = deque(maxlen=HISTORY_LIMIT)  # bounded: a long-running node keeps flat RAM
        self.memory_fit = None  # node/memory_fit.MemoryFit, made on the first round and kept
        self.adapter = None  # protocol/adapters.AdapterSpec while taking part in adapter rounds
        self.counters = {"model_bytes_fetched": 0, "models_fetched": 0, "base_bytes_fetched": 0,
                         "base_cache_hits": 0, "contributions_sent": 0,
                         "contributions_accepted": 0, "upload_bytes_sent": 0,
                         "rounds_joined": 0}
        self.last_receipt: dict | None = None
        self.started = time.time()
        self.dht = self.p2p = self.status_server = None
        self.p2p_watch: WatchedDHT | None = None
        self._last_head_check = 0.0

    # ---- setup -------------------------------------------------------------------------
    def _make_dht(self, identity_path: str):
        """The DHT, not started (`WatchedDHT` starts it, and again after a restart); `identity_path`
        is an in-memory file holding the node key for p2pd, so the PeerID is the node key's."""
        import hivemind

        net = self.config.network
        validator = AnnouncementValidator(chain_id=self.config.chain_id, run_id=self.config.run_id,
                                          coordinator_key=self.coordinator_key)
        return hivemind.DHT(
            start=False, initial_peers=net.initial_peers, host_maddrs=net.host_maddrs,
            announce_maddrs=net.announce_maddrs or None, identity_path=identity_path,
            client_mode=net.client_mode, use_auto_relay=net.use_auto_relay, record_validators=[validator],
            # hivemind's "identity taken" probe parses the key file as RSA and fails on libp2p
            # Ed25519 keys; a PeerID derived from our own keypair cannot collide anyway.
            check_if_identity_free=False,
        )

    def _load_model(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        base = str(self.config.base_model)
        self.model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, self.config.dtype),
                                                          attn_implementation="sdpa")
        self.model = self.model.to(self.config.device).eval()
        if self.strategy.beta > 0:  # the KL reference: the base model, frozen
            self.reference_model = copy.deepcopy(self.model).requires_grad_(False)
        self.tokenizer = load_tokenizer(self.config.base_model)
        self.architecture = self.base_architecture = canonical_architecture(self.model.config.to_dict())
        self.model_hash = self.base_hash = parameters_hash(model_parameters(self.model), self.architecture)
        cache = self.config.data_dir / MODEL_CACHE
        if cache.exists():
            try:
                saved = torch.load(cache, map_location="cpu", weights_only=True)
                manifest = decode_message(saved["manifest"], ModelManifest)
                spec = adapter_from_architecture(manifest.architecture)
                if spec is not None and spec.base_hash != self.base_hash:  # a base an earlier run fetched
                    tensors = load_base(self.config.data_dir, spec.base_hash, self.base_architecture)
                    if tensors is not None:
                        self._assign_base(spec.base_hash, tensors)
                if spec is not None and spec.base_hash == self.base_hash:
                    self._attach(spec)  # a cached adapter on the base this node holds
                self._install(manifest, tuple(saved["chunks"]), persist=False)
            except (ProtocolError, KeyError, RuntimeError) as exc:
                logger.warning("ignoring the cached model in %s: %s", cache, exc)

    # ---- adapter rounds: a frozen base (pinned by hash, fetched at most once) + the adapter --------
    def _attach(self, spec) -> None:
        """Wraps the plain model (whose weights hash to `spec.base_hash`) with the spec's LoRA."""
        self.model = attach_adapter(self.model, spec)
        self.adapter, self.architecture = spec, adapter_architecture(spec)
        self.model_hash, self.model_version = parameters_hash(trainable_parameters(self.model), self.architecture), -1

    async def use_adapter(self, spec) -> None:
        """Holds the round's kind of model: `spec` None, the plain model; else base `spec.base_hash`
        (this node's own base_model when it hashes so, else fetched once over P2P by that hash)
        with the spec's LoRA attached. The adapter's weights come with `sync_model`."""
        if spec == self.adapter:
            return
        if self.adapter is not None:  # another adapter, or back to full rounds: the base as it was
            self.model = detach_adapter(self.model)
            self.adapter, self.architecture = None, self.base_architecture
            self.model_hash, self.model_version = self.base_hash, -1
        if spec is None:
            return
        if spec.base_hash != self.base_hash:
            await self._fetch_base(spec.base_hash)
        await asyncio.to_thread(self._attach, spec)
        logger.info("adapter rounds on base 0x%s: LoRA rank %d on %s (%d trainable parameters)",
                    spec.base_hash.hex()[:16], spec.rank, ",".join(spec.target_modules), trainable_count(self.model))

    async def _fetch_base(self, base_hash: bytes) -> None:
        """The base from data_dir/bases/ (node/model/base_cache.py) when an earlier run kept it, else over
        P2P once, saved there before use so a restarted node does not fetch it again."""
        cached = await asyncio.to_thread(load_base, self.config.data_dir, base_hash, self.base_architecture)
        if cached is not None:
            self._assign_base(base_hash, cached)
            self.counters["base_cache_hits"] += 1
            logger.info("the base model 0x%s from %s", base_hash.hex()[:16], base_path(self.config.data_dir, base_hash))
            return
        previous, self.phase = self.phase, "syncing-base"
        try:
            result = await fetch_model(self.p2p, self.config.coordinator_peer_id, self.coordinator_key,
                                       self.config.run_id, base_hash, have_hash=self.base_hash, timeout=3600.0)
        finally:
            self.phase = previous
        if result.manifest.architecture != self.base_architecture:
            raise ManifestError("the announced base model has another architecture than base_model")
        tensors = await asyncio.to_thread(load_state_dict, result.manifest, result.chunks)
        await asyncio.to_thread(save_base, self.config.data_dir, base_hash, tensors)
        self._assign_base(base_hash, tensors)
        self.counters["base_bytes_fetched"] += result.wire_bytes
        logger.info("fetched the base model 0x%s (%d bytes): adapters only from now on", base_hash.hex()[:16],
                    result.wire_bytes)

    def _assign_base(self, base_hash: bytes, tensors: dict) -> None:
        assign_parameters(self.model, tensors)
        if self.reference_model is not None:  # the KL reference is the base
            assign_parameters(self.reference_model, tensors)
        self.base_hash = self.model_hash = base_hash

    def _install(self, manifest: ModelManifest, chunks: tuple[bytes, ...], persist: bool = True) -> None:
        """Checks every chunk and the hash (load_state_dict), then swaps the weights in: all of
        them in a full-model round, the adapter's in an adapter round."""
        if manifest.architecture != self.architecture:
            raise ManifestError("the coordinator's model has another architecture than base_model"
                                + (" and adapter" if self.adapter is not None else ""))
        tensors = load_state_dict(manifest, chunks)
        if self.contribution_hook is not None and manifest.model_hash != self.model_hash:
            self.contribution_hook.model_replaced(self.model)  # the version this one replaces
        assign_parameters(self.model, tensors, trainable_only=self.adapter is not None)
        if self.adapter is None:
            self.base_hash = manifest.model_hash  # the plain weights are this version
        if persist:
            import torch

            cache = self.config.data_dir / MODEL_CACHE
            with atomic_path(cache) as tmp:
                torch.save({"manifest": encode_message(manifest), "chunks": list(chunks)}, tmp)
        self.model_hash, self.model_version = manifest.model_hash, manifest.version

    # ---- model sync ----------------------------------------------------------------------
    async def sync_model(self, wanted: bytes = ZERO_HASH) -> None:
        """Holds `wanted` (ZERO_HASH: the coordinator's head) afterwards; fetches only if needed."""
        if wanted != ZERO_HASH and wanted == self.model_hash:
            return
        previous = self.phase
        self.phase = "syncing"
        try:
            result = await fetch_model(self.p2p, self.config.coordinator_peer_id, self.coordinator_key,
                                       self.config.run_id, wanted, have_hash=self.model_hash)
            if isinstance(result, FetchedModel):
                await self.use_adapter(adapter_from_architecture(result.manifest.architecture))
                await asyncio.to_thread(self._install, result.manifest, result.chunks)
                self.counters["model_bytes_fetched"] += result.wire_bytes
                self.counters["models_fetched"] += 1
                logger.info("fetched model version %d (0x%s, %d bytes)", result.manifest.version,
                            result.manifest.model_hash.hex()[:16], result.wire_bytes)
            else:
                self.model_version = result.version
        finally:
            self.phase = previous

    # ---- one round -----------------------------------------------------------------------
    _terms_noted = None  # the last terms whose changes to the configured strategy were logged

    async def read_announcement(self) -> RoundAnnouncement | None:
        key = announcement_key(self.config.run_id)
        found = await self._dht_call(lambda dht: dht.get(key, latest=True, return_future=True))
        if found is None or not isinstance(found.value, bytes):
            return None
        return check_announcement_bytes(found.value, chain_id=self.config.chain_id, run_id=self.config.run_id,
                                        coordinator_key=self.coordinator_key)

    def _work(self, announcement: RoundAnnouncement) -> tuple[dict, Contribution]:
        from thinkmesh.node.work.contribution_step import honest_contribution
        from thinkmesh.node.model.memory_fit import MemoryFit

        if self.memory_fit is None:
            memory = self.config.memory
            self.memory_fit = MemoryFit(memory.rollout_batch, memory.micro_batch, memory.free_fraction,
                                        memory.cpu_cap_mb * 1024 * 1024)
        started = time.perf_counter()
        strategy = strategy_under_terms(self.strategy, announcement.terms)
        if strategy != self.strategy and self._terms_noted != announcement.terms:
            self._terms_noted = announcement.terms
            logger.info("round %d: the round's terms set %s (configured %s)", announcement.round_id,
                        _sampling_values(strategy), _sampling_values(self.strategy))
        honest = honest_contribution(self.model, self.tokenizer, announcement, self.identity, strategy,
                                     self.config.round.compression, self.reference_model, self.memory_fit)
        hook = self.contribution_hook
        contribution = honest if hook is None else hook.replace_contribution(
            announcement, honest, identity=self.identity, model=self.model, tokenizer=self.tokenizer)
        samples = contribution.samples
        summary = {"samples": len(samples), "mean_reward": sum(total_reward(s.rewards) for s in samples) / len(samples),
                   "work_s": round(time.perf_counter() - started, 3),
                   "contribution_hook": hook.name if contribution is not honest else None,
                   "rollout_batch": self.memory_fit.rollout_batch, "micro_batch": self.memory_fit.micro_batch}
        return summary, contribution

    def _ensure_registered(self) -> dict:
        """Registers this node's EVM account with its identity binding unless it is registered.

        First takes the account for this process (a second process on it is refused, naming the
        holder's PID) and checks the ledger ties neither key to another (`check_identity_owner`).
        """
        from thinkmesh.node.ops.operator_commands import connect_node_client
        from thinkmesh.protocol.chain.ledger import NodeStatus, tokens

        chain = self.config.chain
        client = connect_node_client(chain, self.keys)
        self.account_lock = acquire_account_lock(client.deployment.chain_id, client.address,
                                                 role=f"node {self.identity.peer_id}")
        record = check_identity_owner(client, self.keys.binding)
        sent = False
        if record.status == NodeStatus.NONE and chain.auto_register:
            client.register(self.keys.binding, tokens(chain.stake), self.strategy.name, chain.endpoint)
            record, sent = client.node(), True
        logger.info("on chain as %s: %s, stake %d%s", record.address, record.status.name.lower(), record.stake,
                    " (registered now)" if sent else "")
        return {"address": record.address, "status": record.status.name.lower(), "stake": str(record.stake),
                "registered_now": sent}

    async def take_part(self, announcement: RoundAnnouncement) -> None:
        key = message_hash(announcement)
        self.done[key] = None
        while len(self.done) > HISTORY_LIMIT:
            del self.done[next(iter(self.done))]
        self.counters["rounds_joined"] += 1
        await self.use_adapter(announcement.adapter)
        try:  # before any work: a contribution the wire cannot carry is refused here, naming the fix
            check_fits_wire(announcement, trainable_count(self.model), len(trainable_shapes(self.model)),
                            self.config.round.compression, self.config.round.max_upload_bytes)
        except WireLimitError as exc:
            logger.error("%s", exc)
            self.last_receipt = {"round_id": announcement.round_id, "reason": "too-large", "detail": str(exc)}
            return
        try:
            await self.sync_model(announcement.model_hash)
        except Exception as exc:
            if lost_the_coordinator(exc):
                del self.done[key]  # nothing done yet: the next step tries this round again
            raise
        self.phase = "rollout"
        started = time.time()
        result, contribution = await asyncio.to_thread(self._work, announcement)
        if time.time() * 1000 > announcement.deadline_ms:
            logger.warning("round %d: work finished after the deadline; not sending", announcement.round_id)
            self.phase = "idle"
            return
        self.phase = "uploading"
        receipt, sent = await self._upload(announcement, contribution)
        self.counters["contributions_sent"] += 1
        self.counters["upload_bytes_sent"] += sent
        self.counters["contributions_accepted"] += int(receipt.accepted)
        self.last_receipt = {"round_id": receipt.round_id, "reason": receipt.reason, "detail": receipt.detail}
        self.history.append({"round_id": announcement.round_id, "model_version": announcement.model_version,
                             "reason": receipt.reason, "detail": receipt.detail, "upload_bytes": sent,
                             "gradient_bytes": contribution.gradient.nbytes, **result,
                             "total_s": round(time.time() - started, 3)})
        log = logger.info if receipt.accepted else logger.warning
        log("round %d: %s (%s)", announcement.round_id, receipt.reason, receipt.detail,
            extra={"event": "contribution", **self.history[-1]})
        self.phase = "idle"

    async def _upload(self, announcement: RoundAnnouncement, contribution: Contribution):
        """`upload_contribution`, tried again while the coordinator cannot be reached (its p2pd or this
        node's restarting) and the round's deadline has not passed: the work is not thrown away.
        A copy that did arrive the first time is refused as a duplicate, which costs nothing."""
        while True:
            try:
                return await upload_contribution(self.p2p, self.config.coordinator_peer_id, contribution,
                                                  timeout=self.config.round.upload_timeout_s)
            except Exception as exc:
                late = time.time() + self.config.round.sync_interval_s >= announcement.deadline_ms / 1000
                if late or not lost_the_coordinator(exc):
                    raise
                logger.warning("round %d: upload failed (%s: %s); trying again once the coordinator answers",
                               announcement.round_id, type(exc).__name__, exc)
            await asyncio.sleep(self.config.round.sync_interval_s)  # a dial backoff: nothing to await but time
            try:
                await self.reach_coordinator()
            except Exception as exc:
                if not lost_the_coordinator(exc):
                    raise

    async def step(self) -> None:
        """One poll: take part in an open round not yet done, else maybe catch up to the head.

        Every `sync_interval_s` an idle node also makes sure it can reach the coordinator
        (`reach_coordinator`), so it finds a restarted coordinator again by itself.
        """
        announcement = await self.read_announcement()
        now_ms = time.time() * 1000
        if announcement is not None and message_hash(announcement) not in self.done and now_ms < announcement.deadline_ms:
            await self.take_part(announcement)
            return
        if time.monotonic() - self._last_head_check >= self.config.round.sync_interval_s:
            self._last_head_check = time.monotonic()
            if await self.reach_coordinator():
                await self.sync_model(ZERO_HASH)

    coordinator_reachable = True  # as last seen by reach_coordinator; logs only the changes
    _next_ledger_read = 0.0  # monotonic time before which a lost coordinator is not looked up on chain

    async def reach_coordinator(self) -> bool:
        """True when the coordinator is in this node's DHT routing table, after re-dialing its
        bootstrap multiaddrs if it fell out (p2p_client.rejoin_coordinator says why it does)."""
        reachable = await self._rejoin()
        if not reachable and self.config.chain is not None and time.monotonic() >= self._next_ledger_read:
            self._next_ledger_read = time.monotonic() + LEDGER_REREAD_S
            if await self._adopt_ledger_addresses():
                reachable = await self._rejoin()
        if reachable != self.coordinator_reachable:
            if reachable:
                logger.info("reached the coordinator again at %s", self.config.network.initial_peers)
            else:
                logger.warning("the coordinator does not answer at %s; re-dialing every %.0fs",
                               self.config.network.initial_peers, self.config.round.sync_interval_s)
        self.coordinator_reachable = reachable
        return reachable

    async def _rejoin(self) -> bool:
        rejoin = partial(rejoin_coordinator, self.config.coordinator_peer_id, tuple(self.config.network.initial_peers))
        return await self._dht_call(lambda dht: dht.run_coroutine(rejoin, return_future=True))

    async def _dht_call(self, request):
        """`request(dht)` awaited; once running, through the watch, which raises `P2PProcessDied`
        (a `ProtocolError`: the loop logs it and goes on) if the DHT process dies meanwhile."""
        if self.p2p_watch is None:
            return await request(self.dht)
        return await self.p2p_watch.call(request)

    async def _p2p_restarted(self) -> None:
        """`WatchedDHT` restarted the DHT process and p2pd: use the new ones, and look for the
        coordinator at once (the new DHT knows no peer until it re-dials the bootstrap peers)."""
        self.dht, self.p2p = self.p2p_watch.dht, self.p2p_watch.p2p
        self._last_head_check = 0.0

    async def _adopt_ledger_addresses(self) -> bool:
        """True when the ledger lists coordinator multiaddrs this node did not have: they replace
        the coordinator's old ones (a coordinator restarted elsewhere), other peers are kept."""
        from thinkmesh.node.work.bootstrap import coordinator_addresses_from_ledger

        peer_id = self.config.coordinator_peer_id
        listed = await asyncio.to_thread(coordinator_addresses_from_ledger, self.config.chain, peer_id)
        known = self.config.network.initial_peers
        if not listed or set(listed) <= set(known):
            return False
        others = [m for m in known if not m.endswith(f"/p2p/{peer_id}")]
        logger.info("the ledger lists the coordinator at %s; dialing there", ", ".join(listed))
        network = self.config.network.model_copy(update={"initial_peers": [*listed, *others]})
        self.config = self.config.model_copy(update={"network": network})
        return True

    # ---- the process -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        (self.config.data_dir / LEGACY_IDENTITY_FILE).unlink(missing_ok=True)
        self.p2p_watch = WatchedDHT(self._make_dht, self.identity, role="node", on_restart=self._p2p_restarted,
                                    stop=stop)
        try:
            await self.p2p_watch.start()
            self.dht, self.p2p = self.p2p_watch.dht, self.p2p_watch.p2p
            await asyncio.to_thread(self._load_model)
            if self.config.chain is not None:
                self.registration = await asyncio.to_thread(self._ensure_registered)
            await self._start_status()
            self.phase = "idle"
            logger.info("node %s (%s, %s) joined; holding 0x%s", self.identity.peer_id, self.strategy.name,
                        self.config.round.compression, self.model_hash.hex()[:16])
            while not stop.is_set():
                try:
                    await self.step()
                except (ProtocolError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
                    logger.warning("round step failed: %s: %s", type(exc).__name__, exc)
                    self.phase = "idle"
                self._console()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.config.round.poll_s)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            self.p2p_watch.raise_if_failed()  # the DHT could not be restarted: exit with its cause
            raise
        finally:
            await self.shutdown()

    async def _start_status(self) -> None:
        obs = self.config.observability
        self.status_server = StatusServer("thinkmesh_node", self.status, self.gauges,
                                          {"run": self.config.run_id, "peer_id": self.identity.peer_id})
        port = await self.status_server.start(obs.http_host, obs.http_port)
        if obs.port_file:
            write_atomic(obs.port_file, f"{port}\n")

    def status(self) -> dict:
        return {"role": "node", "peer_id": self.identity.peer_id, "run_id": self.config.run_id, "phase": self.phase,
                "strategy": self.strategy.name, "compression": self.config.round.compression,
                "model_version": self.model_version, "model_hash": self.model_hash.hex(),
                "base_hash": self.base_hash.hex() if hasattr(self, "base_hash") else None,
                "adapter": None if self.adapter is None else {"rank": self.adapter.rank, "alpha": self.adapter.alpha,
                                                              "target_modules": list(self.adapter.target_modules)},
                "counters": self.counters, "last_receipt": self.last_receipt, "history": list(self.history),
                "memory": None if self.memory_fit is None else self.memory_fit.status(),
                "contribution_hook": None if self.contribution_hook is None else self.contribution_hook.name,
                "chain": self.registration,
                "p2p": self.p2p_watch.status() if self.p2p_watch else None,
                "uptime_s": round(time.time() - self.started, 1)}

    def gauges(self) -> dict[str, float]:
        return {**self.counters, "model_version": self.model_version, "uptime_seconds": time.time() - self.started}

    def _console(self) -> None:
        if self.config.observability.console and sys.stderr.isatty():
            print(f"\r[node {self.strategy.name}] {self.phase:<9} v{self.model_version} "
                  f"accepted {self.counters['contributions_accepted']}/{self.counters['contributions_sent']}",
                  end="", file=sys.stderr, flush=True)

    async def shutdown(self) -> None:
        if self.status_server is not None:
            await self.status_server.stop()
        if self.p2p_watch is not None:
            await self.p2p_watch.shutdown()
            self.p2p_watch = None
        self.dht = self.p2p = None


def lost_the_coordinator(exc: BaseException) -> bool:
    """A failure that a restart of the coordinator's p2pd, or of this node's DHT process and p2pd,
    explains (a dial refused, a stream cut, this node's p2pd socket gone): worth trying again until
    the round's deadline. A refusal or a protocol violation is not."""
    if isinstance(exc, (CoordinatorUnreachable, P2PProcessDied, OSError)):
        return True
    return isinstance(exc, TransportError) and isinstance(exc.__cause__, (asyncio.IncompleteReadError, ConnectionError))


def _sampling_values(strategy) -> str:
    return (f"temperature {strategy.temperature}, top_p {strategy.top_p}, group size {strategy.group_size}, "
            f"max_new_tokens {strategy.max_new_tokens}")
