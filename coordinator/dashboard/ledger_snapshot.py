"""Reads a snapshot of a ledger for the dashboard (I/O only).

Queries run against the latest block one after another, so a snapshot taken while a block lands
can mix two blocks (a settled round next to pre-settlement balances); the next refresh, a few
seconds later, is consistent again. Pinning every call to one block needs an archive-capable RPC,
which a user's endpoint may not be.
"""

from __future__ import annotations

from thinkmesh.coordinator.dashboard.ledger_view import LedgerSnapshot
from thinkmesh.protocol.chain.transactions import rpc_errors


def read_snapshot(client) -> LedgerSnapshot:
    with rpc_errors(client.rpc_url):
        block = client.web3.eth.block_number
        symbol = client.token.functions.symbol().call()
    events = client.events
    registrations = events.registrations()
    nodes = tuple(client.node(address) for address in dict.fromkeys(r.node for r in registrations))
    opened = events.round_openings()
    settlements = tuple(events.settlements())
    rounds = tuple(client.round(round_id) for round_id in sorted({o.round_id for o in opened}))
    with rpc_errors(client.rpc_url):
        settle_gas = {
            s.round_id: client.web3.eth.get_transaction_receipt(s.tx_hash)["gasUsed"] for s in settlements
        }
    return LedgerSnapshot(
        chain_id=client.deployment.chain_id,
        ledger=client.deployment.ledger,
        block=block,
        token_symbol=symbol,
        nodes=nodes,
        rounds=rounds,
        compensations=tuple(events.compensations()),
        slashes=tuple(events.slashes()),
        claims=tuple(events.claims()),
        settlements=settlements,
        settle_gas=settle_gas,
        metrics=tuple(events.round_metrics()),
        registrations=tuple(registrations),
        details=tuple(events.round_details()),
        strategy_values=tuple(events.strategy_values()),
    )
