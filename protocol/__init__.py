"""The rules both sides compute identically.

A verifier can re-run any verdict with this package alone: messages and their canonical
encoding, identities and signatures, Merkle commitments, task generators, rewards, GRPO
objectives, token-logprob scoring and the chain client.
"""

from thinkmesh.protocol.errors import ProtocolError

__all__ = ["ProtocolError"]
