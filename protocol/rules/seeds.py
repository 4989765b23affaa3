"""A round's public randomness: the seed the announcement carries and the audit beacon.

The round seed keys every node's sampling streams and prompt draws, so it must be a function of
the coordinator's configured text and the round id alone: anyone re-deriving a round re-derives
its seed. The beacon keys the audit plan; it mixes in the coordinator's secret seed, revealed
only after the deadline, so no node knows before uploading which samples or tensors are checked.
"""

from __future__ import annotations

import hashlib

ROUND_SEED_DOMAIN = b"thinkmesh/round-seed/v1"
BEACON_DOMAIN = b"thinkmesh/audit-beacon/v1"


def round_seed(seed_text: str, round_id: int) -> bytes:
    return hashlib.sha256(ROUND_SEED_DOMAIN + seed_text.encode() + round_id.to_bytes(8, "big")).digest()


def audit_beacon(coordinator_seed: bytes, round_seed: bytes) -> bytes:
    """The audit plan's post-deadline randomness for one round."""
    return hashlib.sha256(BEACON_DOMAIN + coordinator_seed + round_seed).digest()
