"""Contribution intake: which uploads the open round accepts, and why the others are refused.

Three steps, so the expensive part never runs for an upload that is refused anyway and the
round's state changes in one place only:

1. `check_header` (event loop, before the body is read): no round open or past the deadline ->
   late; another round -> wrong-round; over the size limit -> oversized; a sender whose libp2p
   PeerID is not the claimed node key -> wrong-peer; a key outside `allowed_nodes` ->
   unknown-node; a second upload from one node -> duplicate.
2. `decode` (pure, may run in a worker thread): canonical `Contribution` bytes, signature by the
   node key, header/body agreement, announced round and model, a gradient that decodes to the
   model's exact names and shapes. With a `verify` hook (the coordinator's `ContributionVerifier`)
   every contribution that is signed for the open round and model is then re-scored; a failing
   verdict becomes a `RejectedContribution` (it carries the evidence and is slashed at settlement).
3. `admit` (event loop): re-checks deadline and duplicates, then records the contribution (in
   `accepted`, or in `rejected` for a failed verdict: a node gets one verdict per round).
A refusal at any step leaves the round exactly as it was, apart from the refusal log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from thinkmesh.protocol.encoding import decode_message
from thinkmesh.protocol.errors import EncodingError, ProtocolError, SignatureError
from thinkmesh.protocol.gradient_codec import decode_gradient
from thinkmesh.protocol.identity import peer_id_from_public_key
from thinkmesh.protocol.messages import (
    Contribution,
    RoundAnnouncement,
    samples_root,
    unsigned_payload_hash,
    verify_message,
)
from thinkmesh.protocol.rewards import total_reward
from thinkmesh.protocol.strategies import validate_strategy
from thinkmesh.protocol.transport import Receipt, RefusalReason, UploadHeader, refusal


# The receipt a failed verdict gets: the wire's refusal reasons predate verification, so every
# verdict without its own reason is reported as malformed, with the verdict named in the detail.
VERDICT_REFUSALS = {
    "bad-signature": RefusalReason.BAD_SIGNATURE,
    "wrong-round": RefusalReason.WRONG_ROUND,
    "unknown-node": RefusalReason.UNKNOWN_NODE,
}


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


@dataclass(frozen=True)
class Refusal:
    peer_id: str
    round_id: int
    reason: str
    detail: str


@dataclass
class OpenRound:
    announcement: RoundAnnouncement
    accepted: dict[bytes, AcceptedContribution] = field(default_factory=dict)
    rejected: dict[bytes, RejectedContribution] = field(default_factory=dict)
    refusals: list[Refusal] = field(default_factory=list)


class ContributionIntake:
    """The open round's set of accepted contributions and its refusal log (loop-thread only)."""

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
    ):
        self.chain_id = chain_id
        self.run_id = run_id
        self.param_shapes = dict(param_shapes)
        self.max_bytes = max_bytes
        self.allowed_nodes = allowed_nodes
        self.compressions = compressions
        self.verify = verify
        self.current: OpenRound | None = None
        self.refusal_counts: dict[str, int] = {}

    def open(self, announcement: RoundAnnouncement) -> None:
        self.current = OpenRound(announcement)

    def close(self) -> OpenRound | None:
        closed, self.current = self.current, None
        return closed

    def _refuse(self, peer_id: str, round_id: int, reason: RefusalReason, detail: str) -> Receipt:
        self.refusal_counts[reason.value] = self.refusal_counts.get(reason.value, 0) + 1
        if self.current is not None:
            self.current.refusals.append(Refusal(peer_id, round_id, reason.value, detail))
        return refusal(round_id, reason, detail)

    def check_header(self, header: UploadHeader, sender: str, now_ms: int) -> Receipt | None:
        """A refusal, or None when the body may be read."""
        current = self.current
        if header.run_id != self.run_id:
            return self._refuse(sender, header.round_id, RefusalReason.WRONG_ROUND, f"run {header.run_id!r}, open run is {self.run_id!r}")
        if current is None:
            return self._refuse(sender, header.round_id, RefusalReason.LATE, "no round is open")
        open_id = current.announcement.round_id
        if header.round_id != open_id:
            return self._refuse(sender, header.round_id, RefusalReason.WRONG_ROUND, f"round {header.round_id}, open round is {open_id}")
        if now_ms > current.announcement.deadline_ms:
            return self._refuse(sender, header.round_id, RefusalReason.LATE, f"{now_ms - current.announcement.deadline_ms} ms after the deadline")
        if not 0 < header.total_bytes <= self.max_bytes:
            return self._refuse(sender, header.round_id, RefusalReason.OVERSIZED, f"{header.total_bytes} bytes, limit {self.max_bytes}")
        claimed = peer_id_from_public_key(header.node_key)
        if claimed != sender:
            return self._refuse(sender, header.round_id, RefusalReason.WRONG_PEER, f"header names {claimed}, stream is from {sender}")
        if self.allowed_nodes and sender not in self.allowed_nodes:
            return self._refuse(sender, header.round_id, RefusalReason.UNKNOWN_NODE, f"{sender} is not admitted")
        if header.node_key in current.accepted or header.node_key in current.rejected:
            return self._refuse(sender, header.round_id, RefusalReason.DUPLICATE, "this node already contributed")
        return None

    def decode(
        self, header: UploadHeader, body: bytes, now_ms: int
    ) -> AcceptedContribution | RejectedContribution | tuple[RefusalReason, str]:
        """Pure: the accepted record, or (reason, detail). Safe to call from a worker thread."""
        announcement = self.current.announcement if self.current is not None else None
        if announcement is None:
            return RefusalReason.LATE, "the round closed while the body arrived"
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
        try:
            strategy = validate_strategy(contribution.strategy)
            if samples_root(contribution.samples) != contribution.samples_root:
                return RefusalReason.MALFORMED, "samples_root does not commit to the samples"
            if contribution.gradient.compression not in self.compressions:
                return RefusalReason.MALFORMED, f"compression {contribution.gradient.compression!r} is not accepted"
            gradients = decode_gradient(contribution.gradient, self.param_shapes, max_total_bytes=self.max_bytes)
        except ProtocolError as exc:
            return RefusalReason.MALFORMED, str(exc)
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

    def admit(
        self, header: UploadHeader, sender: str,
        outcome: AcceptedContribution | RejectedContribution | tuple[RefusalReason, str], now_ms: int,
    ) -> Receipt:
        if isinstance(outcome, tuple):
            return self._refuse(sender, header.round_id, outcome[0], outcome[1])
        current = self.current
        if current is None or current.announcement.round_id != outcome.round_id:
            return self._refuse(sender, header.round_id, RefusalReason.LATE, "the round closed while the body arrived")
        if now_ms > current.announcement.deadline_ms:
            return self._refuse(sender, header.round_id, RefusalReason.LATE, "the body arrived after the deadline")
        if outcome.node_key in current.accepted or outcome.node_key in current.rejected:
            return self._refuse(sender, header.round_id, RefusalReason.DUPLICATE, "this node already contributed")
        if isinstance(outcome, RejectedContribution):
            current.rejected[outcome.node_key] = outcome
            return self._refuse(sender, header.round_id, VERDICT_REFUSALS.get(outcome.reason, RefusalReason.MALFORMED),
                                outcome.detail)
        current.accepted[outcome.node_key] = outcome
        return refusal(outcome.round_id, RefusalReason.OK, f"accepted {outcome.samples} samples")
