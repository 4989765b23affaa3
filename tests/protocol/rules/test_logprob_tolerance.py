"""The logprob bound is relative above magnitude 1: an honest unlikely token's float32 rounding
passes, a fudged likely token does not."""

from __future__ import annotations

from types import SimpleNamespace

from thinkmesh.protocol.rules.audit import logprob_findings
from thinkmesh.protocol.rules.scoring import SCORING_TOLERANCE_FP32


def _findings(recorded: list[float], rescored: list[float]):
    return logprob_findings([SimpleNamespace(logprobs=recorded)], {0: rescored}, SCORING_TOLERANCE_FP32)


def test_the_devnets_honest_gap_at_minus_ten_passes():
    # Round 9 of a devnet run: the verifier's prefill said -9.896153, the node's decode -9.896254.
    assert _findings([-0.1, -9.89625358581543], [-0.1, -9.896153450012207]) == ()


def test_a_like_gap_on_a_likely_token_is_a_finding():
    (finding,) = _findings([-0.1, -0.50011], [-0.1, -0.5])
    assert finding.check == "logprob:1" and finding.expected == -0.5


def test_a_fudge_at_minus_ten_beyond_the_relative_bound_is_a_finding():
    (finding,) = _findings([-0.2, -9.89], [-0.2, -9.9])
    assert finding.check == "logprob:1"


def test_the_worst_token_is_named_by_its_excess_over_its_own_bound():
    # 5e-4 at -9.9 is within its bound (9.9e-4); 2e-4 at -0.3 is twice its bound (1e-4).
    (finding,) = _findings([-9.9005, -0.3002], [-9.9, -0.3])
    assert finding.check == "logprob:1"
