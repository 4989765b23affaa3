"""The ledger's pure rules: award order, settlement hash, seed commitment, units, record validation."""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import keccak

from thinkmesh.protocol.chain.errors import LedgerRecordError
from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity
from thinkmesh.protocol.chain.ledger import (
    SETTLE_ARGUMENT_TYPES,
    Award,
    Deployment,
    NodeRegistration,
    PoolTotals,
    RoundStats,
    binding_bytes,
    bound_nodes,
    canonical_awards,
    score_to_fixed,
    seed_commitment,
    settlement_hash,
    settlement_payload,
    tokens,
)
from thinkmesh.protocol.rules.slashing import SlashReason

LOW = "0x00000000000000000000000000000000000000aa"
HIGH = "0xfF000000000000000000000000000000000000AA"


def test_award_normalizes_the_address_to_checksum() -> None:
    award = Award(HIGH.lower(), 1, 2, 3)
    assert award.node == "0xFf000000000000000000000000000000000000Aa"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("verified_samples", 2**32, "verified_samples as an integer in 0..4294967295"),
        ("score", -1, "score as an integer in 0.."),
        ("payout", 2**96, "payout as an integer in 0..79228162514264337593543950335"),
        ("payout", True, "payout as an integer"),
    ],
)
def test_award_rejects_values_that_do_not_fit_the_contract(field: str, value: object, expected: str) -> None:
    fields = {"node": LOW, "verified_samples": 1, "score": 1, "payout": 1, field: value}
    with pytest.raises(LedgerRecordError, match=expected):
        Award(**fields)  # type: ignore[arg-type]


def test_award_rejects_a_malformed_address() -> None:
    with pytest.raises(LedgerRecordError, match="award node as a 20-byte hex address, got '0x1234'"):
        Award("0x1234", 1, 1, 1)


def test_canonical_awards_sort_by_address_value_and_refuse_duplicates() -> None:
    high, low = Award(HIGH, 1, 1, 1), Award(LOW, 2, 2, 2)
    assert canonical_awards([high, low]) == (low, high)
    with pytest.raises(LedgerRecordError, match="one award per node"):
        canonical_awards([low, high, Award(LOW, 9, 9, 9)])


def test_settlement_hash_is_order_independent_and_covers_every_field() -> None:
    seed, root = b"\x01" * 32, b"\x02" * 32
    awards = [Award(HIGH, 1, 2, 3), Award(LOW, 4, 5, 6)]
    digest = settlement_hash(7, seed, root, awards)
    assert digest == settlement_hash(7, seed, root, list(reversed(awards)))
    assert digest == keccak(settlement_payload(7, seed, root, awards))
    assert digest != settlement_hash(8, seed, root, awards)
    assert digest != settlement_hash(7, b"\x03" * 32, root, awards)
    assert digest != settlement_hash(7, seed, root, [Award(HIGH, 1, 2, 4), Award(LOW, 4, 5, 6)])


def test_settlement_payload_is_the_settle_round_abi_encoding() -> None:
    awards = [Award(HIGH, 1, 2, 3), Award(LOW, 4, 5, 6)]
    round_id, seed, root, decoded, stats = abi_decode(
        list(SETTLE_ARGUMENT_TYPES),
        settlement_payload(7, b"\x01" * 32, b"\x02" * 32, awards, RoundStats.of(3, 1, -0.25, 0.625)),
    )
    assert (round_id, seed, root) == (7, b"\x01" * 32, b"\x02" * 32)
    assert stats == (3, 1, -250_000, 625_000)
    assert [(node.lower(), samples, score, payout) for node, samples, score, payout in decoded] == [
        (LOW.lower(), 4, 5, 6),
        (HIGH.lower(), 1, 2, 3),
    ]


def test_seed_commitment_is_keccak_of_the_seed_and_checks_length() -> None:
    assert seed_commitment(b"\x00" * 32) == keccak(b"\x00" * 32)
    with pytest.raises(LedgerRecordError, match="round seed as 32 bytes, got 31 bytes"):
        seed_commitment(b"\x00" * 31)


def test_tokens_converts_whole_and_decimal_amounts_exactly() -> None:
    assert tokens(3) == 3 * 10**18
    assert tokens("0.000000000000000001") == 1
    assert tokens("12345678901.5") == 12_345_678_901_500_000_000_000_000_000
    for bad in ("-1", "1e-19", "abc", "0.0000000000000000001"):
        with pytest.raises(LedgerRecordError):
            tokens(bad)


def test_score_to_fixed_uses_the_score_scale() -> None:
    assert score_to_fixed(0.8125) == 812_500
    with pytest.raises(LedgerRecordError):
        score_to_fixed(-0.5)


def test_pool_totals_balanced_is_the_books_invariant() -> None:
    assert PoolTotals(funded=10, slashed=2, paid_out=3, claimable=4, unallocated=5, staked=99).balanced
    assert not PoolTotals(funded=10, slashed=2, paid_out=3, claimable=4, unallocated=6, staked=0).balanced


def test_deployment_validates_addresses() -> None:
    with pytest.raises(LedgerRecordError, match="ledger address"):
        Deployment(chain_id=1, ledger="nope", token=LOW, block_number=0)


def test_deployment_round_trips_through_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    deployment = Deployment(chain_id=31337, ledger=HIGH.lower(), token=LOW, block_number=2)
    path = tmp_path / "deployment.json"
    deployment.save(path)
    assert Deployment.load(path) == deployment
    with pytest.raises(LedgerRecordError, match="chain_id"):
        Deployment.from_json('{"ledger": "0x00"}')
    with pytest.raises(LedgerRecordError, match="expected a deployment file"):
        Deployment.load(tmp_path / "missing.json")


def test_slash_reasons_cover_every_failing_verdict_reason_in_order() -> None:
    from thinkmesh.protocol.rules.slashing import UnknownReasonError
    from thinkmesh.protocol.rules.verification import REASONS

    assert [reason.verdict_reason for reason in SlashReason] == list(REASONS)
    assert SlashReason.from_verdict_reason("reward-mismatch") == SlashReason.REWARD_MISMATCH
    with pytest.raises(UnknownReasonError, match="slashable verdict reason"):
        SlashReason.from_verdict_reason("ok")


def _registration(node: str, tag: int, block: int, binding: bytes) -> NodeRegistration:
    key = NodeIdentity.from_seed(bytes([tag]) * 32).public_key
    return NodeRegistration(node, key, b"", binding, 1, "grpo", "", block, b"")


def test_bound_nodes_keep_the_earliest_registration_whose_binding_holds() -> None:
    owner = Account.from_key(b"\x01" * 32)
    squatter = Account.from_key(b"\x02" * 32)
    binding = bind_identity(NodeIdentity.from_seed(b"\x07" * 32), b"\x01" * 32)
    packed = binding_bytes(binding)
    assert len(packed) == 129
    squat = _registration(squatter.address, 7, 1, packed)  # a copy of the owner's signatures
    owned = _registration(owner.address, 7, 2, packed)
    later = _registration(owner.address, 7, 3, packed)
    assert not squat.binding_holds and owned.binding_holds
    assert bound_nodes([later, owned, squat]) == {binding.ed25519_public_key: owned}


def test_binding_bytes_refuses_wrong_signature_lengths() -> None:
    binding = bind_identity(NodeIdentity.from_seed(b"\x07" * 32), b"\x01" * 32)
    with pytest.raises(LedgerRecordError, match="64-byte Ed25519 and a 65-byte EVM signature"):
        binding_bytes(dataclasses.replace(binding, evm_signature=b"\x00" * 64))
