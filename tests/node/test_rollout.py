import pytest
import torch

from thinkmesh.node.model.model_dir import load_model, load_tokenizer
from thinkmesh.protocol.rules.rollout import FINISH_LENGTH, FINISH_STOP, SamplingSettings, StopRule, generate, stop_rule_for

PROMPTS = ["User: What is 12+30?\nAssistant:", "User: Solve 2*x+1=5 for x.\nAssistant:", "Q"]


@pytest.fixture(scope="module")
def engine(micro_model_dir):
    tokenizer = load_tokenizer(micro_model_dir)
    return load_model(micro_model_dir), tokenizer, [tokenizer(p)["input_ids"] for p in PROMPTS]


def _greedy(engine, stop, max_new_tokens=12):
    model, tokenizer, prompts = engine
    return generate(model, prompts, SamplingSettings(0.0, 1.0, max_new_tokens), stop, tokenizer.pad_token_id, None, tokenizer)


def test_stop_rule_uses_eos_and_the_single_answer_close_token(engine):
    tokenizer = engine[1]
    rule = stop_rule_for(tokenizer)
    assert rule.token_ids == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("</answer>")}
    assert rule.multi_token_strings == ()
    assert stop_rule_for(tokenizer, ("</answer>", "STOP")).multi_token_strings == ("STOP",)


def test_without_a_stop_every_sample_runs_to_max_new_tokens(engine):
    for completion in _greedy(engine, StopRule(frozenset()), max_new_tokens=7):
        assert len(completion.token_ids) == len(completion.logprobs) == 7
        assert completion.finish_reason == FINISH_LENGTH


def test_generation_stops_right_after_a_stop_token_and_keeps_it(engine):
    free = _greedy(engine, StopRule(frozenset()))
    stop_id = free[0].token_ids[3]
    stopped = _greedy(engine, StopRule(frozenset({stop_id})))
    for full, short in zip(free, stopped):
        expected = full.token_ids.index(stop_id) + 1 if stop_id in full.token_ids else len(full.token_ids)
        assert short.token_ids == full.token_ids[:expected]
        assert short.logprobs == pytest.approx(full.logprobs[:expected], abs=1e-5)
        assert short.finish_reason == (FINISH_STOP if stop_id in full.token_ids else FINISH_LENGTH)


def test_multi_token_stop_string_ends_the_sample_by_text(engine):
    tokenizer = engine[1]
    free = _greedy(engine, StopRule(frozenset()))
    marker = tokenizer.decode(list(free[0].token_ids[2:4]))
    assert len(marker) == 2
    stopped = _greedy(engine, StopRule(frozenset(), (marker,)))
    assert tokenizer.decode(list(stopped[0].token_ids)).endswith(marker)
    assert stopped[0].finish_reason == FINISH_STOP and len(stopped[0].token_ids) <= 4


def test_seeded_sampling_is_reproducible_and_logprobs_are_tempered(engine):
    model, tokenizer, prompts = engine
    settings = SamplingSettings(0.7, 0.9, 10)
    runs = [
        generate(model, prompts, settings, StopRule(frozenset()), tokenizer.pad_token_id, torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    for completion in runs[0]:
        assert all(lp <= 0.0 for lp in completion.logprobs)


def test_top_p_restricts_sampling_to_the_nucleus():
    from thinkmesh.protocol.rules.rollout import sample_next_token

    logits = torch.tensor([[5.0, 4.0, -5.0, -5.0]]).repeat(500, 1)
    tokens, logprobs = sample_next_token(logits, 1.0, 0.5, torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert set(tokens.tolist()) == {0}  # p(0) ~ 0.73 > 0.5: the nucleus is token 0 alone
    assert logprobs[0].item() == pytest.approx(torch.log_softmax(logits[0], -1)[0].item())
    tokens, _ = sample_next_token(logits, 1.0, 1.0, torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert {0, 1} <= set(tokens.tolist())
