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


def minimum_probe_floor(
    stake: float, payout: float, full_gradient_rate: float = 0.0, probe_rate: float = 1.0, cost_factor: float = 1.0,
) -> float:
    """The least `AuditPolicy.probe_floor` that makes every partial-gradient fake lose money.

    A node that fakes the gradient of tensors holding a share f of the parameters saves at most
    `cost_factor` * f of the backward (cost_factor: a tensor's share of the backward over its share
    of the parameters; ~1 for the blocks of a transformer, measured in docs/verification.md), and
    the backward costs at most `payout` (a node is paid at least what its work costs). The probe
    draws one of those tensors with probability >= floor * f, the full audit catches it whenever it
    runs, so with q = `full_gradient_rate`, p = `probe_rate` the fake loses for every f in (0, 1] iff

        (q + (1 - q) p floor f) (payout + stake) > cost_factor f payout,

    which is linear in f and tightest at f = 1: floor > (cost_factor payout / (payout + stake) - q)
    / ((1 - q) p). Returns that bound, 0 where the full audit alone suffices; above 1, no floor does
    (raise the stake or the audit rates).
    """
    for name, value in (("stake", stake), ("payout", payout), ("cost_factor", cost_factor)):
        if not math.isfinite(value) or value < 0:
            raise AuditEconomicsError(f"{name}: expected a finite amount >= 0, got {value}")
    for name, value in (("full_gradient_rate", full_gradient_rate), ("probe_rate", probe_rate)):
        if not 0.0 <= value <= 1.0:
            raise AuditEconomicsError(f"{name}: expected a probability in [0, 1], got {value}")
    if payout == 0 or cost_factor == 0:
        return 0.0
    needed = cost_factor * payout / (payout + stake) - full_gradient_rate
    if needed < 0:
        return 0.0
    reach = (1 - full_gradient_rate) * probe_rate
    return math.inf if reach == 0 else needed / reach
