"""Settlement gas grows by far less than 30,000 per accepted node (the bar bench/gas.py reports on),
with or without the round's details, whose cost is fixed per round (bounded by its strategies)."""

from __future__ import annotations

import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient
from thinkmesh.protocol.chain.ledger import Award, Deployment, seed_commitment, tokens
from thinkmesh.protocol.chain.round_details import RoundDetails, strategy_values

from .conftest import MIN_STAKE, Actors, identity_binding

pytestmark = pytest.mark.timeout(120)

MARGINAL_GAS_BAR = 30_000
DETAILS_GAS_BAR = 50_000  # per round, for the 5 strategies a round can have


def test_settle_marginal_gas_per_node_is_under_the_bar(anvil: Anvil, deployment: Deployment, actors: Actors) -> None:
    nodes = anvil.accounts[1:7]
    for tag, account in enumerate(nodes, start=1):
        client = LedgerClient.connect(anvil.rpc_url, deployment, private_key=account.private_key)
        client.register(identity_binding(account, tag), MIN_STAKE, "grpo", "")
    # Every loss variant's values: the most strategies a coordinator publishes (protocol/rules/strategies.py).
    details = RoundDetails(kind="training", base_model_hash=b"\x33" * 32, reward_rate=tokens("0.08"), values=strategy_values(
        (loss, 0.001 * i) for loss in ("dapo", "dr_grpo", "grpo", "gspo", "rloo") for i in range(3)))
    gas = {}
    # Round 1 warms the pool's totals (their first write from zero would be billed to whichever comes first).
    for round_id, (count, with_details) in enumerate(((1, False), (1, False), (len(nodes), False), (1, True),
                                                      (len(nodes), True)), start=1):
        seed = bytes([round_id]) * 32
        actors.coordinator.open_round(round_id, b"\x11" * 32, seed_commitment(seed))
        awards = [Award(account.address, 64, 812_500, tokens(1)) for account in nodes[:count]]
        settled = actors.coordinator.settle_round(round_id, seed, b"\x22" * 32, awards,
                                                  details=details if with_details else None)
        assert settled.tx is not None
        gas[count, with_details] = settled.tx.gas_used
    for with_details in (False, True):
        marginal = (gas[len(nodes), with_details] - gas[1, with_details]) / (len(nodes) - 1)
        assert 3_000 < marginal < MARGINAL_GAS_BAR, f"settle costs {marginal:.0f} gas per extra node"
    overhead = {count: gas[count, True] - gas[count, False] for count in (1, len(nodes))}
    assert 0 < overhead[1] < DETAILS_GAS_BAR, f"the details of 5 strategies cost {overhead[1]} gas"
    assert abs(overhead[len(nodes)] - overhead[1]) < 1_000, f"the details' cost grew with the awards: {overhead}"
