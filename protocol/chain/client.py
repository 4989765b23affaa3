"""The chain client: one training run's `ThinkMeshLedger` and its reward token, over any JSON-RPC.

    client = LedgerClient.connect(rpc_url, deployment, private_key=key)
    client.open_round(round_id, model_hash, seed_commitment(seed))
    client.settle_round(round_id, seed, traces_root, awards, stats)   # safe to retry after a crash

Reads need no key; writes sign locally with eth-account (keys never go to the node). Every failure
is a `ChainError` (protocol/chain/errors.py). Records are the frozen types of protocol/chain/ledger.py.
Not thread-safe: use one client per thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import base58
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import Web3Exception
from web3.logs import DISCARD

from thinkmesh.protocol.chain import settlement as chain_settlement
from thinkmesh.protocol.chain.artifacts import LEDGER_CONTRACT, TOKEN_CONTRACT, RevertDecoder, load_artifact
from thinkmesh.protocol.rules.hashing import keccak256
from thinkmesh.protocol.chain.errors import (
    ChainError,
    ChainIdMismatchError,
    ContractMissingError,
    ContractRevertError,
)
from thinkmesh.protocol.chain.events import LedgerEvents
from thinkmesh.protocol.chain.transactions import TransactionSender, call_contract, rpc_errors
from thinkmesh.protocol.rules.identity import IdentityBinding, peer_id_from_public_key
from thinkmesh.protocol.chain.ledger import (
    MAX_ENDPOINT_BYTES,
    MAX_MULTIADDR_BYTES,
    MAX_PEER_ID_BYTES,
    MAX_STRATEGY_BYTES,
    Award,
    Deployment,
    NodeRecord,
    NodeStatus,
    PoolTotals,
    RoundRecord,
    RoundStats,
    RoundStatus,
    Settlement,
    TxResult,
    binding_bytes,
    bound_nodes,
    bounded_field,
    checksum_address,
    hash32,
)
from thinkmesh.protocol.rules.slashing import SlashReason
from thinkmesh.protocol.chain.round_details import RoundDetails

RPC_TIMEOUT_S = 10.0
COORDINATOR_ROLE = keccak256(b"COORDINATOR_ROLE")
DEFAULT_ADMIN_ROLE = b"\x00" * 32


def connect_web3(rpc_url: str, *, expected_chain_id: int | None = None, timeout_s: float = RPC_TIMEOUT_S) -> Web3:
    """A Web3 over HTTP that has answered `eth_chainId` (and matched `expected_chain_id` if given)."""
    web3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
    with rpc_errors(rpc_url):
        chain_id = web3.eth.chain_id
    if expected_chain_id is not None and chain_id != expected_chain_id:
        raise ChainIdMismatchError(rpc_url, expected_chain_id, chain_id)
    return web3


def deploy(
    rpc_url: str,
    private_key: str,
    *,
    unbonding_delay_s: int,
    min_stake: int,
    admin: str | None = None,
    coordinator: str | None = None,
    token: str | None = None,
    expected_chain_id: int | None = None,
) -> Deployment:
    """Deploys a ledger (and a fresh reward token unless `token` is given) from `private_key`.

    The deployer is admin, coordinator and token minter unless `admin` / `coordinator` name others.
    """
    web3 = connect_web3(rpc_url, expected_chain_id=expected_chain_id)
    account: LocalAccount = Account.from_key(private_key)
    sender = TransactionSender(web3, account, web3.eth.chain_id, RevertDecoder.for_artifacts(), rpc_url)
    if token is None:
        token_artifact = load_artifact(TOKEN_CONTRACT)
        factory = web3.eth.contract(abi=token_artifact.abi, bytecode=token_artifact.bytecode)
        _, receipt = sender.transact("deploy ThinkMeshToken", factory.constructor(account.address))
        token = receipt["contractAddress"]
    ledger_artifact = load_artifact(LEDGER_CONTRACT)
    factory = web3.eth.contract(abi=ledger_artifact.abi, bytecode=ledger_artifact.bytecode)
    constructor = factory.constructor(
        checksum_address(token, "token"),
        checksum_address(admin or account.address, "admin"),
        checksum_address(coordinator or account.address, "coordinator"),
        unbonding_delay_s,
        min_stake,
    )
    result, receipt = sender.transact("deploy ThinkMeshLedger", constructor)
    return Deployment(
        chain_id=web3.eth.chain_id, ledger=receipt["contractAddress"], token=token, block_number=result.block_number
    )


def discover_deployment(rpc_url: str, ledger_address: str, *, from_block: int = 0) -> Deployment:
    """The `Deployment` of the ledger at `ledger_address`: chain id from the RPC, token from
    `ledger.token()`. `from_block` (the deployment block, if known) bounds event scans.

    Raises `ContractMissingError` when no code is at the address and `ChainError` when the
    contract there does not answer `token()` like a ledger.
    """
    web3 = connect_web3(rpc_url)
    ledger = checksum_address(ledger_address, "ledger address")
    with rpc_errors(rpc_url):
        if not web3.eth.get_code(ledger):
            raise ContractMissingError(LEDGER_CONTRACT, ledger)
        chain_id = web3.eth.chain_id
    contract = web3.eth.contract(address=ledger, abi=load_artifact(LEDGER_CONTRACT).abi)
    try:
        token = call_contract(rpc_url, RevertDecoder.for_artifacts(), "token", contract.functions.token())
    except (ContractRevertError, Web3Exception) as exc:  # code that is not a ledger
        raise ChainError(f"expected a ThinkMeshLedger at {ledger}; its token() call failed: {exc}") from exc
    if not isinstance(token, str):
        raise ChainError(f"expected a ThinkMeshLedger at {ledger} answering token() with an address, got {token!r}")
    return Deployment(chain_id=chain_id, ledger=ledger, token=token, block_number=from_block)


class LedgerClient:
    """Reads and writes one deployment. Build it with `LedgerClient.connect`."""

    def __init__(self, web3: Web3, rpc_url: str, deployment: Deployment, account: LocalAccount | None) -> None:
        self.web3 = web3
        self.rpc_url = rpc_url
        self.deployment = deployment
        self._decoder = RevertDecoder.for_artifacts()
        self.ledger = web3.eth.contract(address=deployment.ledger, abi=load_artifact(LEDGER_CONTRACT).abi)
        self.token = web3.eth.contract(address=deployment.token, abi=load_artifact(TOKEN_CONTRACT).abi)
        self._account = account
        self._sender = (
            TransactionSender(web3, account, deployment.chain_id, self._decoder, rpc_url) if account else None
        )
        self.events = LedgerEvents(self.ledger, rpc_url, from_block=deployment.block_number)
        self._supports_details: bool | None = None

    @classmethod
    def connect(
        cls, rpc_url: str, deployment: Deployment, *, private_key: str | None = None, timeout_s: float = RPC_TIMEOUT_S
    ) -> LedgerClient:
        """Checks the RPC answers, serves `deployment.chain_id`, and holds code at both addresses."""
        web3 = connect_web3(rpc_url, expected_chain_id=deployment.chain_id, timeout_s=timeout_s)
        with rpc_errors(rpc_url):
            for name, address in ((LEDGER_CONTRACT, deployment.ledger), (TOKEN_CONTRACT, deployment.token)):
                if not web3.eth.get_code(address):
                    raise ContractMissingError(name, address)
        account = Account.from_key(private_key) if private_key else None
        return cls(web3, rpc_url, deployment, account)

    @classmethod
    def offline(
        cls, rpc_url: str, deployment: Deployment, *, private_key: str | None = None, account: LocalAccount | None = None,
        timeout_s: float = RPC_TIMEOUT_S,
    ) -> LedgerClient:
        """A client built without asking the RPC anything (for a process that must start while its chain
        is away): nothing is checked, and the first call that reaches a wrong or absent chain raises."""
        web3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        return cls(web3, rpc_url, deployment, account or (Account.from_key(private_key) if private_key else None))

    def copy(self) -> LedgerClient:
        """The same deployment and account over a connection of its own, for another thread (no RPC call)."""
        timeout = getattr(self.web3.provider, "_request_kwargs", {}).get("timeout", RPC_TIMEOUT_S)
        return type(self).offline(self.rpc_url, self.deployment, account=self._account, timeout_s=timeout)

    @property
    def address(self) -> str:
        """The signing account's address."""
        return self._signer().address

    # ------------------------------------------------------------------ token and pool

    def mint(self, to: str, amount: int) -> TxResult:
        """Mints reward tokens (the signer needs the token's MINTER_ROLE; the deployer has it)."""
        return self._transact("ThinkMeshToken.mint", self.token.functions.mint(checksum_address(to), amount))

    def token_balance(self, account: str | None = None) -> int:
        return self._call("ThinkMeshToken.balanceOf", self.token.functions.balanceOf(self._who(account)))

    def fund(self, amount: int) -> TxResult:
        """Approves (if needed) and moves `amount` from the signer into the unallocated pool."""
        self._ensure_allowance(amount)
        return self._transact("fund", self.ledger.functions.fund(amount))

    def claim(self, recipient: str | None = None) -> tuple[int, TxResult]:
        """Sends the signer's whole claimable balance to `recipient` (default: the signer); returns the amount."""
        result, receipt = self._transact_with_receipt(
            "claim", self.ledger.functions.claim(self._who(recipient))
        )
        (event,) = self.ledger.events.RewardClaimed().process_receipt(receipt, errors=DISCARD)
        return event["args"]["amount"], result

    def pool_totals(self) -> PoolTotals:
        raw = self._call("poolTotals", self.ledger.functions.poolTotals())
        return PoolTotals(*raw)

    # ------------------------------------------------------------------ node registry

    def register(
        self, binding: IdentityBinding, stake: int, strategy: str, endpoint: str, *, peer_id: bytes | None = None
    ) -> TxResult:
        """Registers the signer as the node of `binding` (made with `identity.bind_identity`), approving the stake.

        `peer_id` defaults to the libp2p PeerID bytes derived from the binding's Ed25519 key.
        """
        if checksum_address(binding.evm_address) != self.address:
            raise ChainError(
                f"expected an identity binding for this client's account {self.address}, got one for {binding.evm_address}"
            )
        key = hash32(binding.ed25519_public_key, "ed25519 public key")
        peer_id_bytes = peer_id if peer_id is not None else base58.b58decode(peer_id_from_public_key(key))
        self._ensure_allowance(stake)
        function = self.ledger.functions.register(
            key, bounded_field("peer id", peer_id_bytes, MAX_PEER_ID_BYTES), binding_bytes(binding), stake,
            bounded_field("strategy", strategy, MAX_STRATEGY_BYTES), bounded_field("endpoint", endpoint, MAX_ENDPOINT_BYTES)
        )
        return self._transact("register", function)

    def add_stake(self, amount: int) -> TxResult:
        self._ensure_allowance(amount)
        return self._transact("addStake", self.ledger.functions.addStake(amount))

    def update_metadata(self, strategy: str, endpoint: str) -> TxResult:
        return self._transact("updateMetadata", self.ledger.functions.updateMetadata(
            bounded_field("strategy", strategy, MAX_STRATEGY_BYTES), bounded_field("endpoint", endpoint, MAX_ENDPOINT_BYTES)))

    def begin_unbonding(self) -> TxResult:
        return self._transact("beginUnbonding", self.ledger.functions.beginUnbonding())

    def withdraw_stake(self) -> tuple[int, TxResult]:
        """Returns the signer's remaining stake after its unbonding delay; returns the amount."""
        result, receipt = self._transact_with_receipt("withdrawStake", self.ledger.functions.withdrawStake())
        (event,) = self.ledger.events.StakeWithdrawn().process_receipt(receipt, errors=DISCARD)
        return event["args"]["amount"], result

    def node(self, account: str | None = None) -> NodeRecord:
        address = self._who(account)
        raw = self._call("node", self.ledger.functions.node(address))
        status, stake, claimable, unbonding_ends, registered_at, key, peer_id, strategy, endpoint = raw
        return NodeRecord(
            address=address,
            status=NodeStatus(status),
            stake=stake,
            claimable=claimable,
            unbonding_ends=unbonding_ends,
            registered_at=registered_at,
            ed25519_key=bytes(key),
            peer_id=bytes(peer_id),
            strategy=strategy,
            endpoint=endpoint,
        )

    def bound_node(self, ed25519_key: bytes) -> str | None:
        """The address paid for `ed25519_key`'s work: its earliest registration with a valid binding."""
        registration = bound_nodes(self.events.registrations()).get(hash32(ed25519_key, "ed25519 key"))
        return registration.node if registration else None

    # ------------------------------------------------------------------ rounds

    def open_round(self, round_id: int, model_hash: bytes, seed_commitment: bytes) -> TxResult:
        """Opens `round_id` (coordinator only). `seed_commitment` comes from `ledger.seed_commitment(seed)`."""
        function = self.ledger.functions.openRound(
            round_id, hash32(model_hash, "model hash"), hash32(seed_commitment, "seed commitment")
        )
        return self._transact("openRound", function)

    def settle_round(
        self, round_id: int, seed: bytes, traces_root: bytes, awards: Sequence[Award], stats: RoundStats = RoundStats(),
        details: RoundDetails | None = None,
    ) -> Settlement:
        """Settles `round_id` once; retrying the same settlement (after a crash, a timeout) is a no-op.

        Awards are put in canonical order; `stats` go out in the same transaction's `RoundMetrics`
        event and `details` (when given, and the ledger has `settleRoundWithDetails`) in its
        `RoundDescribed` and `StrategyValueRecorded` events; both go into the settlement hash. Awards that do not fit one block go in parts
        (protocol/chain/settlement.py), resumed where they stopped. If the round is already settled
        with this exact payload (same settlement hash), returns `Settlement(tx=None)`; with a different
        payload, raises `SettlementConflictError`. The contract itself refuses any second settlement
        and any part out of sequence, so a retry can never pay twice, even when two retries race.
        """
        return chain_settlement.settle_round(self, round_id, seed, traces_root, awards, stats, details)

    def supports_details(self) -> bool:
        """Whether this ledger has `settleRoundWithDetails` (deployments before it do not); read once."""
        if self._supports_details is None:
            with rpc_errors(self.rpc_url):
                code = bytes(self.web3.eth.get_code(self.ledger.address))
            self._supports_details = chain_settlement.has_details_function(code)
        return self._supports_details

    def settle_round_part(self, round_id: int, first_index: int, awards: Sequence[Award]) -> TxResult:
        """Credits `awards` (canonical order, continuing the credited ones) ahead of `settle_round`."""
        function = self.ledger.functions.settleRoundPart(round_id, first_index, [a.as_abi() for a in awards])
        return self._transact("settleRoundPart", function)

    def round_parts(self, round_id: int) -> tuple[int, bytes]:
        """(awards credited in parts, their digest) of a round settled in parts; (0, zero) otherwise."""
        credited, digest = self._call("roundParts", self.ledger.functions.roundParts(round_id))
        return credited, bytes(digest)

    def slash(
        self, round_id: int, node: str, amount: int, reason: SlashReason | int, evidence_hash: bytes
    ) -> TxResult:
        """Slashes `amount` of `node`'s stake for `round_id` into the pool (coordinator only, once per round)."""
        function = self.ledger.functions.slash(
            round_id, checksum_address(node, "node"), amount, int(reason), hash32(evidence_hash, "evidence hash")
        )
        return self._transact("slash", function)

    def round(self, round_id: int) -> RoundRecord:
        raw = self._call("round", self.ledger.functions.round(round_id))
        (status, opened, settled, count, samples, payout, slashed, model, commitment, seed, root, digest) = raw
        return RoundRecord(
            round_id=round_id,
            status=RoundStatus(status),
            opened_at=opened,
            settled_at=settled,
            node_count=count,
            total_samples=samples,
            total_payout=payout,
            total_slashed=slashed,
            model_hash=bytes(model),
            seed_commitment=bytes(commitment),
            seed=bytes(seed),
            traces_root=bytes(root),
            settlement_hash=bytes(digest),
        )

    def is_slashed(self, round_id: int, node: str) -> bool:
        return self._call("isSlashed", self.ledger.functions.isSlashed(round_id, checksum_address(node)))

    def verify_trace(self, round_id: int, trace_hash: bytes, proof: Sequence[bytes]) -> bool:
        """Asks the contract whether `trace_hash` is in settled round `round_id`'s traces tree."""
        function = self.ledger.functions.verifyTrace(round_id, hash32(trace_hash, "trace hash"), list(proof))
        return self._call("verifyTrace", function)

    # ------------------------------------------------------------------ bootstrap peers and admin

    def add_bootstrap_peer(self, multiaddr: str) -> TxResult:
        multiaddr = bounded_field("multiaddr", multiaddr, MAX_MULTIADDR_BYTES)
        return self._transact("addBootstrapPeer", self.ledger.functions.addBootstrapPeer(multiaddr))

    def remove_bootstrap_peer(self, multiaddr: str) -> TxResult:
        return self._transact("removeBootstrapPeer", self.ledger.functions.removeBootstrapPeer(multiaddr))

    def bootstrap_peers(self) -> list[str]:
        return list(self._call("bootstrapPeers", self.ledger.functions.bootstrapPeers()))

    def grant_coordinator(self, account: str) -> TxResult:
        function = self.ledger.functions.grantRole(COORDINATOR_ROLE, checksum_address(account))
        return self._transact("grantRole(COORDINATOR_ROLE)", function)

    def is_coordinator(self, account: str) -> bool:
        return self._call("hasRole", self.ledger.functions.hasRole(COORDINATOR_ROLE, checksum_address(account)))

    def pause(self) -> TxResult:
        return self._transact("pause", self.ledger.functions.pause())

    def unpause(self) -> TxResult:
        return self._transact("unpause", self.ledger.functions.unpause())

    def set_min_stake(self, amount: int) -> TxResult:
        return self._transact("setMinStake", self.ledger.functions.setMinStake(amount))

    def min_stake(self) -> int:
        return self._call("minStake", self.ledger.functions.minStake())

    def unbonding_delay(self) -> int:
        return self._call("unbondingDelay", self.ledger.functions.unbondingDelay())

    # ------------------------------------------------------------------ internals

    def _signer(self) -> TransactionSender:
        if self._sender is None:
            raise ChainError("this client is read-only: connect with private_key=... to send transactions")
        return self._sender

    def _who(self, account: str | None) -> str:
        return checksum_address(account) if account is not None else self.address

    def _call(self, action: str, function: Any) -> Any:
        sender = self._sender.address if self._sender is not None else None
        return call_contract(self.rpc_url, self._decoder, action, function, sender)

    def _transact(self, action: str, function: Any) -> TxResult:
        return self._transact_with_receipt(action, function)[0]

    def _transact_with_receipt(self, action: str, function: Any) -> tuple[TxResult, Any]:
        return self._signer().transact(action, function)

    def _ensure_allowance(self, amount: int) -> None:
        owner = self.address
        allowance = self._call("allowance", self.token.functions.allowance(owner, self.deployment.ledger))
        if allowance < amount:
            self._transact("ThinkMeshToken.approve", self.token.functions.approve(self.deployment.ledger, amount))
