"""A round's details on chain: kind, base model, pay rate and strategy values go out with the
settlement (one transaction, covered by its hash), read back by the event readers the dashboard
uses; a ledger without `settleRoundWithDetails` is still settled, without them."""

from __future__ import annotations

import json

import pytest

from thinkmesh.protocol.chain.errors import ChainError
from thinkmesh.protocol.chain.settlement import has_details_function
from thinkmesh.protocol.chain.ledger import Award, RoundStats, seed_commitment, settlement_hash, tokens
from thinkmesh.protocol.chain.round_details import RoundDetails, StrategyValue, strategy_values

from .conftest import Actors

pytestmark = pytest.mark.timeout(120)

SEED = b"\x15" * 32
ROOT = b"\x16" * 32
BASE = b"\xba" * 32
STATS = RoundStats.of(accepted=2, rejected=0, mean_reward=0.25, held_out_accuracy=0.5)
DETAILS = RoundDetails(kind="generation", base_model_hash=BASE, reward_rate=tokens("0.02"),
                       values=strategy_values([("dapo", 0.012), ("dapo", -0.004), ("grpo", 0.031)]))


def _registered(actors: Actors) -> list[str]:
    for tag, node in enumerate((actors.alice, actors.bob), start=1):
        node.register(actors.binding(node, tag), tokens(10), "grpo", "")
    return [actors.alice.address, actors.bob.address]


def test_details_are_published_with_the_settlement_and_covered_by_its_hash(actors: Actors) -> None:
    coordinator = actors.coordinator
    nodes = _registered(actors)
    coordinator.open_round(4, b"\xa4" * 32, seed_commitment(SEED))
    awards = [Award(node, 5, 1_000_000, tokens("0.1")) for node in nodes]
    settled = coordinator.settle_round(4, SEED, ROOT, awards, STATS, DETAILS)

    assert coordinator.round(4).settlement_hash == settlement_hash(4, SEED, ROOT, awards, STATS, DETAILS)
    assert settled.settlement_hash != settlement_hash(4, SEED, ROOT, awards, STATS)
    (described,) = coordinator.events.round_details()
    assert (described.round_id, described.kind, described.base_model_hash, described.reward_rate) == (
        4, "generation", BASE, tokens("0.02"))
    values = coordinator.events.strategy_values(round_id=4)
    assert [(v.strategy, v.contributions) for v in values] == [("dapo", 2), ("grpo", 1)]
    assert values[0].mean_value == pytest.approx(0.004) and values[0].value_sd == pytest.approx(0.011314, abs=1e-6)
    assert values[1].mean_value == pytest.approx(0.031) and values[1].value_sd == 0.0
    assert {described.tx_hash, *(v.tx_hash for v in values)} == {settled.tx.tx_hash}  # one transaction
    (metrics,) = coordinator.events.round_metrics(round_id=4)  # the existing events are unchanged
    assert metrics.accepted == 2 and len(coordinator.events.compensations(round_id=4)) == 2

    assert coordinator.settle_round(4, SEED, ROOT, awards, STATS, DETAILS).already_settled
    other = RoundDetails(kind="training", base_model_hash=BASE, reward_rate=tokens("0.02"), values=DETAILS.values)
    with pytest.raises(ChainError, match="already settled"):
        coordinator.settle_round(4, SEED, ROOT, awards, STATS, other)
    with pytest.raises(ChainError, match="already settled"):  # the same payload without its details is another one
        coordinator.settle_round(4, SEED, ROOT, awards, STATS)


def test_a_ledger_without_the_details_function_is_settled_without_them(actors: Actors) -> None:
    coordinator = actors.coordinator
    nodes = _registered(actors)
    assert coordinator.supports_details()
    coordinator._supports_details = False  # as read from a deployment that predates settleRoundWithDetails
    coordinator.open_round(5, b"\xa5" * 32, seed_commitment(SEED))
    awards = [Award(nodes[0], 5, 1_000_000, tokens("0.1"))]
    settled = coordinator.settle_round(5, SEED, ROOT, awards, STATS, DETAILS)
    assert settled.settlement_hash == settlement_hash(5, SEED, ROOT, awards, STATS)
    assert coordinator.events.round_details() == [] and len(coordinator.events.round_metrics()) == 1
    assert coordinator.settle_round(5, SEED, ROOT, awards, STATS, DETAILS).already_settled


def test_the_details_function_is_found_in_deployed_code_only_where_it_exists(actors: Actors) -> None:
    web3, deployment = actors.coordinator.web3, actors.coordinator.deployment
    assert has_details_function(bytes(web3.eth.get_code(deployment.ledger)))
    assert not has_details_function(bytes(web3.eth.get_code(deployment.token)))


def test_strategy_values_are_refused_past_the_contracts_bounds() -> None:
    from thinkmesh.protocol.chain.errors import LedgerRecordError

    with pytest.raises(LedgerRecordError, match="at most 16"):
        strategy_values((f"s{i}", 0.0) for i in range(17))
    with pytest.raises(LedgerRecordError, match="strategy name"):
        StrategyValue("x" * 65, 1, 0, 0)
    with pytest.raises(LedgerRecordError, match="finite"):
        strategy_values([("grpo", float("nan"))])
    assert json.loads(json.dumps(DETAILS.to_json())) == DETAILS.to_json()
    assert RoundDetails.from_json(DETAILS.to_json()) == DETAILS
