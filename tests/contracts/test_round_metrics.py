"""The settle transaction's round metrics, the event readers the dashboard uses, and discovering a
deployment from nothing but an RPC URL and a ledger address."""

from __future__ import annotations

import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
from thinkmesh.protocol.chain.errors import ChainError, ContractMissingError, LedgerRecordError
from thinkmesh.protocol.chain.ledger import Award, Deployment, RoundStats, seed_commitment, settlement_hash, tokens

from .conftest import Actors

pytestmark = pytest.mark.timeout(120)

SEED = b"\x05" * 32
ROOT = b"\x06" * 32


def test_settlement_publishes_round_metrics_in_the_same_transaction(actors: Actors) -> None:
    coordinator, alice = actors.coordinator, actors.alice
    alice.register(actors.binding(alice, 1), tokens(10), "grpo", "")
    opened = coordinator.open_round(3, b"\xa0" * 32, seed_commitment(SEED))
    stats = RoundStats.of(accepted=3, rejected=1, mean_reward=-0.125, held_out_accuracy=0.5625)
    awards = [Award(alice.address, 8, 750_000, tokens(2))]
    settled = coordinator.settle_round(3, SEED, ROOT, awards, stats)

    (metrics,) = coordinator.events.round_metrics()
    assert (metrics.round_id, metrics.accepted, metrics.rejected) == (3, 3, 1)
    assert metrics.mean_reward == -0.125 and metrics.held_out_accuracy == 0.5625
    assert metrics.tx_hash == settled.tx.tx_hash  # one transaction: credits and metrics together
    assert coordinator.round(3).settlement_hash == settlement_hash(3, SEED, ROOT, awards, stats)
    (opening,) = coordinator.events.round_openings()
    assert (opening.round_id, opening.model_hash, opening.seed_commitment) == (3, b"\xa0" * 32, seed_commitment(SEED))
    assert opening.tx_hash == opened.tx_hash

    # A retry with the same figures is a no-op; other figures are a conflicting settlement.
    assert coordinator.settle_round(3, SEED, ROOT, awards, stats).already_settled
    with pytest.raises(ChainError, match="already settled"):
        coordinator.settle_round(3, SEED, ROOT, awards, RoundStats.of(3, 2, -0.125, 0.5625))


def test_claims_reader_reports_node_recipient_and_amount(actors: Actors) -> None:
    coordinator, alice = actors.coordinator, actors.alice
    alice.register(actors.binding(alice, 1), tokens(10), "grpo", "")
    coordinator.open_round(1, b"\xa0" * 32, seed_commitment(SEED))
    coordinator.settle_round(1, SEED, ROOT, [Award(alice.address, 4, 1, tokens(7))])
    amount, _ = alice.claim(actors.stranger_account.address)
    (claim,) = coordinator.events.claims()
    assert (claim.node, claim.recipient, claim.amount) == (alice.address, actors.stranger_account.address, tokens(7))
    assert amount == tokens(7)
    assert coordinator.events.claims(node=actors.bob.address) == []


def test_round_stats_refuse_values_that_do_not_fit() -> None:
    with pytest.raises(LedgerRecordError, match="held_out_accuracy"):
        RoundStats.of(1, 0, 0.0, 1.5)
    with pytest.raises(LedgerRecordError, match="accepted"):
        RoundStats(-1, 0, 0, 0)


def test_discover_deployment_reads_chain_id_and_token(anvil: Anvil, deployment: Deployment) -> None:
    found = discover_deployment(anvil.rpc_url, deployment.ledger.lower(), from_block=deployment.block_number)
    assert found == deployment
    assert LedgerClient.connect(anvil.rpc_url, found).pool_totals().funded > 0
    with pytest.raises(ContractMissingError):
        discover_deployment(anvil.rpc_url, "0x" + "12" * 20)
    with pytest.raises(ChainError, match="expected a ThinkMeshLedger"):
        discover_deployment(anvil.rpc_url, deployment.token)
