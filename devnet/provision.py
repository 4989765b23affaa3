"""Putting the devnet's accounts on chain: deploy (or reuse) the ledger, fund it, fund and register nodes.

Every step first reads the chain and does only what is missing, so a second `up` on a resumed
chain sends no transaction that the first already made, and `devnet join` can run while the
devnet is up. Gas and tokens come from anvil's account 0 (the devnet's faucet); each node signs
its own registration with the EVM key in its encrypted key directory.

Units: token amounts in the reward token's smallest unit (`ledger.tokens(n)` = n whole tokens),
ETH amounts in wei.
"""

from __future__ import annotations

from dataclasses import dataclass
from thinkmesh.devnet.anvil import DevAccount
from thinkmesh.devnet.chain import DevChain
from thinkmesh.devnet.layout import DevnetLayout
from thinkmesh.devnet.processes import DevnetError
from thinkmesh.protocol.keys.keystore import UnlockedKeys, create_keys, unlock_keys
from thinkmesh.protocol.chain.ledger import Deployment, NodeStatus, tokens

UNBONDING_DELAY_S = 3_600
MIN_STAKE = tokens(10)
NODE_STAKE = tokens(100)
NODE_TOKENS = tokens(1_000)  # minted to each node: its stake and then some
POOL = tokens(100_000)  # what the rounds pay out of
POOL_LOW_WATER = tokens(10_000)  # top the pool up to POOL when it falls below this
GAS_ETH_WEI = 10 * 10**18  # each account's gas money; topped up below half of it


@dataclass(frozen=True)
class Registration:
    """A node's on-chain standing after `ensure_registered`; `sent` is False if it was already registered."""

    address: str
    status: NodeStatus
    stake: int
    sent: bool


def ensure_keys(layout: DevnetLayout, name: str) -> UnlockedKeys:
    """The identity called `name` in the state dir, made with the light KDF the first time."""
    key_dir = layout.key_dir(name)
    password = layout.password()
    if (key_dir / "identity.json").exists():
        return unlock_keys(key_dir, password)
    return create_keys(key_dir, password, kdf="light")


def admin_client(chain: DevChain, deployment: Deployment):
    from thinkmesh.protocol.chain.client import LedgerClient

    return LedgerClient.connect(chain.rpc_url, deployment, private_key=chain.faucet.private_key)


def deploy_or_reuse(chain: DevChain, layout: DevnetLayout, coordinator_address: str) -> tuple[Deployment, bool]:
    """The saved deployment if the chain still holds it, else a new one (saved). Returns (deployment, reused).

    A new ledger names the coordinator's own EVM account as its coordinator, so the coordinator
    settles rounds with its own key; the faucet is admin and token minter.
    """
    from thinkmesh.protocol.chain.client import LedgerClient, deploy
    from thinkmesh.protocol.chain.errors import ChainError

    if layout.deployment_file.is_file() and chain.resumed:
        saved = Deployment.load(layout.deployment_file)
        try:
            client = LedgerClient.connect(chain.rpc_url, saved)
        except ChainError as exc:
            raise DevnetError(
                f"the saved deployment {layout.deployment_file} is not on the resumed chain ({exc}); "
                f"start over with `thinkmesh devnet up --fresh`"
            ) from exc
        if not client.is_coordinator(coordinator_address):
            admin_client(chain, saved).grant_coordinator(coordinator_address)
        return saved, True
    deployment = deploy(
        chain.rpc_url, chain.faucet.private_key, unbonding_delay_s=UNBONDING_DELAY_S, min_stake=MIN_STAKE,
        coordinator=coordinator_address, expected_chain_id=chain.chain_id,
    )
    deployment.save(layout.deployment_file)
    return deployment, False


def ensure_pool(chain: DevChain, deployment: Deployment) -> int:
    """Tops the reward pool up to `POOL` when it ran low; returns the unallocated amount after."""
    admin = admin_client(chain, deployment)
    unallocated = admin.pool_totals().unallocated
    if unallocated < POOL_LOW_WATER:
        admin.mint(admin.address, POOL - unallocated)
        admin.fund(POOL - unallocated)
        unallocated = POOL
    return unallocated


def ensure_gas(chain: DevChain, address: str, amount_wei: int = GAS_ETH_WEI) -> None:
    """Sends ETH from the faucet when `address` holds less than half of `amount_wei`."""
    from thinkmesh.protocol.chain.client import connect_web3

    web3 = connect_web3(chain.rpc_url, expected_chain_id=chain.chain_id)
    if web3.eth.get_balance(address) >= amount_wei // 2:
        return
    _send_eth(web3, chain.faucet, address, amount_wei)


def _send_eth(web3, faucet: DevAccount, to: str, amount_wei: int) -> None:
    from eth_account import Account

    transaction = {
        "to": to, "value": amount_wei, "gas": 21_000, "chainId": web3.eth.chain_id,
        "nonce": web3.eth.get_transaction_count(faucet.address, "pending"),
        "maxFeePerGas": 2 * web3.eth.gas_price + 10**9, "maxPriorityFeePerGas": 10**9,
    }  # fmt: skip
    signed = Account.sign_transaction(transaction, faucet.private_key)
    receipt = web3.eth.wait_for_transaction_receipt(web3.eth.send_raw_transaction(signed.raw_transaction), timeout=30)
    if receipt["status"] != 1:
        raise DevnetError(f"the faucet's transfer of {amount_wei} wei to {to} failed (tx {receipt['transactionHash'].hex()})")


def ensure_registered(
    chain: DevChain, deployment: Deployment, keys: UnlockedKeys, strategy: str, *,
    stake: int = NODE_STAKE, endpoint: str = "",
) -> Registration:
    """Funds `keys`' account (gas and tokens) and registers it with `stake`, unless it is registered already."""
    from thinkmesh.protocol.chain.client import LedgerClient

    ensure_gas(chain, keys.evm_address)
    node = LedgerClient.connect(chain.rpc_url, deployment, private_key=private_key_hex(keys))
    record = node.node()
    if record.status != NodeStatus.NONE:
        return Registration(record.address, record.status, record.stake, sent=False)
    admin = admin_client(chain, deployment)
    balance = admin.token_balance(keys.evm_address)
    if balance < NODE_TOKENS:
        admin.mint(keys.evm_address, NODE_TOKENS - balance)
    node.register(keys.binding, stake, strategy, endpoint)
    record = node.node()
    return Registration(record.address, record.status, record.stake, sent=True)


def private_key_hex(keys: UnlockedKeys) -> str:
    return "0x" + keys.evm_private_key.hex()
