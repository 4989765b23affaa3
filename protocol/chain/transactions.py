"""Sending transactions from one local key, with every failure mapped to a `ChainError`.

Guarantees: a transaction that the contract would refuse is stopped at gas estimation and raised as
`ContractRevertError` with the decoded custom error, before anything is signed; one that reverts on
chain anyway (state changed between estimate and inclusion) is replayed at its block to decode why;
a nonce taken by another sender of the same account raises `NonceClashError` and nothing was
submitted; an unanswered RPC raises `RpcUnreachableError` naming the URL.

Retries are idempotent: a send whose answer was lost, or a transaction with no receipt in time, is
re-sent as the same signed bytes (same nonce, same hash); "already known", or "nonce too low" when
our own hash is mined or pooled, counts as sent. All senders of one account in this process share
one queue (protocol/chain/nonce_manager.py), so threads never sign two transactions with one nonce.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from thinkmesh.protocol.rules.hashing import keccak256
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)

from thinkmesh.protocol.chain.artifacts import RevertDecoder
from thinkmesh.protocol.chain.errors import (
    ChainError,
    ContractRevertError,
    NonceClashError,
    RpcUnreachableError,
    TransactionFailedError,
)
from thinkmesh.protocol.chain.ledger import TxResult
from thinkmesh.protocol.chain.nonce_manager import AccountNonces, account_nonces

logger = logging.getLogger(__name__)

GAS_MARGIN = 1.2  # estimates are exact on anvil; the margin absorbs state drift on busier chains
RECEIPT_TIMEOUT_S = 60.0  # in all, over RECEIPT_WAITS waits with the same bytes re-sent between them
RECEIPT_WAITS = 3
RECEIPT_POLL_S = 0.05
SEND_ATTEMPTS = 3  # a send that got no answer is repeated (same bytes) after 0.5 s, then 1 s
SEND_BACKOFF_S = 0.5
_NONCE_CLASH_MARKERS = ("nonce too low", "replacement transaction underpriced", "nonce has already been used")
_ALREADY_KNOWN_MARKERS = ("already known", "known transaction", "already imported")
_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ProviderConnectionError)


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

    Thread-safe: every sender of this (chain id, account) in the process takes turns on one
    `AccountNonces` (`nonces` replaces it, e.g. to stand in for another process in a test), holding
    the turn from choosing the nonce to the receipt, so transactions are mined in the order asked.
    The nonce is the node's pending count, read on each turn; a chain that was reset or reverted
    under the process therefore never leaves it stuck on a nonce from the old history.
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
        nonces: AccountNonces | None = None,
        receipt_waits: int = RECEIPT_WAITS,
        send_attempts: int = SEND_ATTEMPTS,
    ) -> None:
        self._web3 = web3
        self._account = account
        self._chain_id = chain_id
        self._decoder = decoder
        self._url = url
        self._receipt_timeout_s = receipt_timeout_s
        self._receipt_waits = max(1, receipt_waits)
        self._send_attempts = max(1, send_attempts)
        self.nonces = nonces if nonces is not None else account_nonces(chain_id, account.address)

    @property
    def address(self) -> str:
        return self._account.address

    def transact(self, action: str, function: Any) -> tuple[TxResult, Any]:
        """Sends `function` (a bound contract function or constructor) and waits for success.

        Returns the typed result and the raw receipt (for event decoding by the caller).
        """
        with self.nonces.turn(), rpc_errors(self._url):
            self._resend_outstanding(action)
            nonce = self._web3.eth.get_transaction_count(self._account.address, "pending")
            params = {"from": self._account.address, "chainId": self._chain_id, "nonce": nonce}
            try:
                tx = function.build_transaction(params)
            except ContractLogicError as exc:
                raise self._revert(action, exc) from exc
            except Web3RPCError as exc:
                raise ChainError(f"{action}: the node refused to estimate gas: {_rpc_message(exc)}") from exc
            tx["gas"] = math.ceil(tx["gas"] * GAS_MARGIN)
            signed = self._account.sign_transaction(tx)
            raw, tx_hash = bytes(signed.raw_transaction), bytes(signed.hash)
            self.nonces.outstanding[nonce] = raw
            self._submit(action, raw, nonce)
            receipt = self._confirm(action, raw, nonce)
            for used in [n for n in self.nonces.outstanding if n <= nonce]:
                del self.nonces.outstanding[used]  # mined, or overtaken for good: `nonce` is on chain
            if receipt["status"] != 1:
                raise self._explain_failure(action, tx, receipt)
            result = TxResult(tx_hash=tx_hash, block_number=receipt["blockNumber"], gas_used=receipt["gasUsed"])
            return result, receipt

    # ------------------------------------------------------------------ internals

    def _resend_outstanding(self, action: str) -> None:
        """Re-broadcasts earlier transactions that never got a receipt, so a new one queues behind them."""
        for nonce, raw in sorted(self.nonces.outstanding.items()):
            if self._receipt(keccak256(raw)) is not None:
                self.nonces.outstanding.pop(nonce)
                continue
            try:
                self._submit(f"{action} (re-sending unconfirmed nonce {nonce})", raw, nonce)
            except RpcUnreachableError:
                raise
            except ChainError as exc:  # taken by another transaction, or refused: it can never be mined
                logger.warning("dropped unconfirmed transaction 0x%s (nonce %d): %s", keccak256(raw).hex(), nonce, exc)

    def _submit(self, action: str, raw: bytes, nonce: int) -> None:
        """Hands `raw` to the node; repeats the same bytes when the answer was lost."""
        for attempt in range(self._send_attempts):
            try:
                self._broadcast(action, raw, nonce)
                return
            except _TRANSIENT as exc:
                if attempt + 1 == self._send_attempts:
                    raise RpcUnreachableError(
                        self._url, f"{exc.__class__.__name__} sending {action} (nonce {nonce}, "
                        f"0x{keccak256(raw).hex()}); it may have been received and will be re-sent first next time"
                    ) from exc
                time.sleep(SEND_BACKOFF_S * 2**attempt)

    def _broadcast(self, action: str, raw: bytes, nonce: int) -> None:
        try:
            self._web3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            message = _rpc_message(exc)
            lowered = message.lower()
            if any(marker in lowered for marker in _ALREADY_KNOWN_MARKERS):
                return  # this exact transaction is already in the pool
            if any(marker in lowered for marker in _NONCE_CLASH_MARKERS):
                if self._is_ours_known(keccak256(raw)):
                    return  # our own earlier send of these bytes was mined or pooled
                self.nonces.outstanding.pop(nonce, None)
                chain_nonce = self._web3.eth.get_transaction_count(self._account.address, "pending")
                raise NonceClashError(self._account.address, nonce, chain_nonce, message) from exc
            self.nonces.outstanding.pop(nonce, None)
            raise ChainError(f"{action}: the node rejected the transaction: {message}") from exc

    def _confirm(self, action: str, raw: bytes, nonce: int) -> Any:
        """The receipt of `raw`; between waits the same bytes are re-sent (a node may have dropped them)."""
        tx_hash = keccak256(raw)
        slice_s = self._receipt_timeout_s / self._receipt_waits
        for wait in range(self._receipt_waits):
            if wait:
                with contextlib.suppress(*_TRANSIENT):
                    self._broadcast(action, raw, nonce)
            deadline = time.monotonic() + slice_s
            while True:
                try:
                    return self._web3.eth.wait_for_transaction_receipt(
                        tx_hash, timeout=max(deadline - time.monotonic(), RECEIPT_POLL_S), poll_latency=RECEIPT_POLL_S
                    )
                except TimeExhausted:
                    break
                except _TRANSIENT:
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(min(SEND_BACKOFF_S, max(deadline - time.monotonic(), 0.0)))
        raise TransactionFailedError(
            f"{action}: expected a receipt for 0x{tx_hash.hex()} (nonce {nonce}) within "
            f"{self._receipt_timeout_s:.0f} s, got none; it is kept and re-sent as the same transaction "
            "before this account's next one, so do not sign a replacement"
        )

    def _receipt(self, tx_hash: bytes) -> Any | None:
        try:
            return self._web3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def _is_ours_known(self, tx_hash: bytes) -> bool:
        if self._receipt(tx_hash) is not None:
            return True
        try:
            self._web3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        return True

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
