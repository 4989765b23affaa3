"""The coordinator process: announce a round, take contributions until the deadline, aggregate,
evaluate, checkpoint, serve the new version; repeat.

Lifecycle: `Coordinator(config, identity)`, then `await run()` on the process's main thread.
hivemind's DHT runs in its own child process (started first, before torch spins up threads);
its P2P replica, the stream handlers and the HTTP status server live on this event loop;
tensor work (aggregation, evaluation, checkpoint writes) runs in a worker thread so handlers
keep answering. A round's outcome is committed only by the checkpoint rename: a coordinator
killed at any point resumes at the last committed version and round, re-announcing that round.
The DHT process and its p2pd are watched (`protocol/p2p/dht_process.py`): one that dies is restarted
in place, the open round and its contributions kept; when restarts do not hold, `run` raises
the cause and the process exits non-zero, for its supervisor to restart it from the checkpoint.

A round closes at its deadline, or earlier once every node expected in it has arrived
(`round_close.py`: the nodes active lately and those that connected since), so no node's honest
work is cut off as late by a count of contributions.

With `[chain]` (or `[verification] enabled`), every contribution is re-scored as it arrives
(`verifier.py`); at close the round's settlement intent is journaled before the checkpoint commits
it, and sent after (`settlement.py`), so a restart re-sends exactly what was committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time

from thinkmesh.coordinator.work.aggregation import (
    WeightedGradient,
    aggregate,
    apply_update,
    build_optimizer,
    load_optimizer_state,
)
from thinkmesh.coordinator.work.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from thinkmesh.coordinator.config import CoordinatorConfig, IntakeConfig
from thinkmesh.coordinator.work.evaluation import evaluate
from thinkmesh.coordinator.work.intake import ContributionIntake, OpenRound
from thinkmesh.coordinator.work.p2p_service import CoordinatorService
from thinkmesh.coordinator.work.round_close import Attendance, may_close_early
from thinkmesh.coordinator.settlement.round_settlement import RoundSettler, SettlementJournal, StepHook
from thinkmesh.coordinator.work.verifier import ContributionArchive, ContributionVerifier
from thinkmesh.protocol.rules.adapters import (
    AdapterSpec,
    adapter_architecture,
    attach_adapter,
    linear_module_names,
    trainable_named_parameters,
    trainable_parameters,
    trainable_shapes,
)
from thinkmesh.protocol.rules.contribution_value import ValueSettings, contribution_values, valued_indices
from thinkmesh.protocol.p2p.dht_process import P2PProcessDied, WatchedDHT
from thinkmesh.protocol.p2p.dht_records import AnnouncementValidator, announcement_expiration, announcement_key
from thinkmesh.protocol.rules.encoding import decode_message
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.generation import ROUND_KIND_GENERATION, ROUND_KIND_TRAINING
from thinkmesh.protocol.rules.identity import NodeIdentity, public_key_from_peer_id
from thinkmesh.protocol.rules.messages import ZERO_HASH, ModelManifest, RoundAnnouncement, encode_message, sign_message
from thinkmesh.protocol.rules.model_manifest import assign_parameters, build_manifest, canonical_architecture, model_parameters
from thinkmesh.protocol.runtime.observability import StatusServer
from thinkmesh.protocol.runtime.atomic_files import write_atomic
from thinkmesh.protocol.rules.scoring import load_tokenizer
from thinkmesh.protocol.rules.seeds import round_seed
from thinkmesh.protocol.rules.tasks import TaskSpec

logger = logging.getLogger(__name__)
LEGACY_IDENTITY_FILE = "p2p_identity.key"  # where versions before the memfd kept p2pd's key, in the clear



def wire_intake(config: IntakeConfig, *, chain_id: int, run_id: str, shapes: dict[str, tuple[int, ...]],
                verifier: ContributionVerifier | None) -> ContributionIntake:
    """The intake as the coordinator runs it: with a verifier, every contribution is verified
    after intake's own checks, its verdict goes back to the verifier when intake records or drops
    it, and the verifier's registry (when it has one) is consulted from the upload header."""
    return ContributionIntake(
        chain_id=chain_id, run_id=run_id, param_shapes=shapes, max_bytes=config.max_contribution_bytes,
        allowed_nodes=frozenset(config.allowed_nodes), compressions=frozenset(config.compressions),
        verify=verifier.verify if verifier else None,
        registry=verifier if verifier is not None and verifier.registered is not None else None,
        admit_verdict=verifier.admit if verifier else None, drop_verdict=verifier.release if verifier else None,
    )


class Coordinator:
    def __init__(self, config: CoordinatorConfig, identity: NodeIdentity, evm_private_key: bytes | None = None, *,
                 settlement_hook: StepHook | None = None):
        """`settlement_hook`: tests and the devnet only, called at settlement's crash points
        (settlement.py; devnet/crashing_coordinator.py); `coordinator run` passes none."""
        self.config = config
        self.settlement_hook = settlement_hook
        self.identity = identity
        self.evm_private_key = evm_private_key
        self.verifier: ContributionVerifier | None = None
        self.settler: RoundSettler | None = None
        self.chain = None  # settlement.ChainConnection, with [chain]
        self.phase = "starting"
        self.round_id = 0
        self.version = 0
        self.manifest: ModelManifest | None = None
        self.rounds: list[dict] = []
        self.evals: list[dict] = []
        self.started = time.time()
        self.dht = self.p2p = self.service = self.status_server = None
        self.p2p_watch: WatchedDHT | None = None
        self.maddrs: list[str] = []
        self.attendance = Attendance()  # who is connected since when: the early close rule's input
        self.expected: frozenset[str] = frozenset()  # the open round's expected nodes, as last computed
        self.intake: ContributionIntake | None = None
        self.adapter: AdapterSpec | None = None  # adapter rounds: set by _load_model
        self.task = TaskSpec(config.round.task_family, config.round.task_difficulty)

    # ---- setup -------------------------------------------------------------------------
    def _make_dht(self, identity_path: str):
        """The DHT, not started (`WatchedDHT` starts it, and again after a restart); `identity_path`
        is an in-memory file holding the node key for p2pd, so the PeerID is the coordinator key's."""
        import hivemind

        net = self.config.network
        validator = AnnouncementValidator(chain_id=self.config.chain_id, run_id=self.config.run_id,
                                          coordinator_key=self.identity.public_key)
        return hivemind.DHT(
            start=False, initial_peers=net.initial_peers or None, host_maddrs=net.host_maddrs,
            announce_maddrs=net.announce_maddrs or None, identity_path=identity_path,
            record_validators=[validator],
            # hivemind's "identity taken" probe parses the key file as RSA and fails on libp2p
            # Ed25519 keys; a PeerID derived from our own keypair cannot collide anyway.
            check_if_identity_free=False,
        )

    def _load_model(self):
        import torch
        from transformers import AutoModelForCausalLM

        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        model = AutoModelForCausalLM.from_pretrained(str(self.config.base_model), dtype=torch.float32,
                                                     attn_implementation="sdpa").to(self.config.device)
        tokenizer = load_tokenizer(self.config.base_model)
        if self.config.adapter is not None:
            model = self._attach_adapter(model)
        agg = self.config.aggregation
        trainable = [p for _, p in trainable_named_parameters(model)]  # the adapter's alone in adapter rounds
        optimizer = build_optimizer(trainable, agg.optimizer, agg.lr, betas=agg.betas, weight_decay=agg.weight_decay,
                                    momentum=agg.momentum)
        return model.eval(), tokenizer, optimizer

    def _attach_adapter(self, base):
        """Pins the frozen base (its manifest, served by hash for nodes that lack it) and wraps it
        with the configured LoRA; `self.adapter` is the spec every announcement carries."""
        cfg = self.config.adapter
        base_manifest, base_chunks = build_manifest(
            model_parameters(base), canonical_architecture(base.config.to_dict()), chain_id=self.config.chain_id,
            run_id=self.config.run_id, version=0, round_id=0, parent_hash=ZERO_HASH)
        self.base_manifest, self.base_chunks = sign_message(base_manifest, self.identity), base_chunks
        targets = tuple(sorted(set(cfg.target_modules))) or linear_module_names(base)
        self.adapter = AdapterSpec(base_hash=base_manifest.model_hash, rank=cfg.rank, alpha=float(cfg.alpha),
                                   target_modules=targets)
        logger.info("adapter rounds: base 0x%s (%d bytes), LoRA rank %d on %s", base_manifest.model_hash.hex()[:16],
                    base_manifest.total_bytes, cfg.rank, ",".join(targets))
        return attach_adapter(base, self.adapter, cfg.seed)

    def _restore_or_init(self) -> tuple[dict, int]:
        """Loads the checkpoint if any; returns (parameters, next round)."""
        checkpoint = load_checkpoint(self.config.data_dir, self.config.run_id)
        self.architecture = (adapter_architecture(self.adapter) if self.adapter is not None
                             else canonical_architecture(self.model.config.to_dict()))
        if checkpoint is None:
            manifest, chunks = self._make_manifest(version=0, round_id=0, parent=ZERO_HASH)
            self.manifest, self.chunks = manifest, chunks
            self._commit(next_round=1)
            return {}, 1
        assign_parameters(self.model, checkpoint.parameters, trainable_only=self.adapter is not None)
        load_optimizer_state(self.optimizer, checkpoint.optimizer_state)
        self.manifest = decode_message(checkpoint.manifest_bytes, ModelManifest)
        _, self.chunks = self._make_manifest(self.manifest.version, self.manifest.round_id, self.manifest.parent_hash)
        self.version, self.rounds, self.evals = checkpoint.version, checkpoint.rounds, checkpoint.evals
        logger.info("resumed at version %d, round %d", self.version, checkpoint.next_round)
        return checkpoint.parameters, checkpoint.next_round

    def _make_manifest(self, version: int, round_id: int, parent: bytes):
        manifest, chunks = build_manifest(
            self._version_tensors(), self.architecture, chain_id=self.config.chain_id,
            run_id=self.config.run_id, version=version, round_id=round_id, parent_hash=parent,
        )
        return sign_message(manifest, self.identity), chunks

    def _version_tensors(self) -> dict:
        """What a version is made of: the adapter's tensors in adapter rounds, else all weights."""
        return trainable_parameters(self.model) if self.adapter is not None else model_parameters(self.model)

    def _commit(self, next_round: int) -> None:
        save_checkpoint(self.config.data_dir, Checkpoint(
            version=self.manifest.version, next_round=next_round, parameters=self._version_tensors(),
            optimizer_state=self.optimizer.state_dict(), manifest_bytes=encode_message(self.manifest),
            rounds=self.rounds, evals=self.evals,
        ))

    # ---- one round ---------------------------------------------------------------------
    def _announcement(self, round_id: int) -> RoundAnnouncement:
        cfg = self.config
        return sign_message(RoundAnnouncement(
            chain_id=cfg.chain_id, run_id=cfg.run_id, round_id=round_id, model_version=self.manifest.version,
            model_hash=self.manifest.model_hash, task=self.task, prompts_per_node=cfg.round.prompts_per_node,
            seed=round_seed(cfg.round.seed, round_id), deadline_ms=int((time.time() + cfg.round.deadline_s) * 1000),
            coordinator_key=self.identity.public_key, prompt_template=cfg.round.template, terms=cfg.round.terms(),
            adapter=self.adapter, kind=ROUND_KIND_GENERATION if cfg.round.is_generation_round(round_id) else ROUND_KIND_TRAINING,
        ), self.identity)

    async def _collect(self, announcement: RoundAnnouncement) -> str:
        """Waits for the deadline, or until every node expected in the round arrived with at least
        `close_when` verdicts in (`round_close.py`; `close_when` 0: the deadline only); says which."""
        close_when = self.config.round.close_when
        round_id = announcement.round_id
        while True:
            self.service.on_accept.clear()
            current = self.intake.current
            verdicts = [*current.accepted.values(), *current.rejected.values()]  # one verdict per node
            connected = await self._observe_peers() if close_when else None
            if connected is not None:
                self.expected = self.attendance.expected(round_id, connected, self.service.uploads,
                                                         self._may_contribute)
                arrived = frozenset(v.peer_id for v in verdicts) | self.service.uploads.ended_for(round_id)
                if may_close_early(self.expected, arrived, len(verdicts), close_when):
                    return "all-arrived"
            remaining = announcement.deadline_ms / 1000 - time.time()
            if remaining <= 0:
                return "deadline"
            try:
                await asyncio.wait_for(self.service.on_accept.wait(), timeout=min(remaining, 2.0))
            except asyncio.TimeoutError:
                self._console()

    def _aggregate_and_commit(self, closed: OpenRound, next_round: int) -> dict:
        """Worker thread: the update, the new version, its evaluation and the checkpoint."""
        if self.verifier is not None:
            with self.verifier.lock:  # a verification still in flight uses the round's weights
                return self._aggregate(closed)
        return self._aggregate(closed)

    def _aggregate(self, closed: OpenRound) -> dict:
        agg = self.config.aggregation
        values = self._contribution_values(closed)  # on the round's weights, before the step
        items = [WeightedGradient(c.gradients, float(c.samples)) for c in closed.accepted.values()]
        grad = aggregate(items, agg.rule, agg.clip_norm, agg.centered_clip_iters)
        norm = apply_update(self.model, self.optimizer, grad, agg.max_grad_norm)
        parent = self.manifest.model_hash
        self.manifest, self.chunks = self._make_manifest(self.manifest.version + 1, closed.announcement.round_id, parent)
        self.evals.append(self._evaluate())
        return {"aggregate_norm": norm, "contribution_values": values}

    def _contribution_values(self, closed: OpenRound) -> list[dict]:
        """Each valued contribution's value (protocol/rules/contribution_value.py: the change in expected
        reward on the round's public validation batch from its update alone); [] when `[eval]
        value_prompts` is 0. At most `value_max_contributions` are valued (`valued_indices`: a public
        draw), so the round's cost is one validation batch plus that many forward passes over it,
        whatever the number of nodes. Kept in the round record and /status, and published per
        strategy at settlement; no payout uses it."""
        ev = self.config.eval
        accepted = list(closed.accepted.values())
        if not ev.value_prompts or not accepted:
            return []
        chosen = valued_indices(closed.announcement.seed, [c.node_key for c in accepted], ev.value_max_contributions)
        if len(chosen) < len(accepted):
            logger.info("round %d: valuing %d of %d accepted contributions ([eval] value_max_contributions)",
                        closed.announcement.round_id, len(chosen), len(accepted))
        accepted = [accepted[i] for i in chosen]
        settings = ValueSettings(prompts=ev.value_prompts, group=ev.value_group, max_new_tokens=ev.max_new_tokens,
                                 template=ev.template or self.config.round.template,
                                 step=float(self.config.aggregation.lr))
        values, batch = contribution_values(self.model, self.tokenizer, self.task, closed.announcement.seed,
                                            [c.gradients for c in accepted], settings)
        return [{"peer_id": c.peer_id, "strategy": c.strategy, "loss": c.loss, "value": round(v, 6),
                 "batch_reward": round(batch.mean_reward, 4)} for c, v in zip(accepted, values)]

    def _evaluate(self) -> dict:
        ev = self.config.eval
        if ev.prompts == 0:
            return {"version": self.manifest.version, "model_hash": self.manifest.model_hash.hex()}
        result = evaluate(self.model, self.tokenizer, self.task, prompts=ev.prompts, max_new_tokens=ev.max_new_tokens,
                          seed_text=ev.seed, version=self.manifest.version, model_hash=self.manifest.model_hash,
                          template=ev.template or self.config.round.template).as_dict()
        logger.info("held-out eval of version %d: accuracy %.3f, reward %.3f", result["version"], result["accuracy"],
                    result["mean_reward"], extra={"event": "eval", **result})
        return result

    async def run_round(self, round_id: int) -> dict:
        self.round_id = round_id
        announcement = self._announcement(round_id)
        if self.verifier is not None:
            await asyncio.to_thread(self.verifier.open_round, round_id)
            await asyncio.to_thread(self.settler.open_round, round_id, announcement.model_hash, announcement.seed,
                                    announcement.kind, announcement.adapter.base_hash if announcement.adapter else None)
        self.intake.open(announcement)
        self.phase = "collecting"
        await self._observe_peers()  # those connected now were there before the round opened
        self.attendance.round_opened(round_id, time.monotonic())
        self.expected = frozenset()
        stored = await self._store_announcement(announcement)
        logger.info("announced round %d on version %d (stored: %s)", round_id, self.manifest.version, stored,
                    extra={"event": "announce", "round": round_id, "version": self.manifest.version})
        started = time.time()
        closed_by = await self._collect(announcement)
        closed = self.intake.close()
        rejected_peers = {r.peer_id for r in closed.rejected.values()}
        self.phase = "aggregating"
        before = (self.manifest.version, self.manifest.model_hash.hex())
        record = {
            "round_id": round_id, "closed_by": closed_by, "model_version_before": before[0],
            "model_hash_before": before[1], "contributors": [
                {"peer_id": c.peer_id, "samples": c.samples, "strategy": c.strategy, "loss": c.loss,
                 "compression": c.compression, "gradient_bytes": c.gradient_bytes, "upload_bytes": c.upload_bytes,
                 "mean_reward": c.mean_reward, "accuracy": c.accuracy}
                for c in closed.accepted.values()],
            # Bounded whatever peers send: counts by reason, and a few refusals in full (intake.RefusalLog).
            "refusals": closed.refusals.as_record(rejected_peers)["kept"],
            "refusals_total": len(closed.refusals), "refusals_by_reason": dict(closed.refusals.counts),
            "rejected": [{"peer_id": r.peer_id, "reason": r.reason, "evidence_hash": r.verified.evidence_hash.hex()}
                         for r in closed.rejected.values()],
        }
        record["expected"] = sorted(self.expected)  # the nodes an early close waited for
        record["kind"] = announcement.kind  # a generation round only collects traces: no step, the version stays
        if announcement.kind == ROUND_KIND_TRAINING and len(closed.accepted) >= self.config.round.min_contributions:
            record.update(await asyncio.to_thread(self._aggregate_and_commit, closed, round_id + 1))
        record.update({"model_version_after": self.manifest.version, "model_hash_after": self.manifest.model_hash.hex(),
                       "duration_s": round(time.time() - started, 3)})
        intent = None
        if self.settler is not None:
            await asyncio.to_thread(self.verifier.sync_round, round_id)  # the intent names these files
            intent = await asyncio.to_thread(
                self.settler.record, round_id, announcement.seed, [c.verified for c in closed.accepted.values()],
                [r.verified for r in closed.rejected.values()], self.evals[-1].get("accuracy", 0.0),
                [(v["loss"], v["value"]) for v in record.get("contribution_values", [])])
            record["settlement"] = {"traces_root": intent.traces_root.hex(), "stats": dataclasses.asdict(intent.stats),
                                    "awards": [dataclasses.asdict(a) for a in intent.awards],
                                    "slashes": [{"node": s.node, "reason": s.reason, "evidence_hash": s.evidence_hash.hex()}
                                                for s in intent.slashes],
                                    "details": intent.details.to_json()}
        self.rounds.append(record)
        await asyncio.to_thread(self._commit, round_id + 1)
        if intent is not None:
            self.verifier.commit_round(round_id, [c.verified for c in closed.accepted.values()])
        self.service.publish(self.manifest, self.chunks)
        self.version = self.manifest.version
        if intent is not None:
            await asyncio.to_thread(self.settler.send, intent)
        logger.info("round %d closed by %s with %d contributions -> version %d", round_id, closed_by,
                    len(closed.accepted), self.version, extra={"event": "round", **record})
        return record

    # ---- the process -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        cfg = self.config
        stop = stop or asyncio.Event()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        (cfg.data_dir / LEGACY_IDENTITY_FILE).unlink(missing_ok=True)
        self.p2p_watch = WatchedDHT(self._make_dht, self.identity, role="coordinator",
                                    on_restart=self._p2p_restarted, stop=stop)
        try:
            await self.p2p_watch.start()
            self.dht, self.p2p = self.p2p_watch.dht, self.p2p_watch.p2p
            self.model, self.tokenizer, self.optimizer = self._load_model()
            _, next_round = await asyncio.to_thread(self._restore_or_init)
            self.version = self.manifest.version
            if not self.evals:
                self.evals.append(await asyncio.to_thread(self._evaluate))
            shapes = trainable_shapes(self.model)
            if cfg.verifies:
                await asyncio.to_thread(self._start_verification, next_round)
            self.intake = wire_intake(cfg.intake, chain_id=cfg.chain_id, run_id=cfg.run_id, shapes=shapes,
                                      verifier=self.verifier)
            self.service = CoordinatorService(self.p2p, cfg.run_id, self.intake)
            await self.service.start()
            if self.adapter is not None:
                self.service.pin(self.base_manifest, self.base_chunks)
            self.service.publish(self.manifest, self.chunks)
            await self._start_status()
            maddrs = self._write_maddrs()
            if self.chain is not None and cfg.chain.publish_bootstrap:
                await asyncio.to_thread(self._publish_bootstrap, maddrs)
            while len(await self.p2p.list_peers()) < cfg.round.min_peers and not stop.is_set():
                self.phase = "waiting-for-peers"
                await asyncio.sleep(0.5)
            if cfg.round.start_delay_s:
                await asyncio.sleep(cfg.round.start_delay_s)
            round_id = next_round
            while not stop.is_set() and (cfg.round.rounds == 0 or round_id <= cfg.round.rounds):
                await self.run_round(round_id)
                round_id += 1
            self.phase = "done"
            logger.info("finished %d rounds at version %d; serving until stopped", cfg.round.rounds, self.version)
            await stop.wait()
        except asyncio.CancelledError:
            self.p2p_watch.raise_if_failed()  # the DHT could not be restarted: exit with its cause
            raise
        finally:
            await self.shutdown()

    def _start_verification(self, next_round: int) -> None:
        """Worker thread: the chain clients, the verifier, and the restart recovery of settlements."""
        from thinkmesh.coordinator.settlement.round_settlement import connect_chain
        from thinkmesh.protocol.rules.audit import AuditPolicy

        cfg = self.config
        ver = cfg.verification
        policy = AuditPolicy(logprob_samples=ver.logprob_samples, probe_rate=float(ver.probe_rate),
                             full_gradient_rate=float(ver.full_gradient_rate), probe_tensors=ver.probe_tensors,
                             probe_floor=float(ver.probe_floor), probe_window=float(ver.probe_window))
        chain = self.chain = connect_chain(cfg, self.evm_private_key) if cfg.chain is not None else None
        evidence_dir = (cfg.chain.evidence_dir if cfg.chain and cfg.chain.evidence_dir else cfg.data_dir / "evidence")
        import torch
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(  # the KL reference of beta > 0 strategies
            str(cfg.base_model), dtype=torch.float32, attn_implementation="sdpa").to(cfg.device).eval()
        self.verifier = ContributionVerifier(
            model=self.model, tokenizer=self.tokenizer, policy=policy, coordinator_seed=self.identity.seed(),
            evidence_dir=evidence_dir, archive=ContributionArchive(cfg.data_dir / "contributions"),
            registry=chain.registry if chain else None, reference_model=reference.requires_grad_(False),
        )
        journal = SettlementJournal(cfg.data_dir / "settlement")
        self.settler = RoundSettler(journal, chain.signer if chain else None,
                                    reward_per_prompt=chain.reward_per_prompt if chain else 0,
                                    step_hook=self.settlement_hook,
                                    slash_amount=chain.slash_amount if chain else 0,
                                    reward_per_trace=chain.reward_per_trace if chain else 0)
        for intent in self.settler.recover(next_round):
            self.verifier.committed.add_intent(intent)
        self.settler.start()  # settlements go to the chain behind the round loop, retried while it is away

    async def _store_announcement(self, announcement: RoundAnnouncement) -> bool:
        """Puts the signed announcement in the DHT; False when the DHT process died meanwhile (its
        restart stores the open round's announcement again, `_p2p_restarted`)."""
        try:
            return await self.p2p_watch.call(lambda dht: dht.store(
                announcement_key(self.config.run_id), encode_message(announcement),
                announcement_expiration(announcement), return_future=True))
        except P2PProcessDied as exc:
            logger.warning("round %d: announcement not stored (%s); stored again after the restart",
                           announcement.round_id, exc)
            return False

    async def _p2p_restarted(self) -> None:
        """`WatchedDHT` restarted the DHT process and p2pd: serve on the new daemon, store the open
        round's announcement again (the dead process held it), republish multiaddrs that changed."""
        self.dht, self.p2p = self.p2p_watch.dht, self.p2p_watch.p2p
        if self.service is None:  # still starting: run() wires the service to the new replica
            return
        await self.service.rebind(self.p2p)
        current = self.intake.current
        if current is not None:
            await self._store_announcement(current.announcement)
        before = self.maddrs
        maddrs = self._write_maddrs()
        if self.chain is not None and self.config.chain.publish_bootstrap and maddrs != before:
            await asyncio.to_thread(self._publish_bootstrap, maddrs)

    async def _observe_peers(self) -> frozenset[str] | None:
        """The peers connected now that may contribute, recorded in `attendance`; None when p2pd
        does not answer (a restart under way: nobody counts as arrived meanwhile)."""
        try:
            peers = await asyncio.wait_for(self.p2p.list_peers(), 5.0)
        except Exception as exc:
            logger.debug("cannot list the connected peers: %s", exc)
            return None
        eligible = (p.peer_id.to_base58() for p in peers)
        return self.attendance.observe([p for p in eligible if self._may_contribute(p)], time.monotonic())

    def _may_contribute(self, peer_id: str) -> bool:
        """Admitted by `allowed_nodes`, else registered (every Ed25519 node key without a registry)."""
        allowed = self.config.intake.allowed_nodes
        if allowed:
            return peer_id in allowed
        try:
            key = public_key_from_peer_id(peer_id)
        except ProtocolError:  # not an Ed25519 PeerID: no node key
            return False
        return self.verifier is None or self.verifier.is_registered(key)

    def _write_maddrs(self) -> list[str]:
        maddrs = self.maddrs = [str(m) for m in self.dht.get_visible_maddrs()]
        logger.info("coordinator %s listening on %s", self.identity.peer_id, maddrs)
        if self.config.network.maddrs_file:
            write_atomic(self.config.network.maddrs_file, "\n".join(maddrs) + "\n")
        return maddrs

    def _publish_bootstrap(self, maddrs: list[str]) -> None:
        """Worker thread. A failure is logged, not fatal: nodes configured with peers still join."""
        from thinkmesh.protocol.chain.bootstrap_list import reconcile_bootstrap_peers
        from thinkmesh.protocol.chain.errors import ChainError

        try:
            change = reconcile_bootstrap_peers(self.chain.signer, self.identity.peer_id, maddrs)
        except ChainError as exc:
            logger.warning("could not publish the bootstrap multiaddrs on the ledger: %s", exc)
            return
        logger.info("ledger bootstrap list: added %s, removed %s", list(change.added) or "none",
                    list(change.removed) or "none")

    async def _start_status(self) -> None:
        obs = self.config.observability
        self.status_server = StatusServer("thinkmesh_coordinator", self.status, self.gauges,
                                          {"run": self.config.run_id, "peer_id": self.identity.peer_id})
        port = await self.status_server.start(obs.http_host, obs.http_port)
        logger.info("status on http://%s:%d/status", obs.http_host, port)
        if obs.port_file:
            write_atomic(obs.port_file, f"{port}\n")

    def status(self) -> dict:
        current = self.intake.current if self.intake else None
        return {
            "role": "coordinator", "peer_id": self.identity.peer_id, "run_id": self.config.run_id, "phase": self.phase,
            "round_id": self.round_id, "model_version": self.version,
            "model_hash": self.manifest.model_hash.hex() if self.manifest else None,
            # Adapter rounds: a version is (base hash, adapter hash); model_hash is the adapter's.
            "base_hash": self.adapter.base_hash.hex() if self.adapter else None,
            "base_bytes": self.base_manifest.total_bytes if self.adapter else None,
            "adapter": None if self.adapter is None else {"rank": self.adapter.rank, "alpha": self.adapter.alpha,
                                                          "target_modules": list(self.adapter.target_modules)},
            "open_round": None if current is None else {
                "round_id": current.announcement.round_id, "deadline_ms": current.announcement.deadline_ms,
                "accepted": [c.peer_id for c in current.accepted.values()], "refusals": len(current.refusals),
                "refusals_by_reason": dict(current.refusals.counts), "expected": sorted(self.expected)},
            "p2p": self.p2p_watch.status() if self.p2p_watch else None,
            "settlement": self.settler.backlog() if self.settler else None,
            "rounds": self.rounds, "evals": self.evals, "uptime_s": round(time.time() - self.started, 1),
        }

    def gauges(self) -> dict[str, float]:
        counters = self.service.counters if self.service else None
        current = self.intake.current if self.intake else None
        gauges = {
            "round_id": self.round_id, "model_version": self.version, "uptime_seconds": time.time() - self.started,
            "open_round_contributions": len(current.accepted) if current else 0,
            "rounds_completed": len(self.rounds),
        }
        if counters:
            gauges.update({"model_bytes_served": counters.model_bytes_served, "models_served": counters.models_served,
                           "upload_bytes_received": counters.upload_bytes_received, "uploads": counters.uploads})
            for reason, count in counters.by_reason.items():
                gauges[f"uploads_{reason.replace('-', '_')}"] = count
        if self.evals and "accuracy" in self.evals[-1]:
            gauges["heldout_accuracy"] = self.evals[-1]["accuracy"]
            gauges["heldout_reward"] = self.evals[-1]["mean_reward"]
        return gauges

    def _console(self) -> None:
        if not self.config.observability.console or self.intake is None or self.intake.current is None:
            return
        current = self.intake.current
        left = max(0.0, current.announcement.deadline_ms / 1000 - time.time())
        line = (f"[coordinator] round {current.announcement.round_id} on v{self.version}: "
                f"{len(current.accepted)} accepted, {len(current.refusals)} refused, {left:.0f}s left")
        print(line, file=sys.stderr, flush=True)

    async def shutdown(self) -> None:
        if self.settler is not None:
            await asyncio.to_thread(self.settler.shutdown)  # what is still queued stays in the journal
        if self.status_server is not None:
            await self.status_server.stop()
        if self.service is not None:
            await self.service.stop()
        if self.p2p_watch is not None:
            await self.p2p_watch.shutdown()
            self.p2p_watch = None
        self.dht = self.p2p = None
