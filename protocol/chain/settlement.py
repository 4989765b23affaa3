"""Settling a round on chain: in one transaction when its awards fit a block, in parts when not.

A round's awards cost about 10,400 gas each to settle, so past a couple of thousand nodes (fewer on a
chain with a low block gas limit) they no longer fit one transaction. The ledger then takes them in
parts: `settleRoundPart(roundId, firstIndex, awards)` credits the next awards, and `settleRound` with
the remaining ones (possibly none) closes the round. Rules the contract enforces, and this module
relies on:

- a part must start where the credited awards end (`firstIndex` = the round's `nodeCount` while it is
  Open), so a part re-sent after a lost receipt reverts instead of paying twice;
- the contract folds every credited award into a digest, `d = keccak256(abi.encode(d, award))` from
  zero, whatever the parts' sizes, and stores `keccak256(abi.encode(roundId, seed, tracesRoot, d,
  stats))` as the parted round's settlement hash (`parted_settlement_hash`); a one-transaction round
  keeps the hash of its call's arguments (`ledger.settlement_hash`). Either commits to the whole
  payload, so a retry compares the stored hash with both and a conflicting payload is refused;
- a resumed settlement first checks that the awards already credited are a prefix of its own (same
  digest), so a coordinator restarted with another payload stops instead of mixing two.

A settlement with `RoundDetails` (protocol/chain/round_details.py) closes with `settleRoundWithDetails`
instead of `settleRound`: its one-transaction hash covers the details as an extra argument, its
parted hash appends `keccak256(abi.encode(details))` to the fields above. A ledger deployed before
that function existed is settled without details (`supports_details`), so a coordinator of this
version keeps paying on an older deployment.

Part sizes are chosen by gas estimation: the whole round first, then halves until a part's estimate,
with the sender's margin, fits the latest block's gas limit. Since the digest does not depend on the
cuts, a retry may cut differently (after a gas-limit change) and still reach the same hash.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from eth_abi import encode as abi_encode
from thinkmesh.protocol.rules.hashing import keccak256
from web3.exceptions import ContractLogicError, Web3RPCError

from thinkmesh.protocol.chain.errors import ChainError, ContractRevertError, SettlementConflictError
from thinkmesh.protocol.chain.transactions import GAS_MARGIN, contract_error, rpc_errors
from thinkmesh.protocol.chain.ledger import (
    DETAILS_ABI_TYPE,
    Award,
    RoundStats,
    RoundStatus,
    Settlement,
    canonical_awards,
    hash32,
    settlement_hash,
)
from thinkmesh.protocol.chain.round_details import RoundDetails

logger = logging.getLogger(__name__)
ZERO_DIGEST = b"\x00" * 32
AWARD_TYPE = "(address,uint32,uint64,uint96)"
STATS_TYPE = "(uint32,uint32,int64,uint32)"
RESUME_ATTEMPTS = 4  # re-reads of the round after a part that someone else's retry got in first
# How nodes word "this transaction needs more gas than a block (or the cap) allows" at estimation.
_TOO_BIG = ("exceeds allowance", "exceeds block gas limit", "out of gas", "gas limit reached", "gas too high")


def awards_digest(awards: Sequence[Award], digest: bytes = ZERO_DIGEST) -> bytes:
    """The contract's fold over credited awards, in the order given (canonical order for a round)."""
    for award in awards:
        digest = keccak256(abi_encode(["bytes32", AWARD_TYPE], [digest, award.as_abi()]))
    return digest


def parted_settlement_hash(
    round_id: int, seed: bytes, traces_root: bytes, awards: Sequence[Award], stats: RoundStats = RoundStats(),
    details: RoundDetails | None = None,
) -> bytes:
    """The settlement hash a round settled in parts stores (awards in canonical order)."""
    digest = awards_digest(canonical_awards(awards))
    types = ["uint64", "bytes32", "bytes32", "bytes32", STATS_TYPE]
    values = [round_id, hash32(seed, "round seed"), hash32(traces_root, "traces root"), digest, stats.as_abi()]
    if details is not None:
        types.append("bytes32")
        values.append(keccak256(abi_encode([DETAILS_ABI_TYPE], [details.as_abi()])))
    return keccak256(abi_encode(types, values))


def has_details_function(code: bytes) -> bool:
    """Whether deployed `code` dispatches `settleRoundWithDetails`: solc's dispatcher pushes each
    selector with the shortest PUSH that holds it (PUSH4 unless it starts with zero bytes)."""
    selector = keccak256(_DETAILED_SIGNATURE.encode())[:4].lstrip(b"\x00")
    return bytes([0x5F + len(selector)]) + selector in code


_DETAILED_SIGNATURE = f"settleRoundWithDetails(uint64,bytes32,bytes32,{AWARD_TYPE}[],{STATS_TYPE},{DETAILS_ABI_TYPE})"


def settle_round(client, round_id: int, seed: bytes, traces_root: bytes, awards: Sequence[Award],
                 stats: RoundStats, details: RoundDetails | None = None) -> Settlement:
    """`LedgerClient.settle_round`: see the module docstring. Safe to repeat after any failure."""
    ordered = canonical_awards(awards)
    if details is not None and not client.supports_details():
        logger.warning("round %d: the ledger at %s predates settleRoundWithDetails; settling without the round's "
                       "details (kind, base model, pay rate, strategy values)", round_id, client.ledger.address)
        details = None
    expected = (settlement_hash(round_id, seed, traces_root, ordered, stats, details),
                parted_settlement_hash(round_id, seed, traces_root, ordered, stats, details))
    for _ in range(RESUME_ATTEMPTS):
        record = client.round(round_id)
        if record.status == RoundStatus.SETTLED:
            return _already_settled(round_id, record.settlement_hash, expected)
        credited = 0
        if record.node_count:  # an Open round counts the awards credited by earlier parts
            credited, digest = client.round_parts(round_id)
            _check_prefix(round_id, ordered, credited, digest)
        try:
            return _settle_from(client, round_id, seed, traces_root, ordered, stats, details, credited, expected)
        except ContractRevertError as exc:
            if exc.error_name == "RoundAlreadySettled":
                return _already_settled(round_id, bytes(exc.error_args["settlementHash"]), expected)
            if exc.error_name != "RoundPartOutOfSequence":
                raise
            # An earlier send of a part landed after our read: read the round again and go on from there.
    raise ChainError(f"round {round_id}: expected its parts to settle in sequence, the credited count kept moving "
                     f"under this sender ({RESUME_ATTEMPTS} reads); is another coordinator settling it?")


def _settle_from(client, round_id, seed, traces_root, ordered, stats, details, credited, expected) -> Settlement:
    closing = "settleRound" if details is None else "settleRoundWithDetails"

    def settle(rest: Sequence[Award]) -> Any:
        arguments = [round_id, seed, traces_root, [a.as_abi() for a in rest], stats.as_abi()]
        if details is not None:
            arguments.append(details.as_abi())
        return client.ledger.functions[closing](*arguments)

    with rpc_errors(client.rpc_url):
        limit = client.web3.eth.get_block("latest")["gasLimit"]
    chunk = len(ordered) - credited
    last_tx = None
    while True:
        rest = ordered[credited:]
        if _fits(client, closing, settle(rest), limit):
            last_tx = client._transact(closing, settle(rest))
            break
        if not rest:
            raise ChainError(f"round {round_id}: expected the closing {closing} (no awards left) to fit a block "
                             f"(gas limit {limit}), it does not")
        chunk = min(chunk, len(rest))
        while chunk and not _fits(client, "settleRoundPart", _part(client, round_id, credited, rest[:chunk]), limit):
            chunk //= 2
        if not chunk:
            raise ChainError(f"round {round_id}: expected one award to fit a block (gas limit {limit}), "
                             "even settleRoundPart with a single award does not")
        last_tx = client._transact("settleRoundPart", _part(client, round_id, credited, rest[:chunk]))
        credited += chunk
    stored = expected[0] if credited == 0 else expected[1]
    return Settlement(round_id=round_id, settlement_hash=stored, tx=last_tx)


def _part(client, round_id: int, first_index: int, awards: Sequence[Award]) -> Any:
    return client.ledger.functions.settleRoundPart(round_id, first_index, [a.as_abi() for a in awards])


def _fits(client, action: str, function: Any, gas_limit: int) -> bool:
    """Whether `function`, with the sender's gas margin, fits a block; a revert is raised decoded."""
    with rpc_errors(client.rpc_url):
        try:
            estimate = function.estimate_gas({"from": client.address})
        except ContractLogicError as exc:
            raise contract_error(action, exc, client._decoder) from exc
        except Web3RPCError as exc:
            if any(marker in str(exc).lower() for marker in _TOO_BIG):
                return False
            raise ChainError(f"{action}: expected a gas estimate, the node refused: {exc}") from exc
    return math.ceil(estimate * GAS_MARGIN) <= gas_limit


class PartsConflictError(SettlementConflictError):
    """A round partly settled on chain with awards that are not a prefix of the ones being sent."""

    def __init__(self, round_id: int, credited: int, stored_digest: bytes, ours: int, our_digest: bytes) -> None:
        self.round_id, self.stored_hash, self.attempted_hash = round_id, stored_digest, our_digest
        ChainError.__init__(
            self, f"round {round_id} has {credited} awards credited in parts with digest 0x{stored_digest.hex()}; "
            f"expected the first {credited} of this settlement's {ours} awards (digest 0x{our_digest.hex()}), so it "
            "is a different settlement, not a retry")


def _check_prefix(round_id: int, ordered: Sequence[Award], credited: int, digest: bytes) -> None:
    """The awards already credited in parts must be the first `credited` of ours."""
    ours = awards_digest(ordered[:credited])
    if credited > len(ordered) or digest != ours:
        raise PartsConflictError(round_id, credited, digest, len(ordered), ours)


def _already_settled(round_id: int, stored: bytes, expected: tuple[bytes, bytes]) -> Settlement:
    if stored not in expected:
        raise SettlementConflictError(round_id, stored, expected[0])
    return Settlement(round_id=round_id, settlement_hash=stored, tx=None)
