"""Merkle commitments over sample hashes, verifiable on chain by OpenZeppelin's `MerkleProof`.

Conventions follow OpenZeppelin's StandardMerkleTree for one `bytes32` value per leaf:
  leaf  = keccak256(keccak256(item))          (double hashing: a leaf can never pass for a node)
  node  = keccak256(min(a, b) ++ max(a, b))   (sorted pairs: proofs need no left/right bits)
Leaves keep the order the caller gives (the protocol orders them by sample index). A layer with an
odd count promotes its last node unchanged, so no leaf is ever duplicated and a tree of n leaves
has exactly n leaves. Proofs are the sibling hashes from the leaf up; `verify_proof` is the same
fold as `MerkleProof.verify`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from thinkmesh.protocol.rules.hashing import keccak256

from thinkmesh.protocol.rules.errors import MerkleError

HASH_BYTES = 32
MAX_LEAVES = 1 << 20


def leaf_hash(item: bytes) -> bytes:
    """The leaf for one 32-byte item, as `keccak256(bytes.concat(keccak256(abi.encode(item))))`."""
    if not isinstance(item, bytes | bytearray) or len(item) != HASH_BYTES:
        raise MerkleError(f"a Merkle item is {HASH_BYTES} bytes, got {_describe(item)}")
    return keccak256(keccak256(bytes(item)))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """The commutative inner-node hash OpenZeppelin uses (`Hashes.commutativeKeccak256`)."""
    return keccak256(a + b) if a <= b else keccak256(b + a)


@dataclass(frozen=True)
class MerkleTree:
    """All layers of a tree, leaves first; the root is `layers[-1][0]`."""

    layers: tuple[tuple[bytes, ...], ...]

    @classmethod
    def from_items(cls, items: Sequence[bytes]) -> MerkleTree:
        if not 0 < len(items) <= MAX_LEAVES:
            raise MerkleError(f"a Merkle tree has 1..{MAX_LEAVES} leaves, got {len(items)}")
        layer = tuple(leaf_hash(item) for item in items)
        layers = [layer]
        while len(layer) > 1:
            paired = [hash_pair(layer[i], layer[i + 1]) for i in range(0, len(layer) - 1, 2)]
            if len(layer) % 2:
                paired.append(layer[-1])
            layer = tuple(paired)
            layers.append(layer)
        return cls(tuple(layers))

    @property
    def root(self) -> bytes:
        return self.layers[-1][0]

    @property
    def size(self) -> int:
        return len(self.layers[0])

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf `index` up to (not including) the root."""
        if not 0 <= index < self.size:
            raise MerkleError(f"leaf index must be in 0..{self.size - 1}, got {index}")
        proof = []
        for layer in self.layers[:-1]:
            sibling = index ^ 1
            if sibling < len(layer):
                proof.append(layer[sibling])
            index //= 2
        return proof


def merkle_root(items: Sequence[bytes]) -> bytes:
    return MerkleTree.from_items(items).root


def verify_proof(root: bytes, item: bytes, proof: Sequence[bytes]) -> bool:
    """True iff `item` is a leaf under `root`; never raises on a malformed proof, only on a bad item."""
    node = leaf_hash(item)
    for sibling in proof:
        if not isinstance(sibling, bytes | bytearray) or len(sibling) != HASH_BYTES:
            return False
        node = hash_pair(node, bytes(sibling))
    return node == root


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return type(value).__name__
