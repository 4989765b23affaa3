"""Audit rates that make cheating lose money in expectation (derivation: docs/verification.md).

Units: `payout`, `slash` and `gain` in the same token units per contribution; probabilities in
[0, 1]. Exact: combinatorics in integers and `Fraction`, converted to float at the end.

A risk-neutral node compares  honest: payout - cost  with
cheating: (1 - P) * payout - P * slash - (cost - gain), where P is the probability that the
cheat is detected and `gain` what cheating saves or adds. Cheating loses iff

    P * (payout + slash) > gain.
"""

from __future__ import annotations

import math
from fractions import Fraction

from thinkmesh.protocol.rules.errors import ProtocolError


class AuditEconomicsError(ProtocolError):
    """Arguments outside their domain: negative amounts, k or m larger than n, p outside [0, 1]."""


def _check_counts(num_samples: int, faked: int, audited: int) -> None:
    if not (0 <= faked <= num_samples and 0 <= audited <= num_samples and num_samples >= 1):
        raise AuditEconomicsError(
            f"expected 0 <= faked, audited <= num_samples >= 1, got n={num_samples}, k={faked}, m={audited}"
        )


def detection_probability(num_samples: int, faked: int, audited: int) -> float:
    """P(at least one of `faked` samples is among `audited` drawn without replacement from
    `num_samples`) = 1 - C(n-k, m) / C(n, m)."""
    _check_counts(num_samples, faked, audited)
    missed = Fraction(math.comb(num_samples - faked, audited), math.comb(num_samples, audited))
    return float(1 - missed)


def minimum_audited_samples(num_samples: int, faked: int, target: float) -> int:
    """The smallest m with detection_probability(n, k, m) >= target (n when nothing less does)."""
    if not 0.0 <= target <= 1.0:
        raise AuditEconomicsError(f"target: expected a probability in [0, 1], got {target}")
    _check_counts(num_samples, faked, 0)
    if faked == 0:
        if target > 0:
            raise AuditEconomicsError("no audit detects a contribution with no faked samples")
        return 0
    for audited in range(num_samples + 1):
        if detection_probability(num_samples, faked, audited) >= target:
            return audited
    return num_samples


def break_even_detection(payout: float, slash: float, gain: float | None = None) -> float:
    """The detection probability at which cheating breaks even: gain / (payout + slash).

    `gain` defaults to `payout` (a node paid in full for work it never did), the largest gain
    a cheat can bring whenever payouts at least cover the work's cost. Any P above it makes
    cheating lose in expectation; 1.0 means no audit rate suffices (raise the slash).
    """
    gain = payout if gain is None else gain
    for name, value in (("payout", payout), ("slash", slash), ("gain", gain)):
        if not math.isfinite(value) or value < 0:
            raise AuditEconomicsError(f"{name}: expected a finite amount >= 0, got {value}")
    if payout + slash == 0:
        return 1.0 if gain > 0 else 0.0
    return min(1.0, gain / (payout + slash))


def minimum_audit_rate(stake: float, payout: float, gain: float | None = None) -> float:
    """The least per-contribution audit rate q (an all-or-nothing check such as the full gradient
    audit) with q * (payout + stake) >= gain, when a caught node loses `stake`. Use a rate
    strictly above it (`AuditPolicy.full_gradient_rate`)."""
    return break_even_detection(payout, stake, gain)


def expected_cheating_loss(detection: float, payout: float, slash: float, gain: float) -> float:
    """Honest profit minus cheating profit: detection * (payout + slash) - gain (> 0: cheating loses)."""
    if not 0.0 <= detection <= 1.0:
        raise AuditEconomicsError(f"detection: expected a probability in [0, 1], got {detection}")
    return detection * (payout + slash) - gain
