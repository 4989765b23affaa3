"""Node identities: one Ed25519 key, its libp2p PeerID, domain-separated signatures, and the
binding between that key and the node's EVM account.

Why one key: the PeerID a node is reached at on the p2p network, the signer of its contributions,
and the identity registered on chain must be the same thing, or a peer could claim another's work.
The libp2p PeerID is derived exactly as libp2p does it (protobuf `PublicKey{Ed25519, key}` wrapped
in an identity multihash, base58btc), so hivemind's p2pd, given `libp2p_private_key_bytes()` as its
identity file, announces the same PeerID.

Signatures never cover bare payloads: they cover `SIGNATURE_TAG || encode(SigningDomain) ||
sha256(payload)`, so a signature made for one chain, run, message type or round verifies nowhere
else. Since the payload enters only as its sha256, a verifier that already hashed the payload
(the coordinator derives a contribution's hash from that same digest) checks the signature from
the digest (`verify_signature_of_hash`) instead of reading megabytes a second time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import base58
import nacl.exceptions
import nacl.signing
from eth_account import Account
from eth_account.messages import encode_defunct

from thinkmesh.protocol.rules.encoding import encode_record
from thinkmesh.protocol.rules.errors import SignatureError

SIGNATURE_TAG = b"thinkmesh/signature/v1\x00"
BINDING_TAG = "thinkmesh identity binding v1"
_PROTOBUF_ED25519_PUBLIC = b"\x08\x01\x12\x20"  # KeyType=Ed25519, Data=32 bytes
_PROTOBUF_ED25519_PRIVATE = b"\x08\x01\x12\x40"  # KeyType=Ed25519, Data=64 bytes (seed || public)
_IDENTITY_MULTIHASH = b"\x00\x24"  # identity code, 36-byte digest


@dataclass(frozen=True)
class SigningDomain:
    """Where a signature is valid: one chain, one training run, one message type, one round."""

    chain_id: int
    run_id: str
    message_type: str
    round_id: int


def payload_hash(payload: bytes) -> bytes:
    """sha256 of a signed payload: all a signature commits to of it."""
    return hashlib.sha256(payload).digest()


def signing_digest(domain: SigningDomain, payload_sha256: bytes) -> bytes:
    """What Ed25519 signs: the domain and the payload's sha256 (`payload_hash`)."""
    if len(payload_sha256) != 32:
        raise SignatureError(f"a payload hash is 32 bytes, got {len(payload_sha256)}")
    return hashlib.sha256(SIGNATURE_TAG + encode_record(domain) + payload_sha256).digest()


def peer_id_from_public_key(public_key: bytes) -> str:
    """The base58 libp2p PeerID of an Ed25519 public key (the `12D3KooW...` form)."""
    if len(public_key) != 32:
        raise SignatureError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return base58.b58encode(_IDENTITY_MULTIHASH + _PROTOBUF_ED25519_PUBLIC + public_key).decode()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """Inverse of `peer_id_from_public_key`; rejects PeerIDs of any other key type."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise SignatureError(f"PeerID {peer_id!r} is not base58") from exc
    prefix = _IDENTITY_MULTIHASH + _PROTOBUF_ED25519_PUBLIC
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise SignatureError(f"PeerID {peer_id!r} is not an Ed25519 identity PeerID")
    return raw[len(prefix):]


def verify_signature(public_key: bytes, domain: SigningDomain, payload: bytes, signature: bytes) -> None:
    """Raises SignatureError unless `signature` is `public_key`'s over (domain, payload)."""
    verify_signature_of_hash(public_key, domain, payload_hash(payload), signature)


def verify_signature_of_hash(public_key: bytes, domain: SigningDomain, payload_sha256: bytes, signature: bytes) -> None:
    """`verify_signature` for a payload the caller has hashed already (`payload_hash`)."""
    if len(public_key) != 32 or len(signature) != 64:
        raise SignatureError(
            f"expected a 32-byte key and 64-byte signature, got {len(public_key)} and {len(signature)}"
        )
    try:
        nacl.signing.VerifyKey(public_key).verify(signing_digest(domain, payload_sha256), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError) as exc:
        raise SignatureError(
            f"bad signature by {peer_id_from_public_key(public_key)} for {domain.message_type} "
            f"round {domain.round_id} of run {domain.run_id!r} on chain {domain.chain_id}"
        ) from exc


class NodeIdentity:
    """An Ed25519 signing key. Its secret never appears in `repr`, logs or errors."""

    def __init__(self, signing_key: nacl.signing.SigningKey):
        self._key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.peer_id: str = peer_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeIdentity:
        if len(seed) != 32:
            raise SignatureError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    def seed(self) -> bytes:
        """The 32-byte secret; for keystores only."""
        return bytes(self._key)

    def sign(self, domain: SigningDomain, payload: bytes) -> bytes:
        return self._key.sign(signing_digest(domain, payload_hash(payload))).signature

    def libp2p_private_key_bytes(self) -> bytes:
        """The key as libp2p's protobuf `PrivateKey`: the identity file format p2pd reads."""
        return _PROTOBUF_ED25519_PRIVATE + self.seed() + self.public_key

    def __repr__(self) -> str:
        return f"NodeIdentity(peer_id={self.peer_id})"


@dataclass(frozen=True)
class IdentityBinding:
    """Proof that one Ed25519 key and one EVM account belong to the same operator.

    Each key signs a statement naming the other, so neither can be bound to a key it does not
    control: the contract registers the EVM sender, the coordinator checks this binding.
    """

    ed25519_public_key: bytes
    evm_address: str
    ed25519_signature: bytes
    evm_signature: bytes


def _binding_statement(ed25519_public_key: bytes, evm_address: str) -> str:
    return f"{BINDING_TAG}: ed25519 0x{ed25519_public_key.hex()} evm {evm_address.lower()}"


def bind_identity(identity: NodeIdentity, evm_private_key: bytes) -> IdentityBinding:
    account = Account.from_key(evm_private_key)
    statement = _binding_statement(identity.public_key, account.address).encode()
    domain = SigningDomain(chain_id=0, run_id="", message_type="identity-binding", round_id=0)
    evm_signature = account.sign_message(encode_defunct(statement)).signature
    return IdentityBinding(
        ed25519_public_key=identity.public_key,
        evm_address=account.address,
        ed25519_signature=identity.sign(domain, statement),
        evm_signature=bytes(evm_signature),
    )


def verify_binding(binding: IdentityBinding) -> None:
    """Raises SignatureError unless both signatures of the binding check."""
    statement = _binding_statement(binding.ed25519_public_key, binding.evm_address).encode()
    domain = SigningDomain(chain_id=0, run_id="", message_type="identity-binding", round_id=0)
    verify_signature(binding.ed25519_public_key, domain, statement, binding.ed25519_signature)
    try:
        signer = Account.recover_message(encode_defunct(statement), signature=binding.evm_signature)
    except Exception as exc:  # eth-keys raises several unrelated types on malformed signatures
        raise SignatureError(f"EVM binding signature is malformed: {type(exc).__name__}") from exc
    if signer.lower() != binding.evm_address.lower():
        raise SignatureError(
            f"EVM binding signature is by {signer}, expected {binding.evm_address}"
        )
