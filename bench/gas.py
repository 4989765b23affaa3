"""Gas used by the ledger's transactions, measured on a real anvil from `contracts/node_modules`.

    .venv/bin/python bench/gas.py

Prints one JSON object (last line of stdout): gas for open, settle with 1, 10 and 100 nodes, the
marginal settle gas per node ((settle_100 - settle_10) / 90, calldata included), claim, register,
slash, fund, and the deployments. The bar: settle's marginal gas per node under 30,000.
`settleRoundWithDetails` publishes a round's details (kind, base model hash, pay rate, one value
summary per strategy): `details_1_strategy` / `details_5_strategies` are what they add to a
10-node settlement, and `settle_marginal_gas_per_node_with_details` shows the per-node cost stays.
Figures are receipts' `gasUsed` (intrinsic + calldata + execution), deterministic for a given build.
"""

from __future__ import annotations

import json
import sys
import time

from thinkmesh.devnet.anvil import Anvil
from thinkmesh.protocol.chain.client import LedgerClient, deploy
from thinkmesh.protocol.chain.artifacts import LEDGER_CONTRACT, load_artifact
from thinkmesh.protocol.rules.identity import NodeIdentity, bind_identity
from thinkmesh.protocol.chain.ledger import Award, seed_commitment, tokens
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.chain.round_details import RoundDetails, StrategyValue
from thinkmesh.protocol.rules.merkle import MerkleTree

MARGINAL_GAS_BAR = 30_000
NODE_COUNTS = (1, 10, 100)
DETAILED = ((1, 10), (5, 10), (5, 100))  # (strategies, nodes) of the settlements with details
STRATEGIES = ("grpo", "dapo", "gspo", "rloo", "reinforce")
STAKE = tokens(100)


def main() -> int:
    started = time.perf_counter()
    nodes_needed = max(NODE_COUNTS)
    with Anvil(accounts=nodes_needed + 1) as chain:
        admin, *node_accounts = chain.accounts
        deployment = deploy(chain.rpc_url, admin.private_key, unbonding_delay_s=86_400, min_stake=STAKE)
        coordinator = LedgerClient.connect(chain.rpc_url, deployment, private_key=admin.private_key)
        deploy_gas = chain_gas_of_deployment(coordinator, deployment.block_number)

        coordinator.mint(admin.address, tokens(1_000_000))
        fund_gas = coordinator.fund(tokens(1_000_000)).gas_used

        register_gas = []
        for account in node_accounts:
            coordinator.mint(account.address, STAKE)
            node = LedgerClient.connect(chain.rpc_url, deployment, private_key=account.private_key)
            identity = NodeIdentity.from_seed(bytes.fromhex(account.address[2:].lower().rjust(64, "0")))
            binding = bind_identity(identity, bytes.fromhex(account.private_key.removeprefix("0x")))
            register_gas.append(node.register(binding, STAKE, "grpo", "/ip4/127.0.0.1/tcp/4001").gas_used)

        traces = MerkleTree.from_items([i.to_bytes(32, "big") for i in range(1, 65)])
        open_gas: list[int] = []
        settle_gas: dict[int, int] = {}
        detailed_gas: dict[tuple[int, int], int] = {}
        plain = [(count, None) for count in NODE_COUNTS]
        for round_id, (count, strategies) in enumerate(plain + [(n, k) for k, n in DETAILED], start=1):
            seed = round_id.to_bytes(32, "big")
            open_gas.append(coordinator.open_round(round_id, b"\x11" * 32, seed_commitment(seed)).gas_used)
            awards = [
                Award(node=account.address, verified_samples=64, score=812_500, payout=tokens(3) + i)
                for i, account in enumerate(node_accounts[:count])
            ]
            details = None if strategies is None else round_details(strategies)
            settlement = coordinator.settle_round(round_id, seed, traces.root, awards, details=details)
            assert settlement.tx is not None
            if details is None:
                settle_gas[count] = settlement.tx.gas_used
            else:
                detailed_gas[(strategies, count)] = settlement.tx.gas_used

        claimer = LedgerClient.connect(chain.rpc_url, deployment, private_key=node_accounts[0].private_key)
        _, claim_tx = claimer.claim()
        slash_tx = coordinator.slash(1, node_accounts[1].address, tokens(10), SlashReason.REWARD_MISMATCH, b"\xee" * 32)

    marginal = (settle_gas[100] - settle_gas[10]) / 90
    report = {
        "bench": "gas",
        "chain": "anvil (npm @foundry-rs/anvil), EVM cancun build",
        "compiler": load_artifact(LEDGER_CONTRACT).compiler_version,
        "open_round": open_gas[0],
        "settle_1": settle_gas[1],
        "settle_10": settle_gas[10],
        "settle_100": settle_gas[100],
        "settle_marginal_gas_per_node": round(marginal),
        "settle_marginal_gas_per_node_1_to_10": round((settle_gas[10] - settle_gas[1]) / 9),
        "details_1_strategy": detailed_gas[(1, 10)] - settle_gas[10],
        "details_5_strategies": detailed_gas[(5, 10)] - settle_gas[10],
        "settle_marginal_gas_per_node_with_details": round((detailed_gas[(5, 100)] - detailed_gas[(5, 10)]) / 90),
        "marginal_bar": MARGINAL_GAS_BAR,
        "marginal_under_bar": marginal < MARGINAL_GAS_BAR,
        "claim": claim_tx.gas_used,
        "register": register_gas[-1],
        "slash": slash_tx.gas_used,
        "fund": fund_gas,
        **deploy_gas,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))
    return 0 if report["marginal_under_bar"] else 1


def round_details(strategies: int) -> RoundDetails:
    """An adapter round's details (a base model hash, a pay rate) with `strategies` value summaries."""
    values = tuple(StrategyValue(name, 3, 412_500 + i, 91_000) for i, name in enumerate(STRATEGIES[:strategies]))
    return RoundDetails(base_model_hash=b"\x22" * 32, reward_rate=tokens("0.5"), values=values)


def chain_gas_of_deployment(client: LedgerClient, ledger_block: int) -> dict[str, int]:
    """Gas of the token and ledger deployments (the token is deployed in the block before the ledger)."""
    web3 = client.web3
    ledger_receipt = web3.eth.get_transaction_receipt(web3.eth.get_block(ledger_block)["transactions"][0])
    token_receipt = web3.eth.get_transaction_receipt(web3.eth.get_block(ledger_block - 1)["transactions"][0])
    return {"deploy_token": token_receipt["gasUsed"], "deploy_ledger": ledger_receipt["gasUsed"]}


if __name__ == "__main__":
    sys.exit(main())
