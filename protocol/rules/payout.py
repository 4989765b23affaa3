"""The payout rule: what an accepted contribution earns, from its samples alone.

    payout = reward_per_prompt * verified_prompts * score / SCORE_SCALE     (integer token units)
    score  = SCORE_FLOOR + (1 - SCORE_FLOOR) * informative_groups / groups  (fixed point, 1e6 = 1.0)

Pay is per prompt (one group of G samples), never per sample: the group size is the round's term,
and a node that could pick it could otherwise multiply its pay by sending more, cheaper samples. A
prompt group is *informative* when its samples' total rewards are not all equal: only those groups
carry a GRPO advantage, hence a gradient (DAPO's dynamic-sampling argument). Every prompt of an
accepted contribution counts as verified (the audit plan samples it on behalf of the whole; see
docs/verification.md for why that is enough). The floor pays honest work on a model that cannot yet
solve anything (all rewards equal) at half rate. Pure: anyone re-runs a round's awards from the
accepted contributions with `protocol/` alone.

**Generation rounds** (`protocol/rules/generation.py`) have their own rule, since what they buy is
traces, not a gradient:

    payout = reward_per_trace * accepted_traces            (integer token units; score = SCORE_SCALE)

where `accepted_traces` counts the samples of a verified contribution that pass the acceptance rule
(accuracy 1 and format 1). The group size is still the round's term, so a node cannot multiply its
chances by sending more samples per prompt; an honest incorrect trace earns nothing and costs nothing.
"""

from __future__ import annotations

from thinkmesh.protocol.rules.generation import accepted_trace_indices
from thinkmesh.protocol.rules.messages import Contribution
from thinkmesh.protocol.rules.rewards import total_reward

SCORE_FLOOR = 0.5
SCORE_SCALE = 1_000_000  # fixed point 1.0, as the contract stores scores and metrics


def prompt_groups(contribution: Contribution) -> list[list[float]]:
    """Each prompt's total rewards, in order (groups are contiguous, `group_size` each)."""
    group = contribution.strategy.group_size
    totals = [total_reward(s.rewards) for s in contribution.samples]
    return [totals[i:i + group] for i in range(0, len(totals), group)]


def verified_prompts(contribution: Contribution) -> int:
    return len(prompt_groups(contribution))


def contribution_score(contribution: Contribution) -> int:
    """The fixed-point score of the module docstring (SCORE_SCALE = 1.0)."""
    groups = prompt_groups(contribution)
    informative = sum(1 for g in groups if max(g) != min(g))
    floor = round(SCORE_FLOOR * SCORE_SCALE)
    return floor + (SCORE_SCALE - floor) * informative // max(len(groups), 1)


def payout_for(prompts: int, score: int, reward_per_prompt: int) -> int:
    return reward_per_prompt * prompts * score // SCORE_SCALE


def generation_payout(contribution: Contribution, reward_per_trace: int) -> tuple[int, int]:
    """(accepted traces, payout) of a verified generation-round contribution: the rule above."""
    accepted = len(accepted_trace_indices(contribution))
    return accepted, reward_per_trace * accepted
