"""A round whose awards do not fit one block settles in parts, resumes where it stopped, pays once.

The block gas limit is lowered on the shared anvil (and restored) so that a handful of awards
already exceed one transaction; each part then pays its awards, and the closing `settleRound`
stores the parted settlement hash that `chain_settlement.parted_settlement_hash` computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from eth_account import Account

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient
from thinkmesh.protocol.chain.errors import ContractRevertError, SettlementConflictError
from thinkmesh.protocol.chain.settlement import awards_digest, parted_settlement_hash
from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity
from thinkmesh.protocol.chain.ledger import Award, Deployment, RoundStats, RoundStatus, canonical_awards, seed_commitment, tokens
from thinkmesh.protocol.chain.round_details import RoundDetails, strategy_values

from .conftest import MIN_STAKE, Actors

pytestmark = pytest.mark.timeout(120)

SEED = b"\x5e" * 32
ROOT = b"\x7a" * 32
STATS = RoundStats.of(12, 0, 0.5, 0.25)
NODES = 12
LOW_GAS_LIMIT = 250_000  # a settleRound of 12 awards needs ~340k with the margin; parts of 6 fit


@pytest.fixture
def many_nodes(anvil: Anvil, deployment: Deployment, actors: Actors) -> list[str]:
    """NODES registered nodes (fresh accounts, funded here), addresses returned."""
    addresses = []
    for n in range(NODES):
        account = Account.from_key(bytes([n + 1]) * 32)
        anvil.rpc("anvil_setBalance", [account.address, hex(10**19)])
        actors.coordinator.mint(account.address, MIN_STAKE)
        client = LedgerClient.connect(anvil.rpc_url, deployment, private_key=account.key.hex())
        binding = bind_identity(NodeIdentity.from_seed(bytes([0x40 + n]) * 32), bytes(account.key))
        client.register(binding, MIN_STAKE, "grpo", "")
        addresses.append(account.address)
    return addresses


@pytest.fixture
def low_gas_limit(anvil: Anvil) -> Iterator[int]:
    """A block gas limit too low for the round in one transaction; restored after (snapshots keep it)."""
    before = int(anvil.rpc("eth_getBlockByNumber", ["latest", False])["gasLimit"], 16)
    anvil.rpc("evm_setBlockGasLimit", [hex(LOW_GAS_LIMIT)])
    anvil.rpc("evm_mine")
    try:
        yield LOW_GAS_LIMIT
    finally:
        anvil.rpc("evm_setBlockGasLimit", [hex(before)])
        anvil.rpc("evm_mine")


def round_awards(nodes: list[str]) -> list[Award]:
    return [Award(node, 8 + i, 500_000 + i, tokens(1) + i) for i, node in enumerate(nodes)]


def test_awards_past_the_block_gas_limit_settle_in_parts_once(actors: Actors, many_nodes, low_gas_limit) -> None:
    coordinator = actors.coordinator
    coordinator.open_round(1, b"\x3d" * 32, seed_commitment(SEED))
    awards = round_awards(many_nodes)
    function = coordinator.ledger.functions.settleRound(1, SEED, ROOT, [a.as_abi() for a in canonical_awards(awards)],
                                                         STATS.as_abi())
    with pytest.raises(Exception, match="exceeds allowance"):  # the one-transaction settlement cannot be sent
        function.estimate_gas({"from": coordinator.address})

    settled = coordinator.settle_round(1, SEED, ROOT, awards, STATS)
    expected = parted_settlement_hash(1, SEED, ROOT, awards, STATS)
    assert not settled.already_settled and settled.settlement_hash == expected
    record = coordinator.round(1)
    assert (record.status, record.settlement_hash, record.node_count) == (RoundStatus.SETTLED, expected, NODES)
    assert record.total_payout == sum(a.payout for a in awards)
    assert coordinator.round_parts(1) == (NODES, awards_digest(canonical_awards(awards)))
    paid = coordinator.events.compensations(round_id=1)
    assert sorted((c.node, c.payout) for c in paid) == sorted((a.node, a.payout) for a in awards)  # each once
    assert len(coordinator.events.settlements(round_id=1)) == 1
    blocks = {c.block_number for c in paid}
    assert len(blocks) > 1, "the awards went out in more than one transaction"
    for block in blocks:
        assert coordinator.web3.eth.get_block(block)["gasUsed"] <= low_gas_limit

    again = coordinator.settle_round(1, SEED, ROOT, list(reversed(awards)), STATS)
    assert again.already_settled and again.settlement_hash == expected
    assert coordinator.node(many_nodes[0]).claimable == awards[0].payout


def test_a_settlement_stopped_between_parts_resumes_and_refuses_another_payload(actors: Actors, many_nodes,
                                                                                low_gas_limit) -> None:
    coordinator = actors.coordinator
    coordinator.open_round(2, b"\x3d" * 32, seed_commitment(SEED))
    awards = canonical_awards(round_awards(many_nodes))
    coordinator.settle_round_part(2, 0, awards[:3])  # what a coordinator sent before it died
    with pytest.raises(ContractRevertError) as resent:  # its lost-receipt retry of that part pays nothing
        coordinator.settle_round_part(2, 0, awards[:3])
    assert resent.value.error_name == "RoundPartOutOfSequence"

    changed = [dataclasses.replace(awards[0], payout=awards[0].payout + 1), *awards[1:]]
    with pytest.raises(SettlementConflictError, match="credited in parts"):
        coordinator.settle_round(2, SEED, ROOT, changed, STATS)

    settled = coordinator.settle_round(2, SEED, ROOT, awards, STATS)
    assert settled.settlement_hash == parted_settlement_hash(2, SEED, ROOT, awards, STATS)
    paid = coordinator.events.compensations(round_id=2)
    assert sorted((c.node, c.payout) for c in paid) == sorted((a.node, a.payout) for a in awards)


def test_a_round_beyond_the_pool_sends_nothing_until_a_top_up(actors: Actors, many_nodes, low_gas_limit) -> None:
    coordinator = actors.coordinator
    coordinator.open_round(3, b"\x3d" * 32, seed_commitment(SEED))
    pool = coordinator.pool_totals().unallocated
    awards = canonical_awards(round_awards(many_nodes))
    awards = (*awards[:-1], dataclasses.replace(awards[-1], payout=pool))  # the last award overdraws the pool
    with pytest.raises(ContractRevertError) as refused:  # the whole round's estimate says so: no part goes out
        coordinator.settle_round(3, SEED, ROOT, awards, STATS)
    assert refused.value.error_name == "PayoutExceedsPool"
    assert coordinator.round_parts(3) == (0, b"\x00" * 32) and coordinator.round(3).status == RoundStatus.OPEN

    coordinator.mint(coordinator.address, pool)
    coordinator.fund(pool)
    settled = coordinator.settle_round(3, SEED, ROOT, awards, STATS)
    assert settled.settlement_hash == parted_settlement_hash(3, SEED, ROOT, awards, STATS)
    assert len(coordinator.events.compensations(round_id=3)) == NODES


def test_a_parted_round_closes_with_its_details_under_the_parted_hash(actors: Actors, many_nodes, low_gas_limit) -> None:
    coordinator = actors.coordinator
    coordinator.open_round(4, b"\x3d" * 32, seed_commitment(SEED))
    awards = round_awards(many_nodes)
    details = RoundDetails(kind="training", reward_rate=tokens("0.08"),
                           values=strategy_values([("dapo", 0.01), ("grpo", -0.02), ("grpo", 0.03)]))
    settled = coordinator.settle_round(4, SEED, ROOT, awards, STATS, details)
    expected = parted_settlement_hash(4, SEED, ROOT, awards, STATS, details)
    assert settled.settlement_hash == expected != parted_settlement_hash(4, SEED, ROOT, awards, STATS)
    assert coordinator.round(4).settlement_hash == expected
    assert len({c.block_number for c in coordinator.events.compensations(round_id=4)}) > 1, "settled in parts"
    (described,) = coordinator.events.round_details(round_id=4)
    assert (described.kind, described.reward_rate) == ("training", tokens("0.08"))
    assert [v.strategy for v in coordinator.events.strategy_values(round_id=4)] == ["dapo", "grpo"]
    assert coordinator.settle_round(4, SEED, ROOT, awards, STATS, details).already_settled
