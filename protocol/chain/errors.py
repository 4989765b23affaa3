"""One exception family for the chain layer: everything the ledger client raises is a `ChainError`.

Each message says what was expected and what came, so an operator can act without a traceback:
which RPC URL did not answer, which chain id was expected, which custom error the contract
reverted with (decoded, with its arguments), which nonce clashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thinkmesh.protocol.rules.errors import ProtocolError


class ChainError(ProtocolError):
    """A chain interaction that did not do what the caller asked."""


class RpcUnreachableError(ChainError):
    """The JSON-RPC endpoint did not answer (refused, timed out, or not an Ethereum node)."""

    def __init__(self, url: str, cause: object) -> None:
        self.url = url
        super().__init__(f"expected an Ethereum JSON-RPC node at {url}, it did not answer: {cause}")


class ChainIdMismatchError(ChainError):
    """The RPC serves a different chain than the deployment or configuration names."""

    def __init__(self, url: str, expected: int, got: int) -> None:
        self.url, self.expected, self.got = url, expected, got
        super().__init__(f"expected chain id {expected} at {url}, the node reports {got}")


class ContractMissingError(ChainError):
    """No contract code at the address a deployment names (wrong chain, or a chain that was reset)."""

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address
        super().__init__(f"expected {name} contract code at {address}, found none")


class ArtifactError(ChainError):
    """A built ABI/bytecode artifact is missing or malformed."""


class LedgerRecordError(ChainError):
    """A value that does not fit the ledger's typed fields (an address, a uint width, a 32-byte hash)."""


class ContractRevertError(ChainError):
    """A call the contract refused, with its custom error decoded.

    `error_name` is the Solidity error name (`RoundNotOpen`, `AccessControlUnauthorizedAccount`,
    `Error` for a string reason, `Panic` for an assert); `error_args` maps each parameter to its
    decoded value; `data` is the raw revert data.
    """

    def __init__(self, action: str, error_name: str, error_args: Mapping[str, Any], data: bytes) -> None:
        self.action = action
        self.error_name = error_name
        self.error_args = dict(error_args)
        self.data = data
        rendered = ", ".join(f"{key}={_render(value)}" for key, value in self.error_args.items())
        super().__init__(f"{action} reverted with {error_name}({rendered})")


class SettlementConflictError(ChainError):
    """A round is already settled, but with a different payload than the one being retried."""

    def __init__(self, round_id: int, stored_hash: bytes, attempted_hash: bytes) -> None:
        self.round_id, self.stored_hash, self.attempted_hash = round_id, stored_hash, attempted_hash
        super().__init__(
            f"round {round_id} is already settled with payload hash 0x{stored_hash.hex()}; "
            f"this settlement hashes to 0x{attempted_hash.hex()}, so it is a different settlement, not a retry"
        )


class NonceClashError(ChainError):
    """Another transaction from the same account took the nonce this one used; nothing was submitted."""

    def __init__(self, account: str, nonce: int, chain_nonce: int | None, detail: str) -> None:
        self.account, self.nonce, self.chain_nonce = account, nonce, chain_nonce
        seen = "unknown" if chain_nonce is None else str(chain_nonce)
        super().__init__(
            f"nonce clash for {account}: sent with nonce {nonce}, the node's next nonce is {seen} ({detail}); "
            "another sender uses this account; the transaction was not submitted and may be retried"
        )


class AccountInUseError(ChainError):
    """Another process on this machine already sends from this account on this chain."""

    def __init__(self, chain_id: int, account: str, pid: int | None, role: str | None, lock_path: str) -> None:
        self.chain_id, self.account, self.pid, self.role, self.lock_path = chain_id, account, pid, role, lock_path
        holder = f"{role or 'another process'} (pid {pid})" if pid else "another process (it has not written its pid yet)"
        super().__init__(
            f"account {account} on chain {chain_id} is already in use by {holder}; two processes sending from one "
            f"account would race each other's nonces, so this one stops. Stop that process, or give this one its "
            f"own account (`thinkmesh keys new`). Lock file: {lock_path}"
        )


class IdentityMismatchError(ChainError):
    """A node identity and an EVM account that the ledger already ties to someone else."""

    def __init__(self, message: str, *, peer_id: str, keystore_account: str, registered_account: str | None = None,
                 registered_peer_id: str | None = None) -> None:
        self.peer_id, self.keystore_account = peer_id, keystore_account
        self.registered_account, self.registered_peer_id = registered_account, registered_peer_id
        super().__init__(message)


class TransactionFailedError(ChainError):
    """A transaction was mined but failed without decodable revert data, or never got a receipt."""


def _render(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return repr(value) if isinstance(value, str) else str(value)
