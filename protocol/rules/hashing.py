"""The protocol's hash functions.

keccak256 is Ethereum's (not NIST SHA3-256: the padding differs), so every commitment the
coordinator puts on chain can be recomputed by a contract. The C implementation from
safe-pysha3 is about ten times faster than eth-hash's default backend, which matters for Merkle
trees over every sample of a round.
"""

from collections.abc import Iterable

from sha3 import keccak_256


def keccak256(data: bytes) -> bytes:
    return keccak_256(data).digest()


def keccak256_of_parts(parts: Iterable[bytes]) -> bytes:
    """keccak256 of the parts' concatenation, without making it."""
    digest = keccak_256()
    for part in parts:
        digest.update(part)
    return digest.digest()
