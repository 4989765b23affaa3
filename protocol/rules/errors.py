"""One exception family for the protocol layer.

Every rule in `protocol/` fails with a `ProtocolError` (or a subclass) whose message says what
was expected and what came, so a node operator or a third-party verifier can act on it without
reading a traceback.
"""


class ProtocolError(Exception):
    """Input that breaks a protocol rule: malformed bytes, a bad signature, a wrong hash."""


class EncodingError(ProtocolError):
    """Bytes that are not the canonical encoding of a known message."""


class SignatureError(ProtocolError):
    """A signature that does not verify for the claimed signer, domain and message."""


class MerkleError(ProtocolError):
    """A Merkle tree or proof that cannot be built or does not check."""


class TaskError(ProtocolError):
    """A task spec that names an unknown family or impossible difficulty."""
