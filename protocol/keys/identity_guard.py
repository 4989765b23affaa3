"""A node refuses to start with keys that the ledger already ties to someone else.

The ledger pays an Ed25519 key's work to the account of its earliest registration whose binding
holds (`ledger.bound_nodes`). An identity copied to a second machine with another EVM account
would therefore work for the first account's pay, and an account registered with one key but run
with another would sign contributions that no registration vouches for. Both are refused before
anything is sent, and the message names both sides so the operator can pick the right keystore.
"""

from __future__ import annotations

from typing import Protocol

from thinkmesh.protocol.chain.errors import IdentityMismatchError
from thinkmesh.protocol.rules.identity import IdentityBinding, peer_id_from_public_key
from thinkmesh.protocol.chain.ledger import NodeRecord, NodeStatus, checksum_address


class RegistryReader(Protocol):
    """What the guard reads from the ledger (a `LedgerClient` fits)."""

    def bound_node(self, ed25519_key: bytes) -> str | None: ...

    def node(self, account: str | None = None) -> NodeRecord: ...


def check_identity_owner(client: RegistryReader, binding: IdentityBinding) -> NodeRecord:
    """Raises `IdentityMismatchError` unless the ledger agrees that `binding`'s two keys belong together.

    Returns the keystore account's `NodeRecord` (status NONE when it has not registered yet).
    """
    mine = checksum_address(binding.evm_address, "keystore account")
    peer_id = peer_id_from_public_key(binding.ed25519_public_key)
    owner = client.bound_node(binding.ed25519_public_key)
    if owner is not None and checksum_address(owner) != mine:
        raise IdentityMismatchError(
            f"identity {peer_id} is registered on the ledger to account {checksum_address(owner)}, but this "
            f"keystore's account is {mine}: its work would be paid to {checksum_address(owner)}. Run with the "
            f"keystore that holds {checksum_address(owner)}, or make a new identity (`thinkmesh keys new`).",
            peer_id=peer_id, keystore_account=mine, registered_account=checksum_address(owner),
        )
    record = client.node(mine)
    if record.status != NodeStatus.NONE and record.ed25519_key != binding.ed25519_public_key:
        other = peer_id_from_public_key(record.ed25519_key)
        raise IdentityMismatchError(
            f"account {mine} is registered on the ledger with identity {other} "
            f"(Ed25519 0x{record.ed25519_key.hex()}), but this keystore's identity is {peer_id}. Run with the "
            f"keystore that holds {other}, or register a new account for this identity.",
            peer_id=peer_id, keystore_account=mine, registered_account=mine, registered_peer_id=other,
        )
    return record
