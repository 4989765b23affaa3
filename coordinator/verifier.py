"""The coordinator's verification step: one contribution in, a verdict and its evidence file out.

`ContributionVerifier.verify` runs `protocol.verification.verify_contribution` under the round's
model with everything the pure pipeline leaves to its caller:

- the registry: node keys bound on chain (`ledger.bound_nodes`) to an Active address, re-read at
  each round's announcement and, at most every `REGISTRY_REFRESH_S`, on an unknown key;
- the replay sets: sample hashes and gradient digests of every contribution accepted in a
  committed round (restored from the settlement intents on restart, see `settlement.py`) plus
  those accepted so far in the open round; a rejected copy never joins them;
- the beacon: sha256(BEACON_DOMAIN, coordinator seed, round seed), unknown to nodes before the
  deadline (they cannot grind their audit plan) and the same after a restart; it is published in
  every evidence file, so anyone can replay the plan;
- the evidence file, `<evidence_dir>/round-NNNNNN/<node key hex>.evidence` (canonical bytes, so
  its keccak256 is the hash put on chain), and the accepted contribution itself under
  `<data_dir>/contributions/` (replay evidence and trace export read it back), as a hard link
  to the evidence file (which embeds it) where the file system allows. The contribution is
  encoded once (or not at all: intake passes the bytes it received) and those bytes serve
  everything: one sha256 pass gives the signature's payload hash and, from it, the
  contribution hash; the evidence file embeds them as they are. Only a rejection's evidence
  hash goes on chain (as the slash's evidence), so an accepted verdict's is computed from its
  file when first asked for, not on the verification path.

Thread-safety: `verify` may be called from worker threads; model work is serialized by a lock.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.protocol.audit import AuditPolicy
from thinkmesh.protocol.encoding import decode_message, encode_message
from thinkmesh.protocol.errors import EncodingError
from thinkmesh.protocol.evidence import Evidence, build_evidence, evidence_bytes, write_evidence
from thinkmesh.protocol.hashing import keccak256
from thinkmesh.protocol.messages import Contribution, RoundAnnouncement, sample_hash
from thinkmesh.protocol.verification import (
    REASON_BAD_SIGNATURE,
    REASON_REPLAY,
    REASON_UNKNOWN_NODE,
    REASON_WRONG_ROUND,
    VerificationContext,
    VerificationReport,
    contribution_digests,
    gradient_digest,
    verify_contribution,
)

logger = logging.getLogger(__name__)
BEACON_DOMAIN = b"thinkmesh/audit-beacon/v1"
REGISTRY_REFRESH_S = 5.0
# Verdicts that do not prove the registered node cheated: an unsigned or foreign message proves
# nothing about the key's owner, a wrong round is what a lagging honest node sends, and an
# unregistered key has no stake. Every other failing verdict is slashed.
UNSLASHABLE_REASONS = frozenset({REASON_BAD_SIGNATURE, REASON_WRONG_ROUND, REASON_UNKNOWN_NODE})


def audit_beacon(coordinator_seed: bytes, round_seed: bytes) -> bytes:
    """The audit plan's post-deadline randomness for one round (see the module docstring)."""
    return hashlib.sha256(BEACON_DOMAIN + coordinator_seed + round_seed).digest()


def write_file(path: Path, data: bytes) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def store_evidence(path: Path, evidence, hashed: bool) -> bytes | None:
    """Writes the evidence file; its keccak256 when `hashed` (a rejection: the hash goes on chain)."""
    if hashed:
        return write_evidence(path, evidence)
    write_file(path, evidence_bytes(evidence))
    return None


def round_dir(root: Path, round_id: int) -> Path:
    return root / f"round-{round_id:06d}"


@dataclass(frozen=True)
class VerifiedContribution:
    """One verdict: the report, the evidence file and its hash, and the paid address if registered.

    `known_evidence_hash` is set for rejections (hashed when written); `evidence_hash` reads an
    accepted verdict's file once, on first use."""

    contribution: Contribution
    report: VerificationReport
    evidence_path: Path
    known_evidence_hash: bytes | None
    address: str | None
    seconds: float

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
        return not self.report.accepted and self.report.reason not in UNSLASHABLE_REASONS and self.address is not None


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
        write_file(path, encode_message(contribution) if encoded is None else encoded)
        return path

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
    """Atomically makes `path` a hard link to `source`; False where the file system refuses."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        return False
    tmp.replace(path)
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
        if digest in self.gradients:
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
        self._registry_read_at = 0.0
        self._refreshed_for: set[bytes] = set()
        self.committed = ReplayIndex.empty()  # rounds whose settlement intent is on disk
        self.current = ReplayIndex.empty()  # the open round's accepted contributions
        self.lock = threading.Lock()  # held for every use of the model's weights

    # ---- round lifecycle -------------------------------------------------------------------
    def refresh_registry(self) -> None:
        if self._read_registry is not None:
            self.registered = self._read_registry()
            self._registry_read_at = time.monotonic()

    def open_round(self, round_id: int) -> None:
        """A fresh round (or a re-run of an uncommitted one): forget its earlier accepted state."""
        self.current = ReplayIndex.empty()
        self.archive.discard_round(round_id)
        shutil.rmtree(round_dir(self.evidence_dir, round_id), ignore_errors=True)
        self.refresh_registry()

    def commit_round(self, round_id: int, accepted: Iterable[VerifiedContribution]) -> None:
        for item in accepted:
            self.committed.add(round_id, item.contribution.node_key, item.report.sample_hashes, item.report.gradient_digest)
        self.current = ReplayIndex.empty()

    # ---- one contribution -----------------------------------------------------------------
    def _context(self, announcement: RoundAnnouncement) -> VerificationContext:
        seen = (self.committed, self.current)
        return VerificationContext(
            registered_nodes=None if self.registered is None else frozenset(self.registered),
            seen_sample_hashes=frozenset(h for index in seen for h in index.samples),
            seen_gradient_digests=frozenset(h for index in seen for h in index.gradients),
            policy=self.policy, beacon=audit_beacon(self.coordinator_seed, announcement.seed),
        )

    def _maybe_refresh(self, node_key: bytes) -> None:
        """Re-reads the registry for a key it lacks: at once the first time the key is seen (it may
        have registered a moment ago), then at most every REGISTRY_REFRESH_S."""
        if self.registered is None or node_key in self.registered:
            return
        if node_key not in self._refreshed_for or time.monotonic() - self._registry_read_at >= REGISTRY_REFRESH_S:
            self._refreshed_for.add(node_key)
            self.refresh_registry()

    def _prior(self, contribution: Contribution) -> list[Contribution]:
        sources = self.committed.sources(contribution) | self.current.sources(contribution)
        found = (self.archive.load(round_id, key) for round_id, key in sorted(sources))
        return [c for c in found if c is not None][:1]  # one suffices to re-run the verdict

    def verify(
        self, announcement: RoundAnnouncement, contribution: Contribution, encoded: bytes | None = None,
        payload_sha256: bytes | None = None,
    ) -> VerifiedContribution:
        """`encoded`: the bytes `contribution` was decoded from, when the caller has them (strict
        decoding accepts only canonical bytes, so they are `encode_message(contribution)`).
        `payload_sha256`: `unsigned_payload_hash(contribution, encoded)` when the caller has
        computed it (intake checks the signature before verification runs)."""
        started = time.perf_counter()
        with self.lock:
            self._maybe_refresh(contribution.node_key)
            context = self._context(announcement)
            encoded = encode_message(contribution) if encoded is None else encoded
            digests = contribution_digests(contribution, encoded, payload_sha256)
            report = verify_contribution(announcement, contribution, self.model, self.tokenizer, context,
                                         self.reference_model, digests, encoded)
            prior = self._prior(contribution) if report.reason == REASON_REPLAY else []
            evidence = build_evidence(announcement, contribution, report, context, self.tokenizer, prior, encoded)
            path = round_dir(self.evidence_dir, contribution.round_id) / f"{contribution.node_key.hex()}.evidence"
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = store_evidence(path, evidence, hashed=not report.accepted)
            if report.accepted:
                self.archive.save(contribution, encoded, evidence=path)
                self.current.add(contribution.round_id, contribution.node_key, report.sample_hashes, report.gradient_digest)
        address = self.registered.get(contribution.node_key) if self.registered is not None else None
        outcome = VerifiedContribution(contribution, report, path, digest, address, time.perf_counter() - started)
        logger.info("verified round %d contribution of 0x%s: %s (audit %s, %.2fs)", contribution.round_id,
                    contribution.node_key.hex()[:16], report.reason, report.gradient_audit or "-", outcome.seconds)
        return outcome
