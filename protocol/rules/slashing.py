"""Why a contribution fails, and which failures cost the node its stake.

One enum names every failing verdict: its code goes on chain with the slash, its string is the
verifier's `reason` (`SlashReason.REPLAY.verdict_reason == "replay"`), so the two can never drift.
Codes are append-only (a code never changes meaning); 0 is reserved, since the contract refuses an
unspecified reason.

Not every failing verdict proves that the registered node cheated: an unsigned or foreign message
proves nothing about the key's owner, a wrong round is what a lagging honest node sends, and an
unregistered key has no stake. Every other failing verdict is slashed.
"""

from __future__ import annotations

import enum

from thinkmesh.protocol.rules.errors import ProtocolError


class UnknownReasonError(ProtocolError):
    """A verdict reason that is not one of `SlashReason`'s (or "ok", which is not a failure)."""


class SlashReason(enum.IntEnum):
    BAD_SIGNATURE = 1
    WRONG_ROUND = 2
    UNKNOWN_NODE = 3
    SAMPLES_ROOT = 4
    PROMPT_SET = 5
    SAMPLE_SHAPE = 6
    REPLAY = 7
    REWARD_MISMATCH = 8
    MALFORMED_GRADIENT = 9
    LOGPROB_MISMATCH = 10
    GRADIENT_MISMATCH = 11
    OFF_TERMS = 12
    SAMPLING_MISMATCH = 13

    @property
    def verdict_reason(self) -> str:
        """The verification reason string (e.g. "reward-mismatch") this code stands for."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_verdict_reason(cls, reason: str) -> SlashReason:
        try:
            return cls[reason.upper().replace("-", "_")]
        except KeyError:
            known = ", ".join(code.verdict_reason for code in cls)
            raise UnknownReasonError(f"expected a slashable verdict reason ({known}), got {reason!r}") from None


UNSLASHABLE_REASONS = frozenset(
    code.verdict_reason for code in (SlashReason.BAD_SIGNATURE, SlashReason.WRONG_ROUND, SlashReason.UNKNOWN_NODE)
)


def slashable(reason: str) -> bool:
    """Whether a failing verdict with this reason is slashed when its key has a registered stake."""
    return reason != "ok" and reason not in UNSLASHABLE_REASONS
