"""The ledger's records and rules, as the contract `ThinkMeshLedger` defines them.

Values and functions, pure but for `Deployment.save`/`load` (the deployment record's JSON file):
what a settlement records, how it is ordered and hashed, how a seed is committed, what each slash
reason means. The coordinator builds these records, the chain
client (`protocol/chain/client.py`) sends them, and any third party can recompute a round's settlement
hash from its published awards and compare it with the chain's.

Units: token amounts are integers in the reward token's smallest unit (18 decimals); scores and
round metrics are fixed point with `SCORE_SCALE` = 1.0; times are unix seconds; hashes are 32 raw
bytes.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eth_abi import encode as abi_encode
from eth_utils import is_address, to_checksum_address

from thinkmesh.protocol.rules.hashing import keccak256

from thinkmesh.protocol.chain.errors import LedgerRecordError
from thinkmesh.protocol.rules.errors import SignatureError
from thinkmesh.protocol.rules.identity import IdentityBinding, verify_binding
from thinkmesh.protocol.rules.payout import SCORE_SCALE
from thinkmesh.protocol.rules.strategies import MAX_NAME_BYTES
from thinkmesh.protocol.runtime.atomic_files import write_atomic

if TYPE_CHECKING:
    from thinkmesh.protocol.chain.round_details import RoundDetails

TOKEN_DECIMALS = 18
HASH_BYTES = 32
# The contract's size limits (contracts/src/LedgerStorage.sol; tests/contracts/test_size_limits.py
# keeps them equal): a longer value is refused here, before a transaction that would revert.
MAX_PEER_ID_BYTES = 64
ED25519_SIGNATURE_BYTES = 64
EVM_SIGNATURE_BYTES = 65
BINDING_BYTES = ED25519_SIGNATURE_BYTES + EVM_SIGNATURE_BYTES
MAX_STRATEGY_BYTES = MAX_NAME_BYTES  # a node registers its strategy's name, which the rules bound
MAX_ENDPOINT_BYTES = 256
MAX_MULTIADDR_BYTES = 256
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
UINT96_MAX = 2**96 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
AWARD_ABI_TYPE = "(address,uint32,uint64,uint96)"
ROUND_STATS_ABI_TYPE = "(uint32,uint32,int64,uint32)"
SETTLE_ARGUMENT_TYPES = ("uint64", "bytes32", "bytes32", f"{AWARD_ABI_TYPE}[]", ROUND_STATS_ABI_TYPE)
# settleRoundWithDetails appends a RoundDetails (protocol/chain/round_details.py: ROUND_DETAILS_ABI_TYPE)
DETAILS_ABI_TYPE = "(uint8,bytes32,uint96,(string,uint32,int64,uint64)[])"


class NodeStatus(enum.IntEnum):
    NONE = 0
    ACTIVE = 1
    UNBONDING = 2
    EXITED = 3


class RoundStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    SETTLED = 2


def tokens(amount: int | str, decimals: int = TOKEN_DECIMALS) -> int:
    """Whole tokens (an int, or a decimal string like "1.5") in the token's smallest unit, exactly."""
    with decimal.localcontext() as context:
        context.prec = 100
        try:
            value = decimal.Decimal(str(amount))
        except decimal.InvalidOperation:
            value = decimal.Decimal("NaN")
        scaled = value * (10**decimals) if value.is_finite() else value
        if not scaled.is_finite() or scaled < 0 or scaled != scaled.to_integral_value():
            raise LedgerRecordError(f"expected a non-negative amount with at most {decimals} decimals, got {amount!r}")
        return int(scaled)


def checksum_address(value: str, what: str = "address") -> str:
    if not isinstance(value, str) or not is_address(value):
        raise LedgerRecordError(f"expected {what} as a 20-byte hex address, got {value!r}")
    return to_checksum_address(value)


def hash32(value: bytes, what: str = "hash") -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_BYTES:
        shown = f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        raise LedgerRecordError(f"expected {what} as {HASH_BYTES} bytes, got {shown}")
    return bytes(value)


def _uint(value: int, maximum: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise LedgerRecordError(f"expected {what} as an integer in 0..{maximum}, got {value!r}")
    return value


def score_to_fixed(score: float) -> int:
    """A score in [0, UINT64_MAX / SCORE_SCALE] as the ledger's fixed-point integer (rounded half to even)."""
    fixed = round(score * SCORE_SCALE)
    return _uint(fixed, UINT64_MAX, "score * SCORE_SCALE")


@dataclass(frozen=True)
class Award:
    """One accepted node's line in a settlement: verified samples, score (fixed point), payout (token units)."""

    node: str
    verified_samples: int
    score: int
    payout: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "node", checksum_address(self.node, "award node"))
        _uint(self.verified_samples, UINT32_MAX, "verified_samples")
        _uint(self.score, UINT64_MAX, "score")
        _uint(self.payout, UINT96_MAX, "payout")

    def as_abi(self) -> tuple[str, int, int, int]:
        return (self.node, self.verified_samples, self.score, self.payout)


@dataclass(frozen=True)
class RoundStats:
    """A round's quality figures, published in the settle transaction's `RoundMetrics` event.

    `mean_reward` (signed) and `held_out_accuracy` are fixed point with `SCORE_SCALE` = 1.0; build
    from floats with `RoundStats.of`. The settlement hash covers them, so a retried settlement must
    carry the same figures (they are derived from the coordinator's persisted round record).
    """

    accepted: int = 0
    rejected: int = 0
    mean_reward: int = 0
    held_out_accuracy: int = 0

    def __post_init__(self) -> None:
        _uint(self.accepted, UINT32_MAX, "accepted")
        _uint(self.rejected, UINT32_MAX, "rejected")
        if not isinstance(self.mean_reward, int) or not INT64_MIN <= self.mean_reward <= INT64_MAX:
            raise LedgerRecordError(f"expected mean_reward as a signed 64-bit integer, got {self.mean_reward!r}")
        _uint(self.held_out_accuracy, SCORE_SCALE, "held_out_accuracy * SCORE_SCALE")

    @classmethod
    def of(cls, accepted: int, rejected: int, mean_reward: float, held_out_accuracy: float) -> RoundStats:
        """From float figures (rounded half to even to the fixed-point grid)."""
        return cls(accepted, rejected, round(mean_reward * SCORE_SCALE), round(held_out_accuracy * SCORE_SCALE))

    def as_abi(self) -> tuple[int, int, int, int]:
        return (self.accepted, self.rejected, self.mean_reward, self.held_out_accuracy)


def canonical_awards(awards: Iterable[Award]) -> tuple[Award, ...]:
    """Awards in the order the contract requires (strictly ascending node address); duplicates are refused."""
    ordered = tuple(sorted(awards, key=lambda award: int(award.node, 16)))
    for previous, current in zip(ordered, ordered[1:], strict=False):
        if previous.node == current.node:
            raise LedgerRecordError(f"expected one award per node, got two for {current.node}")
    return ordered


def binding_bytes(binding: IdentityBinding) -> bytes:
    """The `binding` argument of `register`: Ed25519 signature (64 bytes), then EVM signature (65)."""
    packed = bytes(binding.ed25519_signature) + bytes(binding.evm_signature)
    if len(binding.ed25519_signature) != ED25519_SIGNATURE_BYTES or len(packed) != BINDING_BYTES:
        raise LedgerRecordError(
            f"expected a {ED25519_SIGNATURE_BYTES}-byte Ed25519 and a {EVM_SIGNATURE_BYTES}-byte EVM signature, "
            f"got {len(binding.ed25519_signature)} and {len(binding.evm_signature)} bytes"
        )
    return packed


def bounded_field(field: str, value: str | bytes, limit: int) -> str | bytes:
    """`value` if its bytes (UTF-8 for text) fit the contract's `limit` for `field`, else LedgerRecordError."""
    size = len(value.encode() if isinstance(value, str) else value)
    if size > limit:
        raise LedgerRecordError(f"expected {field} of at most {limit} bytes (the ledger's limit), got {size}")
    return value


def seed_commitment(seed: bytes) -> bytes:
    """What `openRound` records and `settleRound` checks: keccak256(abi.encodePacked(bytes32 seed))."""
    return keccak256(hash32(seed, "round seed"))


def settlement_payload(
    round_id: int, seed: bytes, traces_root: bytes, awards: Sequence[Award], stats: RoundStats = RoundStats(),
    details: RoundDetails | None = None,
) -> bytes:
    """The ABI-encoded arguments of `settleRound` for canonically ordered awards; with `details`,
    those of `settleRoundWithDetails`."""
    types = list(SETTLE_ARGUMENT_TYPES)
    values = [
        _uint(round_id, UINT64_MAX, "round_id"),
        hash32(seed, "round seed"),
        hash32(traces_root, "traces root"),
        [award.as_abi() for award in canonical_awards(awards)],
        stats.as_abi(),
    ]
    if details is not None:
        types.append(DETAILS_ABI_TYPE)
        values.append(details.as_abi())
    return abi_encode(types, values)


def settlement_hash(
    round_id: int, seed: bytes, traces_root: bytes, awards: Sequence[Award], stats: RoundStats = RoundStats(),
    details: RoundDetails | None = None,
) -> bytes:
    """The hash the contract stores for a one-transaction settlement: keccak256 of `settlement_payload`."""
    return keccak256(settlement_payload(round_id, seed, traces_root, awards, stats, details))


# ---------------------------------------------------------------------- views of chain state


@dataclass(frozen=True)
class Deployment:
    """Where one run's contracts live; what a node or dashboard needs besides an RPC URL."""

    chain_id: int
    ledger: str
    token: str
    block_number: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ledger", checksum_address(self.ledger, "ledger address"))
        object.__setattr__(self, "token", checksum_address(self.token, "token address"))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        try:
            raw = json.loads(text)
            return cls(
                chain_id=int(raw["chain_id"]),
                ledger=raw["ledger"],
                token=raw["token"],
                block_number=int(raw["block_number"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerRecordError(f"expected a deployment JSON with chain_id, ledger, token, block_number: {exc}") from exc

    def save(self, path: Path) -> None:
        """Writes the deployment where nodes and dashboards will read it (e.g. the devnet's state dir)."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.from_json(path.read_text())
        except OSError as exc:
            raise LedgerRecordError(f"expected a deployment file at {path}: {exc}") from exc


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: bytes
    block_number: int
    gas_used: int


@dataclass(frozen=True)
class NodeRecord:
    address: str
    status: NodeStatus
    stake: int
    claimable: int
    unbonding_ends: int
    registered_at: int
    ed25519_key: bytes
    peer_id: bytes
    strategy: str
    endpoint: str


@dataclass(frozen=True)
class RoundRecord:
    round_id: int
    status: RoundStatus
    opened_at: int
    settled_at: int
    node_count: int
    total_samples: int
    total_payout: int
    total_slashed: int
    model_hash: bytes
    seed_commitment: bytes
    seed: bytes
    traces_root: bytes
    settlement_hash: bytes


@dataclass(frozen=True)
class PoolTotals:
    """The pool's books; `balanced` is the invariant funded + slashed == paid_out + claimable + unallocated."""

    funded: int
    slashed: int
    paid_out: int
    claimable: int
    unallocated: int
    staked: int

    @property
    def balanced(self) -> bool:
        return self.funded + self.slashed == self.paid_out + self.claimable + self.unallocated


@dataclass(frozen=True)
class Settlement:
    """The outcome of `settle_round`: `tx` is None when the round was already settled with this same payload."""

    round_id: int
    settlement_hash: bytes
    tx: TxResult | None

    @property
    def already_settled(self) -> bool:
        return self.tx is None


@dataclass(frozen=True)
class Compensation:
    """One `NodeCompensated` event: what a node earned in a round."""

    round_id: int
    node: str
    verified_samples: int
    score: int
    payout: int
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class SlashRecord:
    """One `NodeSlashed` event."""

    round_id: int
    node: str
    amount: int
    reason: int
    evidence_hash: bytes
    remaining_stake: int
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class RoundSettlementRecord:
    """One `RoundSettled` event."""

    round_id: int
    settlement_hash: bytes
    traces_root: bytes
    seed: bytes
    node_count: int
    total_samples: int
    total_payout: int
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class RoundOpening:
    """One `RoundOpened` event."""

    round_id: int
    model_hash: bytes
    seed_commitment: bytes
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class RoundMetricsRecord:
    """One `RoundMetrics` event, its fixed-point figures as floats (`mean_reward` may be negative)."""

    round_id: int
    accepted: int
    rejected: int
    mean_reward: float
    held_out_accuracy: float
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class ClaimRecord:
    """One `RewardClaimed` event: `node` pulled `amount` (token units) to `recipient`."""

    node: str
    recipient: str
    amount: int
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True)
class NodeRegistration:
    """One `NodeRegistered` event. The chain does not check the binding; `binding_holds` does."""

    node: str
    ed25519_key: bytes
    peer_id: bytes
    binding: bytes
    stake: int
    strategy: str
    endpoint: str
    block_number: int
    tx_hash: bytes

    def identity_binding(self) -> IdentityBinding:
        return IdentityBinding(
            ed25519_public_key=self.ed25519_key,
            evm_address=self.node,
            ed25519_signature=self.binding[:ED25519_SIGNATURE_BYTES],
            evm_signature=self.binding[ED25519_SIGNATURE_BYTES:],
        )

    @property
    def binding_holds(self) -> bool:
        """True iff the Ed25519 key and the registering address both signed the binding statement."""
        try:
            verify_binding(self.identity_binding())
        except SignatureError:
            return False
        return True


def bound_nodes(registrations: Iterable[NodeRegistration]) -> dict[bytes, NodeRegistration]:
    """Ed25519 key -> the earliest registration of it whose binding holds.

    This is how a contribution's signer is mapped to the address that gets paid: registrations
    with a binding that does not verify (a squatter's copy of someone else's key) are ignored.
    """
    bound: dict[bytes, NodeRegistration] = {}
    for registration in sorted(registrations, key=lambda r: r.block_number):
        if registration.ed25519_key not in bound and registration.binding_holds:
            bound[registration.ed25519_key] = registration
    return bound
