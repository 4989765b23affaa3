"""Sending transactions from one local key, with every failure mapped to a `ChainError`.

Guarantees: a transaction that the contract would refuse is stopped at gas estimation and raised as
`ContractRevertError` with the decoded custom error, before anything is signed; one that reverts on
chain anyway (state changed between estimate and inclusion) is replayed at its block to decode why;
a nonce taken by another sender of the same account raises `NonceClashError` and nothing was
submitted; an unanswered RPC raises `RpcUnreachableError` naming the URL.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    Web3RPCError,
)

from thinkmesh.protocol.chain_abi import RevertDecoder
from thinkmesh.protocol.chain_errors import (
    ChainError,
    ContractRevertError,
    NonceClashError,
    RpcUnreachableError,
    TransactionFailedError,
)
from thinkmesh.protocol.ledger import TxResult

GAS_MARGIN = 1.2  # estimates are exact on anvil; the margin absorbs state drift on busier chains
RECEIPT_TIMEOUT_S = 60.0
RECEIPT_POLL_S = 0.05
_NONCE_CLASH_MARKERS = ("nonce too low", "replacement transaction underpriced", "nonce has already been used")
_ALREADY_KNOWN_MARKERS = ("already known", "known transaction")


@contextlib.contextmanager
def rpc_errors(url: str) -> Iterator[None]:
    """Turns transport failures (refused, timed out, not JSON-RPC) into `RpcUnreachableError(url)`."""
    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ProviderConnectionError) as exc:
        raise RpcUnreachableError(url, exc.__class__.__name__ + ": " + str(exc)[:200]) from exc
    except requests.exceptions.RequestException as exc:
        raise RpcUnreachableError(url, exc) from exc


def revert_data(exc: ContractLogicError) -> bytes:
    """The raw revert payload carried by a web3 contract error (empty if the node sent none)."""
    data = exc.data if isinstance(exc.data, str) else None
    if data is None and isinstance(exc.args[-1] if exc.args else None, str):
        data = exc.args[-1]
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return b""
    return b""


def _rpc_message(exc: Web3RPCError) -> str:
    response = getattr(exc, "rpc_response", None) or {}
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return str(exc)


def contract_error(action: str, exc: ContractLogicError, decoder: RevertDecoder) -> ContractRevertError:
    """The decoded form of a web3 contract error (custom error, `Error(string)` or `Panic(uint256)`)."""
    data = revert_data(exc)
    if not data:
        return ContractRevertError(action, "Error", {"message": str(exc.message or exc)}, b"")
    decoded = decoder.decode(data)
    return ContractRevertError(action, decoded.name, decoded.args, data)


def call_contract(url: str, decoder: RevertDecoder, action: str, function: Any, sender: str | None = None) -> Any:
    """A read-only contract call (as `sender` if given); a revert raises `ContractRevertError`."""
    with rpc_errors(url):
        try:
            return function.call({"from": sender} if sender else {})
        except ContractLogicError as exc:
            raise contract_error(action, exc, decoder) from exc


class TransactionSender:
    """Builds, signs, sends and confirms transactions for one account on one chain.

    Keeps the account's next nonce locally after the first read, so back-to-back transactions do not
    race the node's pending count; a clash (another process using the same key) clears that cache.
    Not thread-safe: one sender per thread, or serialize calls.
    """

    def __init__(
        self,
        web3: Web3,
        account: LocalAccount,
        chain_id: int,
        decoder: RevertDecoder,
        url: str,
        *,
        receipt_timeout_s: float = RECEIPT_TIMEOUT_S,
    ) -> None:
        self._web3 = web3
        self._account = account
        self._chain_id = chain_id
        self._decoder = decoder
        self._url = url
        self._receipt_timeout_s = receipt_timeout_s
        self._next_nonce: int | None = None

    @property
    def address(self) -> str:
        return self._account.address

    def transact(self, action: str, function: Any) -> tuple[TxResult, Any]:
        """Sends `function` (a bound contract function or constructor) and waits for success.

        Returns the typed result and the raw receipt (for event decoding by the caller).
        """
        with rpc_errors(self._url):
            nonce = self._nonce()
            params = {"from": self._account.address, "chainId": self._chain_id, "nonce": nonce}
            try:
                tx = function.build_transaction(params)
            except ContractLogicError as exc:
                raise self._revert(action, exc) from exc
            except Web3RPCError as exc:
                raise ChainError(f"{action}: the node refused to estimate gas: {_rpc_message(exc)}") from exc
            tx["gas"] = math.ceil(tx["gas"] * GAS_MARGIN)
            raw = self._account.sign_transaction(tx).raw_transaction
            tx_hash = self._send(action, raw, nonce)
            self._next_nonce = nonce + 1
            receipt = self._wait(action, tx_hash)
            if receipt["status"] != 1:
                raise self._explain_failure(action, tx, receipt)
            result = TxResult(tx_hash=bytes(tx_hash), block_number=receipt["blockNumber"], gas_used=receipt["gasUsed"])
            return result, receipt

    # ------------------------------------------------------------------ internals

    def _nonce(self) -> int:
        if self._next_nonce is None:
            self._next_nonce = self._web3.eth.get_transaction_count(self._account.address, "pending")
        return self._next_nonce

    def _send(self, action: str, raw: bytes, nonce: int) -> bytes:
        try:
            return bytes(self._web3.eth.send_raw_transaction(raw))
        except Web3RPCError as exc:
            message = _rpc_message(exc)
            lowered = message.lower()
            if any(marker in lowered for marker in _ALREADY_KNOWN_MARKERS):
                return keccak(raw)  # this exact transaction is already in the pool: wait for it
            self._next_nonce = None
            if any(marker in lowered for marker in _NONCE_CLASH_MARKERS):
                chain_nonce = self._web3.eth.get_transaction_count(self._account.address, "pending")
                raise NonceClashError(self._account.address, nonce, chain_nonce, message) from exc
            raise ChainError(f"{action}: the node rejected the transaction: {message}") from exc

    def _wait(self, action: str, tx_hash: bytes) -> Any:
        try:
            return self._web3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._receipt_timeout_s, poll_latency=RECEIPT_POLL_S
            )
        except TimeExhausted as exc:
            raise TransactionFailedError(
                f"{action}: expected a receipt for 0x{tx_hash.hex()} within {self._receipt_timeout_s:.0f} s, "
                "got none; it may still be mined, so check before resending"
            ) from exc

    def _explain_failure(self, action: str, tx: dict[str, Any], receipt: Any) -> ChainError:
        replay = {key: tx[key] for key in ("from", "to", "data", "value", "gas") if key in tx}
        try:
            self._web3.eth.call(replay, block_identifier=receipt["blockNumber"])
        except ContractLogicError as exc:
            return self._revert(action, exc)
        return TransactionFailedError(
            f"{action}: transaction 0x{bytes(receipt['transactionHash']).hex()} failed on chain "
            f"(gas used {receipt['gasUsed']} of {tx['gas']}) and replays without a revert reason"
        )

    def _revert(self, action: str, exc: ContractLogicError) -> ContractRevertError:
        return contract_error(action, exc, self._decoder)
