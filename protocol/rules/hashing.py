"""The protocol's hash functions.

keccak256 is Ethereum's (not NIST SHA3-256: the padding differs), so every commitment the
coordinator puts on chain can be recomputed by a contract. The C implementation from
safe-pysha3 is about ten times faster than eth-hash's default backend, which matters for Merkle
trees over every sample of a round.
"""

from sha3 import keccak_256


def keccak256(data: bytes) -> bytes:
    return keccak_256(data).digest()
