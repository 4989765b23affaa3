"""Settlement gas grows by far less than 30,000 per accepted node (the bar bench/gas.py reports on)."""

from __future__ import annotations

import pytest

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient
from thinkmesh.protocol.chain.ledger import Award, Deployment, seed_commitment, tokens

from .conftest import MIN_STAKE, Actors, identity_binding

pytestmark = pytest.mark.timeout(120)

MARGINAL_GAS_BAR = 30_000


def test_settle_marginal_gas_per_node_is_under_the_bar(anvil: Anvil, deployment: Deployment, actors: Actors) -> None:
    nodes = anvil.accounts[1:7]
    for tag, account in enumerate(nodes, start=1):
        client = LedgerClient.connect(anvil.rpc_url, deployment, private_key=account.private_key)
        client.register(identity_binding(account, tag), MIN_STAKE, "grpo", "")
    gas = {}
    for round_id, count in ((1, 1), (2, len(nodes))):
        seed = bytes([round_id]) * 32
        actors.coordinator.open_round(round_id, b"\x11" * 32, seed_commitment(seed))
        awards = [Award(account.address, 64, 812_500, tokens(1)) for account in nodes[:count]]
        settled = actors.coordinator.settle_round(round_id, seed, b"\x22" * 32, awards)
        assert settled.tx is not None
        gas[count] = settled.tx.gas_used
    marginal = (gas[len(nodes)] - gas[1]) / (len(nodes) - 1)
    assert 3_000 < marginal < MARGINAL_GAS_BAR, f"settle costs {marginal:.0f} gas per extra node"
