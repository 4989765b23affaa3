"""Contribution intake: which uploads the open round accepts, and why the others are refused.

Three steps, so the expensive part never runs for an upload that is refused anyway and the
round's state changes in one place only:

1. `check_header` (event loop, before the body is read): no round open or past the deadline ->
   late; another run or round -> wrong-round; more bytes than an honest contribution to this
   round can take (`intake_bounds.contribution_byte_bound`) -> oversized; a sender whose libp2p
   PeerID is not the claimed node key -> wrong-peer; a key outside `allowed_nodes`, or not in
   the registry's last read -> unknown-node (the service first awaits a registry read when
   `registry_wait` says one may admit the key); a node that already has a verdict, or an upload
   in flight, this round -> duplicate.
2. `decode` (no I/O, may run in a worker thread): canonical `Contribution` bytes, header/body
   agreement, signature by the node key, announced round and model, a strategy within the
   round's terms (without a verifier; with one, its model-free `off-terms` check refuses and
   slashes it), an accepted compression, and *every* gradient tensor decoded (the model's
   names and shapes, within size, finite). Only then the `verify` hook (the coordinator's
   `ContributionVerifier`) re-scores it: a contribution intake would refuse never reaches the
   verifier, so no verifier state ever comes from one. A failing verdict becomes a
   `RejectedContribution` (it carries the evidence and is slashed at settlement).
3. `admit` (event loop): re-checks deadline and duplicates, then records the contribution (in
   `accepted`, or in `rejected` for a failed verdict: a node gets one verdict per round) and
   tells the verifier (`admit_verdict`: the accepted hashes join the replay set); a verdict
   refused here after all goes back (`drop_verdict`), leaving no trace in the replay state.
A refusal at any step leaves the round exactly as it was, apart from the refusal log, which is
bounded: counts by reason for all, and the first `KEPT_PER_REASON` of each reason (at most
`KEPT_REFUSALS`) with details cut to `DETAIL_CHARS` printable characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from torch import Tensor

from thinkmesh.coordinator.work.intake_bounds import (
    RoundTermsView,
    contribution_byte_bound,
    gradient_byte_bound,
    round_terms,
    terms_violation,
)
from thinkmesh.protocol.rules.encoding import decode_message
from thinkmesh.protocol.rules.errors import EncodingError, ProtocolError, SignatureError
from thinkmesh.protocol.rules.generation import is_generation
from thinkmesh.protocol.rules.gradient_codec import decode_gradient
from thinkmesh.protocol.rules.identity import peer_id_from_public_key
from thinkmesh.protocol.rules.messages import (
    Contribution,
    RoundAnnouncement,
    samples_root,
    unsigned_payload_hash,
    verify_message,
)
from thinkmesh.protocol.rules.rewards import total_reward
from thinkmesh.protocol.rules.strategies import validate_strategy
from thinkmesh.protocol.p2p.transport import Receipt, RefusalReason, UploadHeader, refusal, refusal_for_verdict

DETAIL_CHARS = 200  # a stored refusal's detail, in characters
KEPT_PER_REASON = 4  # refusals kept in full per reason and round; the rest are counted
KEPT_REFUSALS = 32  # and at most this many in all


def clip_text(text: str, limit: int = DETAIL_CHARS) -> str:
    """At most `limit` characters, each printable: longer text is cut (ending in "..."), and a
    non-printable character becomes "?" (one for one, never an escape sequence), so what is
    stored never outgrows `limit` whatever a peer sent."""
    head = text[: limit + 1]
    clean = "".join(c if c.isprintable() else "?" for c in head)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


class NodeRegistry(Protocol):
    """The registry intake consults from the header (`ContributionVerifier` is one)."""

    def is_registered(self, node_key: bytes) -> bool: ...  # from the last read; never blocks

    def registry_read_wait(self, node_key: bytes) -> float | None: ...  # see ContributionVerifier

    def note_registry_read_for(self, node_key: bytes) -> None: ...

    def refresh_registry(self) -> None: ...  # blocking: a worker thread's


@dataclass(frozen=True)
class AcceptedContribution:
    node_key: bytes
    peer_id: str
    round_id: int
    samples: int
    gradients: Mapping[str, Tensor]
    compression: str
    gradient_bytes: int
    upload_bytes: int
    strategy: str
    loss: str
    mean_reward: float
    accuracy: float
    arrived_ms: int
    verified: Any = None  # the `VerifiedContribution` when a verify hook ran


@dataclass(frozen=True)
class RejectedContribution:
    """A signed contribution whose verdict failed: kept for settlement (slashing), never aggregated."""

    node_key: bytes
    peer_id: str
    round_id: int
    reason: str
    detail: str
    verified: Any  # the `VerifiedContribution` (report, evidence path and hash)


Outcome = AcceptedContribution | RejectedContribution | tuple[RefusalReason, str]


@dataclass(frozen=True)
class Refusal:
    peer_id: str
    round_id: int
    reason: str
    detail: str  # at most DETAIL_CHARS printable characters


@dataclass
class RefusalLog:
    """One round's refusals: every one counted by reason, a bounded few kept in full."""

    counts: dict[str, int] = field(default_factory=dict)
    kept: list[Refusal] = field(default_factory=list)
    last: Refusal | None = None

    def add(self, item: Refusal) -> None:
        seen = self.counts.get(item.reason, 0)
        self.counts[item.reason] = seen + 1
        if seen < KEPT_PER_REASON and len(self.kept) < KEPT_REFUSALS:
            self.kept.append(item)
        self.last = item

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __iter__(self) -> Iterator[Refusal]:
        return iter(self.kept)

    def as_record(self, exclude_peers: frozenset[str] | set[str] = frozenset()) -> dict:
        """What a round record keeps: the total, the counts by reason, and the kept refusals."""
        return {"total": len(self), "by_reason": dict(self.counts),
                "kept": [asdict(r) for r in self.kept if r.peer_id not in exclude_peers]}


@dataclass
class OpenRound:
    announcement: RoundAnnouncement
    byte_bound: int = 0  # the largest upload the round accepts (`intake_bounds`)
    terms: RoundTermsView | None = None
    accepted: dict[bytes, AcceptedContribution] = field(default_factory=dict)
    rejected: dict[bytes, RejectedContribution] = field(default_factory=dict)
    refusals: RefusalLog = field(default_factory=RefusalLog)
    in_flight: set[bytes] = field(default_factory=set)  # node keys whose upload is being read or judged


class ContributionIntake:
    """The open round's set of accepted contributions and its refusal log (loop-thread only,
    `decode` aside)."""

    def __init__(
        self,
        *,
        chain_id: int,
        run_id: str,
        param_shapes: Mapping[str, tuple[int, ...]],
        max_bytes: int,
        allowed_nodes: frozenset[str] = frozenset(),
        compressions: frozenset[str] = frozenset({"none", "fp16", "uniform8", "blockwise8"}),
        verify: Callable[[RoundAnnouncement, Contribution, bytes, bytes], Any] | None = None,
        registry: NodeRegistry | None = None,
        admit_verdict: Callable[[Any], None] | None = None,
        drop_verdict: Callable[[Any], None] | None = None,
    ):
        """`verify`, `admit_verdict`, `drop_verdict`: the verifier's `verify`, `admit` and
        `release`; `registry`: the verifier, when it has a registry (None: every key passes)."""
        self.chain_id = chain_id
        self.run_id = run_id
        self.param_shapes = dict(param_shapes)
        self.max_bytes = max_bytes
        self.allowed_nodes = allowed_nodes
        self.compressions = compressions
        self.verify = verify
        self.registry = registry
        self.admit_verdict = admit_verdict
        self.drop_verdict = drop_verdict
        self.gradient_bound = min(max_bytes, gradient_byte_bound(self.param_shapes, compressions))
        self.current: OpenRound | None = None
        self.refusal_counts: dict[str, int] = {}

    def open(self, announcement: RoundAnnouncement) -> None:
        bound = contribution_byte_bound(announcement, self.param_shapes, self.compressions, self.max_bytes)
        self.current = OpenRound(announcement, byte_bound=bound, terms=round_terms(announcement))

    def close(self) -> OpenRound | None:
        closed, self.current = self.current, None
        return closed

    # ---- refusals ----------------------------------------------------------------------------
    def record_refusal(self, peer_id: str, round_id: int, reason: str, detail: str) -> str:
        """Counts and (boundedly) keeps one refusal; returns the clipped detail."""
        detail = clip_text(detail)
        self.refusal_counts[reason] = self.refusal_counts.get(reason, 0) + 1
        if self.current is not None:
            self.current.refusals.add(Refusal(clip_text(peer_id, 64), round_id, reason, detail))
        return detail

    def refuse(self, peer_id: str, round_id: int, reason: RefusalReason, detail: str) -> Receipt:
        return refusal(round_id, reason, self.record_refusal(peer_id, round_id, reason.value, detail))

    # ---- 1. the header -------------------------------------------------------------------------
    def registry_wait(self, header: UploadHeader, sender: str) -> float | None:
        """Seconds to wait for a registry read that may admit the header's key (0: now), or None
        when no read would change `check_header`'s answer."""
        current = self.current
        if self.registry is None or self.registry.is_registered(header.node_key) or current is None:
            return None
        if header.run_id != self.run_id or header.round_id != current.announcement.round_id:
            return None
        if not 0 < header.total_bytes <= current.byte_bound:
            return None
        if peer_id_from_public_key(header.node_key) != sender:
            return None
        return self.registry.registry_read_wait(header.node_key)

    def check_header(self, header: UploadHeader, sender: str, now_ms: int) -> Receipt | None:
        """A refusal, or None when the body may be read."""
        current = self.current
        if header.run_id != self.run_id:
            return self.refuse(sender, header.round_id, RefusalReason.WRONG_ROUND,
                                f"run {clip_text(header.run_id, 64)}, open run is {self.run_id}")
        if current is None:
            return self.refuse(sender, header.round_id, RefusalReason.LATE, "no round is open")
        open_id = current.announcement.round_id
        if header.round_id != open_id:
            return self.refuse(sender, header.round_id, RefusalReason.WRONG_ROUND, f"round {header.round_id}, open round is {open_id}")
        if now_ms > current.announcement.deadline_ms:
            return self.refuse(sender, header.round_id, RefusalReason.LATE, f"{now_ms - current.announcement.deadline_ms} ms after the deadline")
        if not 0 < header.total_bytes <= current.byte_bound:
            return self.refuse(sender, header.round_id, RefusalReason.OVERSIZED,
                                f"{header.total_bytes} bytes, the round's limit is {current.byte_bound}")
        claimed = peer_id_from_public_key(header.node_key)
        if claimed != sender:
            return self.refuse(sender, header.round_id, RefusalReason.WRONG_PEER, f"header names {claimed}, stream is from {sender}")
        if self.allowed_nodes and sender not in self.allowed_nodes:
            return self.refuse(sender, header.round_id, RefusalReason.UNKNOWN_NODE, f"{sender} is not admitted")
        if self.registry is not None and not self.registry.is_registered(header.node_key):
            return self.refuse(sender, header.round_id, RefusalReason.UNKNOWN_NODE, f"{sender} is not registered")
        if header.node_key in current.accepted or header.node_key in current.rejected:
            return self.refuse(sender, header.round_id, RefusalReason.DUPLICATE, "this node already contributed")
        if header.node_key in current.in_flight:
            return self.refuse(sender, header.round_id, RefusalReason.DUPLICATE, "an upload from this node is in flight")
        return None

    def start_upload(self, header: UploadHeader) -> None:
        """The header passed: its node has an upload in flight until `end_upload`."""
        if self.current is not None:
            self.current.in_flight.add(header.node_key)

    def end_upload(self, header: UploadHeader) -> None:
        if self.current is not None:
            self.current.in_flight.discard(header.node_key)

    # ---- 2. the body ---------------------------------------------------------------------------
    def decode(self, header: UploadHeader, body: bytes, now_ms: int) -> Outcome:
        """The accepted or rejected record, or (reason, detail). Safe to call from a worker thread."""
        current = self.current
        if current is None:
            return RefusalReason.LATE, "the round closed while the body arrived"
        announcement = current.announcement
        try:
            contribution = decode_message(body, Contribution)
        except EncodingError as exc:
            return RefusalReason.MALFORMED, str(exc)
        if contribution.node_key != header.node_key:
            return RefusalReason.MALFORMED, "the body's node key differs from the header's"
        payload = unsigned_payload_hash(contribution, body)  # strict decoding: body is the canonical encoding
        try:
            verify_message(contribution, contribution.node_key, payload_sha256=payload)
        except SignatureError as exc:
            return RefusalReason.BAD_SIGNATURE, str(exc)
        if (contribution.chain_id, contribution.run_id, contribution.round_id) != (
            announcement.chain_id, announcement.run_id, announcement.round_id,
        ):
            return RefusalReason.WRONG_ROUND, f"contribution for round {contribution.round_id}, open round is {announcement.round_id}"
        if contribution.model_hash != announcement.model_hash:
            return RefusalReason.WRONG_MODEL, f"computed on 0x{contribution.model_hash.hex()[:16]}, announced 0x{announcement.model_hash.hex()[:16]}"
        try:
            strategy = validate_strategy(contribution.strategy)
            violation = terms_violation(strategy, current.terms or round_terms(announcement))
            if violation is not None and self.verify is None:  # else the verifier's off-terms: slashable, and cheap
                return RefusalReason.MALFORMED, violation
            if contribution.gradient.compression not in self.compressions:
                return RefusalReason.MALFORMED, f"compression {contribution.gradient.compression!r} is not accepted"
            if self.verify is None and samples_root(contribution.samples) != contribution.samples_root:
                return RefusalReason.MALFORMED, "samples_root does not commit to the samples"  # else the verifier's (slashable) call
            if is_generation(announcement):  # samples only: the verifier requires the empty gradient (slashable)
                if self.verify is None and contribution.gradient.tensors:
                    return RefusalReason.MALFORMED, "a generation round's contribution carries no gradient tensors"
                gradients = {}
            else:
                gradients = decode_gradient(contribution.gradient, self.param_shapes, max_total_bytes=self.gradient_bound)
        except ProtocolError as exc:
            return RefusalReason.MALFORMED, str(exc)
        verified = None
        if self.verify is not None:
            try:
                verified = self.verify(announcement, contribution, body, payload)  # one hash pass serves both
            except ProtocolError as exc:  # a contribution the pipeline cannot run on (e.g. no KL reference)
                return RefusalReason.MALFORMED, f"verification could not run: {exc}"
            if not verified.accepted:
                detail = f"verification: {verified.report.reason} (evidence 0x{verified.evidence_hash.hex()[:16]})"
                return RejectedContribution(contribution.node_key, peer_id_from_public_key(contribution.node_key),
                                            contribution.round_id, verified.report.reason, detail, verified)
        rewards = [total_reward(s.rewards) for s in contribution.samples]
        return AcceptedContribution(
            node_key=contribution.node_key, peer_id=peer_id_from_public_key(contribution.node_key),
            round_id=contribution.round_id, samples=len(contribution.samples), gradients=gradients,
            compression=contribution.gradient.compression, gradient_bytes=contribution.gradient.nbytes,
            upload_bytes=len(body), strategy=strategy.name, loss=strategy.loss,
            mean_reward=sum(rewards) / len(rewards),
            accuracy=sum(s.rewards.accuracy for s in contribution.samples) / len(contribution.samples),
            arrived_ms=now_ms, verified=verified,
        )

    # ---- 3. the decision -------------------------------------------------------------------------
    def admit(self, header: UploadHeader, sender: str, outcome: Outcome, now_ms: int) -> Receipt:
        if isinstance(outcome, tuple):
            return self.refuse(sender, header.round_id, outcome[0], outcome[1])
        current = self.current
        if current is None or current.announcement.round_id != outcome.round_id:
            self.discard(outcome)
            return self.refuse(sender, header.round_id, RefusalReason.LATE, "the round closed while the body arrived")
        if now_ms > current.announcement.deadline_ms:
            self.discard(outcome)
            return self.refuse(sender, header.round_id, RefusalReason.LATE, "the body arrived after the deadline")
        if outcome.node_key in current.accepted or outcome.node_key in current.rejected:
            self.discard(outcome)
            return self.refuse(sender, header.round_id, RefusalReason.DUPLICATE, "this node already contributed")
        if outcome.verified is not None and self.admit_verdict is not None:
            self.admit_verdict(outcome.verified)
        if isinstance(outcome, RejectedContribution):
            current.rejected[outcome.node_key] = outcome
            return self.refuse(sender, header.round_id, refusal_for_verdict(outcome.reason),
                                outcome.detail)
        current.accepted[outcome.node_key] = outcome
        return refusal(outcome.round_id, RefusalReason.OK, f"accepted {outcome.samples} samples")

    def discard(self, outcome: Outcome) -> None:
        """An outcome that will never be admitted: its verdict goes back to the verifier."""
        verified = None if isinstance(outcome, tuple) else outcome.verified
        if verified is not None and self.drop_verdict is not None:
            self.drop_verdict(verified)
