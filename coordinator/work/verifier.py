"""The coordinator's verification step: one contribution in, a verdict and its evidence file out.

`ContributionVerifier.verify` runs `protocol.rules.verification.verify_contribution` under the round's
model with everything the pure pipeline leaves to its caller:

- the registry: node keys bound on chain (`ledger.bound_nodes`) to an Active address, re-read at
  each round's announcement and on an unknown key, rate-limited whatever keys ask: a key never
  seen may prompt a read `REGISTRY_MIN_INTERVAL_S` after the last one (so a node that registered a
  moment ago gets in), a key already looked up only every `REGISTRY_REFRESH_S`. Intake asks
  `is_registered` from the upload header, so an unregistered key is refused before its body is
  read (`registry_read_wait` says when a read could still admit it);
- the replay sets: sample hashes and gradient digests of every contribution accepted in a
  committed round (restored from the settlement intents on restart, see `settlement.py`) plus
  those admitted so far in the open round. The index of the open round changes only in `admit`,
  when intake has recorded the contribution; between its accepting verdict and that moment a
  contribution is *pending*: its hashes count as seen (a copy verified meanwhile is a replay)
  and `release` forgets them if intake refuses it after all (late, round closed), so a refused
  copy can never turn its honest original into a "replay";
- the beacon: sha256(BEACON_DOMAIN, coordinator seed, round seed), unknown to nodes before the
  deadline (they cannot grind their audit plan) and the same after a restart; it is published in
  every evidence file, so anyone can replay the plan;
- the evidence file, `<evidence_dir>/round-NNNNNN/<contribution hash hex>.evidence` (canonical
  bytes, so its keccak256 is the hash put on chain): named by what it judges, so two verdicts
  never share a file. When intake records the verdict, `<node key hex>.evidence` is made a hard
  link to it (one verdict per node and round: what traces export and operators look up). In an
  adapter round the round's adapter is written once beside them, `<model hash hex>.adapter.safetensors`
  (kilobytes to megabytes): with the public base it is the round's model a re-run needs. A
  failing verdict that cannot be slashed (`protocol.rules.slashing.slashable`, or a key with no registered
  address) gets a short JSON record, `<contribution hash hex>.verdict.json`, instead: nobody
  will ever need its megabytes to back a slash. The accepted contribution itself lies under
  `<data_dir>/contributions/` (replay evidence and trace export read it back), as a hard link
  to the evidence file (which embeds it) where the file system allows. The contribution is
  encoded once (or not at all: intake passes the bytes it received) and those bytes serve
  everything: one sha256 pass gives the signature's payload hash and, from it, the
  contribution hash; the evidence file embeds them as they are. Only a rejection's evidence
  hash goes on chain (as the slash's evidence), so an accepted verdict's is computed from its
  file when first asked for, not on the verification path. None of these files is fsynced on
  the verification path: `sync_round` makes a round's files durable in one barrier before its
  settlement intent names them (a crash before it re-runs the round and discards them).

Thread-safety: `verify` may be called from worker threads; model work is serialized by `lock`,
and the replay state (committed, open round, pending) by a short lock of its own, so `admit` and
`release` on the event loop never wait for a verification.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.protocol.rules.audit import AuditPolicy
from thinkmesh.protocol.rules.encoding import decode_message, encode_message
from thinkmesh.protocol.rules.errors import EncodingError
from thinkmesh.protocol.rules.evidence import Evidence, build_evidence, evidence_parts
from thinkmesh.protocol.rules.adapters import adapter_file_bytes, adapter_file_name
from thinkmesh.protocol.rules.hashing import keccak256, keccak256_of_parts
from thinkmesh.protocol.rules.messages import Contribution, RoundAnnouncement, sample_hash
from thinkmesh.protocol.rules.seeds import audit_beacon
from thinkmesh.protocol.rules.slashing import slashable
from thinkmesh.protocol.rules.verification import (
    REASON_REPLAY,
    VerificationContext,
    VerificationReport,
    contribution_digests,
    gradient_digest,
    verify_contribution,
)
from thinkmesh.protocol.runtime import atomic_files
from thinkmesh.protocol.runtime.atomic_files import atomic_path, write_atomic

logger = logging.getLogger(__name__)
REGISTRY_REFRESH_S = 5.0  # an unknown key already looked up prompts a registry read at most this often
REGISTRY_MIN_INTERVAL_S = 0.5  # no two registry reads closer than this, whatever keys ask
REGISTRY_NEW_KEYS = 4096  # keys per round remembered as looked up; past this every key counts as seen
SHORT_RECORD_FINDINGS = 8  # findings a short verdict record keeps


def store_evidence(path: Path, evidence, hashed: bool) -> bytes | None:
    """Writes the evidence file (its contribution's megabytes as they are, not copied into one
    buffer first); its keccak256 when `hashed` (a rejection: the hash goes on chain)."""
    parts = evidence_parts(evidence)
    write_atomic(path, parts, durable=False)
    return keccak256_of_parts(parts) if hashed else None


def round_dir(root: Path, round_id: int) -> Path:
    return root / f"round-{round_id:06d}"


def sync_round_dir(root: Path, round_id: int) -> None:
    """fsyncs a round's directory under `root`, its files, and the entry naming it, if it exists."""
    directory = round_dir(root, round_id)
    if directory.exists():
        atomic_files.fsync_tree(directory)
        atomic_files.fsync_directory(root)


def unused_path(directory: Path, stem: str, suffix: str) -> Path:
    """`<stem><suffix>` in `directory`, or `<stem>-N<suffix>` if taken: a verdict's file never
    replaces another's (the same contribution judged twice in a round keeps both)."""
    path = directory / f"{stem}{suffix}"
    n = 2
    while path.exists():
        path, n = directory / f"{stem}-{n}{suffix}", n + 1
    return path


def short_record(contribution: Contribution, report: VerificationReport, size: int, why: str) -> bytes:
    """A failing verdict nobody can be slashed for: what was judged and why, in a few hundred bytes."""
    return (json.dumps({
        "kind": "unslashable-verdict", "why": why, "round_id": contribution.round_id,
        "node_key": contribution.node_key.hex(), "contribution_hash": report.contribution_hash.hex(),
        "contribution_bytes": size, "reason": report.reason,
        "findings": [[f.sample_index, f.check[:64], f.expected, f.claimed] for f in report.findings[:SHORT_RECORD_FINDINGS]],
    }, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class VerifiedContribution:
    """One verdict: the report, the evidence file (or short record) and its hash, and the paid
    address if registered.

    `known_evidence_hash` is set for rejections (hashed when written); `evidence_hash` reads an
    accepted verdict's file once, on first use."""

    contribution: Contribution
    report: VerificationReport
    evidence_path: Path
    known_evidence_hash: bytes | None
    address: str | None
    seconds: float
    short: bool = False  # `evidence_path` is a short record (an unslashable verdict), not an evidence file

    @functools.cached_property
    def evidence_hash(self) -> bytes:
        if self.known_evidence_hash is not None:
            return self.known_evidence_hash
        return keccak256(self.evidence_path.read_bytes())

    @property
    def accepted(self) -> bool:
        return self.report.accepted

    @property
    def slashable(self) -> bool:
        return slashable(self.report.reason) and self.address is not None


class ContributionArchive:
    """Accepted contributions on disk, one file per (round, node key): the contribution's canonical
    bytes, or a hard link to its accepted verdict's evidence file, which embeds those bytes whole
    (no second copy of megabytes to write or keep)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, round_id: int, node_key: bytes) -> Path:
        return round_dir(self.root, round_id) / f"{node_key.hex()}.contribution"

    def save(self, contribution: Contribution, encoded: bytes | None = None, evidence: Path | None = None) -> Path:
        """`encoded`: `encode_message(contribution)` when the caller holds it already. `evidence`:
        the evidence file of its accepted verdict, linked instead of writing the contribution again
        (written after all where a link cannot be made, e.g. across file systems)."""
        path = self.path(contribution.round_id, contribution.node_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if evidence is not None and _link(evidence, path):
            return path
        write_atomic(path, encode_message(contribution) if encoded is None else encoded, durable=False)
        return path

    def sync_round(self, round_id: int) -> None:
        """Makes the round's files durable (they are written without fsync: see `ContributionVerifier.sync_round`)."""
        sync_round_dir(self.root, round_id)

    def load(self, round_id: int, node_key: bytes) -> Contribution | None:
        path = self.path(round_id, node_key)
        if not path.exists():
            return None
        data = path.read_bytes()
        try:
            return decode_message(data, Contribution)
        except EncodingError as as_contribution:
            try:
                return decode_message(data, Evidence).contribution
            except EncodingError:
                raise as_contribution from None

    def discard_round(self, round_id: int) -> None:
        """Forgets a round that is being re-run (it was never committed)."""
        shutil.rmtree(round_dir(self.root, round_id), ignore_errors=True)


def _link(source: Path, path: Path) -> bool:
    """Atomically makes `path` a hard link to `source` (durable at the round's `sync_round`);
    False where the file system refuses."""
    try:
        with atomic_path(path, durable=False) as tmp:
            tmp.unlink()
            os.link(source, tmp)  # the temporary becomes a second name of the evidence file
    except OSError:
        return False
    return True


@dataclass
class ReplayIndex:
    """Hash -> (round, node key) of every accepted sample and gradient: the replay sets, and where
    the earlier contribution lies for the evidence."""

    samples: dict[bytes, tuple[int, bytes]]
    gradients: dict[bytes, tuple[int, bytes]]

    @classmethod
    def empty(cls) -> ReplayIndex:
        return cls({}, {})

    def add(self, round_id: int, node_key: bytes, sample_hashes: Iterable[bytes], digest: bytes) -> None:
        for digest_of_sample in sample_hashes:
            self.samples.setdefault(digest_of_sample, (round_id, node_key))
        self.gradients.setdefault(digest, (round_id, node_key))

    def add_intent(self, intent) -> None:
        """The accepted hashes a committed round's `SettlementIntent` recorded."""
        for entry in intent.accepted:
            self.add(intent.round_id, entry.node_key, entry.sample_hashes, entry.gradient_digest)

    def sources(self, contribution: Contribution) -> set[tuple[int, bytes]]:
        found = {self.samples[h] for s in contribution.samples if (h := sample_hash(s)) in self.samples}
        digest = gradient_digest(contribution.gradient)
        if contribution.gradient.tensors and digest in self.gradients:  # an empty gradient is every node's
            found.add(self.gradients[digest])
        return found


class ContributionVerifier:
    """Verifies contributions to the open round; see the module docstring."""

    def __init__(
        self, *, model, tokenizer, policy: AuditPolicy, coordinator_seed: bytes, evidence_dir: Path,
        archive: ContributionArchive, registry: Callable[[], dict[bytes, str]] | None = None, reference_model=None,
    ):
        """`reference_model` (the base model, frozen) audits the gradients of strategies with a KL term."""
        self.model, self.tokenizer, self.policy = model, tokenizer, policy
        self.reference_model = reference_model
        self.coordinator_seed = coordinator_seed
        self.evidence_dir = evidence_dir
        self.archive = archive
        self._read_registry = registry
        self.registered: dict[bytes, str] | None = None if registry is None else {}
        self._registry_read_at = float("-inf")
        self._refreshed_for: set[bytes] = set()
        self.committed = ReplayIndex.empty()  # rounds whose settlement intent is on disk
        self.current = ReplayIndex.empty()  # the open round's admitted contributions
        self.pending: dict[bytes, VerifiedContribution] = {}  # contribution hash -> accepting verdict not yet admitted
        self.lock = threading.Lock()  # held for every use of the model's weights
        self._state = threading.Lock()  # held briefly around the replay state (committed, current, pending)

    # ---- the registry ----------------------------------------------------------------------
    def refresh_registry(self) -> None:
        """Blocking (a chain read): run it in a worker thread."""
        if self._read_registry is not None:
            self.registered = self._read_registry()
            self._registry_read_at = time.monotonic()

    def is_registered(self, node_key: bytes) -> bool:
        """From the last registry read, never blocks; True for every key without a registry."""
        registered = self.registered
        return registered is None or node_key in registered

    def registry_read_wait(self, node_key: bytes) -> float | None:
        """Seconds until a registry read that may admit `node_key` can run (0: now), or None when
        none is due for it (it was looked up moments ago): see the module docstring."""
        if self.is_registered(node_key):
            return None
        since = time.monotonic() - self._registry_read_at
        if node_key not in self._refreshed_for and len(self._refreshed_for) < REGISTRY_NEW_KEYS:
            return max(0.0, REGISTRY_MIN_INTERVAL_S - since)
        return 0.0 if since >= REGISTRY_REFRESH_S else None

    def note_registry_read_for(self, node_key: bytes) -> None:
        """`node_key` has had its registry read: later reads for it follow the slower rate."""
        if len(self._refreshed_for) < REGISTRY_NEW_KEYS:
            self._refreshed_for.add(node_key)

    def _maybe_refresh(self, node_key: bytes) -> None:
        """Re-reads the registry for a key it lacks, when `registry_read_wait` says one is due now."""
        if self.registry_read_wait(node_key) == 0.0:
            self.note_registry_read_for(node_key)
            self.refresh_registry()

    # ---- round lifecycle -------------------------------------------------------------------
    def open_round(self, round_id: int) -> None:
        """A fresh round (or a re-run of an uncommitted one): forget its earlier accepted state."""
        with self._state:
            self.current = ReplayIndex.empty()
            self.pending = {}
        self._refreshed_for = set()
        self.archive.discard_round(round_id)
        shutil.rmtree(round_dir(self.evidence_dir, round_id), ignore_errors=True)
        self.refresh_registry()

    def sync_round(self, round_id: int) -> None:
        """fsyncs the round's evidence files, short records, adapter and archived contributions,
        and their directories: the one durability barrier of a round's verdicts, run before its
        settlement intent names them (the daemon's close). Every verdict's files are written with
        an atomic rename but no fsync, so a verification pays for no disk flush of megabytes it may
        never need: a crash before this barrier re-runs the round, whose files `open_round`
        discards anyway."""
        sync_round_dir(self.evidence_dir, round_id)
        self.archive.sync_round(round_id)

    def commit_round(self, round_id: int, accepted: Iterable[VerifiedContribution]) -> None:
        with self._state:
            for item in accepted:
                self.committed.add(round_id, item.contribution.node_key, item.report.sample_hashes,
                                   item.report.gradient_digest)
            self.current = ReplayIndex.empty()
            self.pending = {}

    # ---- intake's decision on a verdict ------------------------------------------------------
    def admit(self, verified: VerifiedContribution) -> None:
        """Intake recorded `verified` (accepted or rejected): an accepted one joins the open
        round's replay set, and `<node key>.evidence` links to its evidence. Event-loop safe."""
        contribution, report = verified.contribution, verified.report
        with self._state:
            self.pending.pop(report.contribution_hash, None)
            if report.accepted:
                self.current.add(contribution.round_id, contribution.node_key, report.sample_hashes, report.gradient_digest)
        if not verified.short:
            _link(verified.evidence_path, verified.evidence_path.with_name(f"{contribution.node_key.hex()}.evidence"))

    def release(self, verified: VerifiedContribution) -> None:
        """Intake refused `verified` after all: its hashes stop counting as seen and its files go."""
        with self._state:
            self.pending.pop(verified.report.contribution_hash, None)
        if verified.report.accepted:
            archived = self.archive.path(verified.contribution.round_id, verified.contribution.node_key)
            if _same_file(archived, verified.evidence_path):
                archived.unlink(missing_ok=True)
        verified.evidence_path.unlink(missing_ok=True)

    # ---- one contribution -----------------------------------------------------------------
    def _seen(self) -> tuple[tuple[ReplayIndex, ...], dict[tuple[int, bytes], Contribution]]:
        """The replay sets to judge against (committed, admitted, pending) and the pending
        contributions by (round, node key); call with `_state` held."""
        pending, contributions = ReplayIndex.empty(), {}
        for item in self.pending.values():
            key = (item.contribution.round_id, item.contribution.node_key)
            pending.add(*key, item.report.sample_hashes, item.report.gradient_digest)
            contributions[key] = item.contribution
        return (self.committed, self.current, pending), contributions

    def _context(self, announcement: RoundAnnouncement, seen: tuple[ReplayIndex, ...]) -> VerificationContext:
        return VerificationContext(
            registered_nodes=None if self.registered is None else frozenset(self.registered),
            seen_sample_hashes=frozenset(h for index in seen for h in index.samples),
            seen_gradient_digests=frozenset(h for index in seen for h in index.gradients),
            policy=self.policy, beacon=audit_beacon(self.coordinator_seed, announcement.seed),
        )

    def _prior(self, contribution: Contribution, seen: tuple[ReplayIndex, ...],
               pending: dict[tuple[int, bytes], Contribution]) -> list[Contribution]:
        sources = set().union(*(index.sources(contribution) for index in seen))
        found = (pending.get(source) or self.archive.load(*source) for source in sorted(sources))
        return [c for c in found if c is not None][:1]  # one suffices to re-run the verdict

    def verify(
        self, announcement: RoundAnnouncement, contribution: Contribution, encoded: bytes | None = None,
        payload_sha256: bytes | None = None,
    ) -> VerifiedContribution:
        """`encoded`: the bytes `contribution` was decoded from, when the caller has them (strict
        decoding accepts only canonical bytes, so they are `encode_message(contribution)`).
        `payload_sha256`: `unsigned_payload_hash(contribution, encoded)` when the caller has
        computed it (intake checks the signature before verification runs). An accepting verdict
        is pending until `admit` or `release`; nothing else of the replay state changes here."""
        started = time.perf_counter()
        with self.lock:
            self._maybe_refresh(contribution.node_key)
            with self._state:  # the loop thread admits and commits meanwhile: copy the sets out first
                seen, pending = self._seen()
                context = self._context(announcement, seen)
            encoded = encode_message(contribution) if encoded is None else encoded
            digests = contribution_digests(contribution, encoded, payload_sha256)
            report = verify_contribution(announcement, contribution, self.model, self.tokenizer, context,
                                         self.reference_model, digests, encoded)
            address = self.registered.get(contribution.node_key) if self.registered is not None else None
            directory = round_dir(self.evidence_dir, contribution.round_id)
            directory.mkdir(parents=True, exist_ok=True)
            stem = report.contribution_hash.hex()
            unslashable = not slashable(report.reason) or address is None
            if not report.accepted and unslashable:
                why = "no registered address" if slashable(report.reason) else "unslashable reason"
                record = short_record(contribution, report, len(encoded), why)
                path = unused_path(directory, stem, ".verdict.json")
                write_atomic(path, record, durable=False)
                digest, short = keccak256(record), True
            else:
                prior = self._prior(contribution, seen, pending) if report.reason == REASON_REPLAY else []
                evidence = build_evidence(announcement, contribution, report, context, self.tokenizer, prior, encoded)
                path = unused_path(directory, stem, ".evidence")
                digest, short = store_evidence(path, evidence, hashed=not report.accepted), False
                if announcement.adapter is not None:  # the adapter a re-run attaches to the public base
                    adapter_path = directory / adapter_file_name(announcement.model_hash)
                    if not adapter_path.exists():
                        write_atomic(adapter_path, adapter_file_bytes(self.model), durable=False)
            outcome = VerifiedContribution(contribution, report, path, digest, address,
                                           time.perf_counter() - started, short)
            if report.accepted:
                self.archive.save(contribution, encoded, evidence=path)
                with self._state:
                    self.pending[report.contribution_hash] = outcome
        logger.info("verified round %d contribution of 0x%s: %s (audit %s, %.2fs)", contribution.round_id,
                    contribution.node_key.hex()[:16], report.reason, report.gradient_audit or "-", outcome.seconds)
        return outcome


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
