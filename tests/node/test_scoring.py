"""The verifier's prefill must reproduce the rollout engine's recorded logprobs."""

import pytest
import torch

from thinkmesh.node.model.model_dir import load_model, load_tokenizer
from thinkmesh.protocol.rules.rollout import SamplingSettings, StopRule, generate
from thinkmesh.protocol.rules.scoring import (
    ScoringError, completion_logprobs, max_logprob_gap, prompt_token_ids, token_logprobs,
)

PROMPTS = ["User: What is 12+30?\nAssistant:", "User: Using the numbers [3, 9], create 27.\nAssistant:", "A:"]
# Measured max gap, float32 CPU: ~1e-6 typical, 1.03e-5 the worst seen; bfloat16: ~2.4e-2.
MEASURED_FP32_CPU_TOLERANCE = 5e-5


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.3, 1.0)])
def test_scorer_reproduces_recorded_logprobs(micro_model_dir, temperature, top_p):
    model, tokenizer = load_model(micro_model_dir), load_tokenizer(micro_model_dir)
    prompts = [prompt_token_ids(tokenizer, p) for p in PROMPTS for _ in range(4)]
    completions = generate(model, prompts, SamplingSettings(temperature, top_p, 24), StopRule(frozenset({7, 2})),
                           tokenizer.pad_token_id, torch.Generator().manual_seed(1))
    assert len({len(c.token_ids) for c in completions}) > 1, "want ragged completions to exercise padding"
    rescored = token_logprobs(model, prompts, [c.token_ids for c in completions], temperature, micro_batch_size=5)
    assert max_logprob_gap([c.logprobs for c in completions], rescored) < MEASURED_FP32_CPU_TOLERANCE


def test_scorer_uses_the_claimed_temperature(micro_model_dir):
    model = load_model(micro_model_dir)
    at_one = token_logprobs(model, [[1, 40, 41]], [[50, 51, 52]], 1.0)
    at_half = token_logprobs(model, [[1, 40, 41]], [[50, 51, 52]], 0.5)
    assert max_logprob_gap(at_one, at_half) > 1e-3


def test_completion_logprobs_are_differentiable_and_masked(micro_model_dir):
    model = load_model(micro_model_dir)
    scored = completion_logprobs(model, [[1, 40], [1, 40, 41, 42]], [[50], [50, 51, 52]], 1.0)
    assert scored.mask.tolist() == [[1, 0, 0], [1, 1, 1]]
    assert scored.logprobs[0, 1:].abs().sum().item() == 0.0
    scored.logprobs.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "prompts,completions,temperature,needle",
    [([[1]], [], 1.0, "one completion per prompt"), ([[1]], [[]], 1.0, "non-empty"), ([[1]], [[2]], 0.0, "temperature")],
)
def test_bad_inputs_are_scoring_errors(micro_model_dir, prompts, completions, temperature, needle):
    with pytest.raises(ScoringError, match=needle):
        token_logprobs(load_model(micro_model_dir), prompts, completions, temperature)


def test_bfloat16_rollouts_are_reproduced_within_the_bf16_tolerance(micro_model_dir):
    from thinkmesh.protocol.rules.scoring import SCORING_TOLERANCE_BF16

    model, tokenizer = load_model(micro_model_dir, dtype="bfloat16"), load_tokenizer(micro_model_dir)
    prompts = [prompt_token_ids(tokenizer, p) for p in PROMPTS for _ in range(4)]
    completions = generate(model, prompts, SamplingSettings(1.0, 1.0, 16), StopRule(frozenset({7})),
                           tokenizer.pad_token_id, torch.Generator().manual_seed(2))
    rescored = token_logprobs(model, prompts, [c.token_ids for c in completions], 1.0)
    assert max_logprob_gap([c.logprobs for c in completions], rescored) < SCORING_TOLERANCE_BF16
