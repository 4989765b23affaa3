"""The official `openai` client against `thinkmesh serve` on loopback: every answer's receipt
replays on the model, streamed answers equal their receipts' text."""

from __future__ import annotations

import pytest

from thinkmesh.node.serve.openai_schema import answer_text
from thinkmesh.protocol.rules.receipts import public_seed, receipt_from_json, recheck_receipt, receipt_row_key
from thinkmesh.protocol.rules.rollout import SamplingSettings, generate

from tests.node.serve.conftest import MODEL_NAME

pytestmark = pytest.mark.timeout(120)


def _recheck(served, receipt_json):
    receipt = receipt_from_json(receipt_json)
    check = recheck_receipt(receipt, served.model, served.model_hash, served.tokenizer, served.tokenizer.pad_token_id)
    assert check.agrees, check
    return receipt


def test_models_lists_the_served_model_with_its_hash(openai_client, served_micro):
    models = openai_client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].model_extra["thinkmesh_model_hash"] == "0x" + served_micro.model_hash.hex()


def test_completion_with_a_client_seed_replays_and_repeats(openai_client, served_micro, server_identity):
    first = openai_client.completions.create(model=MODEL_NAME, prompt="What is 2+3?", max_tokens=24,
                                             temperature=0.9, top_p=0.95, seed=11)
    receipt = _recheck(served_micro, first.model_extra["thinkmesh_receipt"])
    assert receipt.server_key == server_identity.public_key
    assert receipt.model_hash == served_micro.model_hash
    assert receipt.client_seed == 11 and receipt.seed == public_seed(11)
    assert (receipt.temperature, receipt.top_p, receipt.max_new_tokens) == (0.9, 0.95, 24)
    assert receipt.prompt_ids == tuple(served_micro.tokenizer("What is 2+3?")["input_ids"])
    assert first.choices[0].text == answer_text(served_micro.tokenizer, receipt.choices[0].completion_ids, receipt.stop_rule)
    assert first.usage.completion_tokens == len(receipt.choices[0].completion_ids)
    # The same seed draws the same answer: it is the rollout engine's, from the public stream.
    again = openai_client.completions.create(model=MODEL_NAME, prompt="What is 2+3?", max_tokens=24,
                                             temperature=0.9, top_p=0.95, seed=11)
    assert again.choices[0].text == first.choices[0].text
    alone = generate(served_micro.model, [receipt.prompt_ids], SamplingSettings(0.9, 0.95, 24), receipt.stop_rule,
                     served_micro.tokenizer.pad_token_id, keys=[receipt_row_key(public_seed(11), 0)])
    assert alone[0].token_ids == receipt.choices[0].completion_ids


def test_without_a_seed_the_server_publishes_the_one_it_drew(openai_client, served_micro):
    answer = openai_client.completions.create(model=MODEL_NAME, prompt="Q", max_tokens=12)
    receipt = _recheck(served_micro, answer.model_extra["thinkmesh_receipt"])
    assert receipt.client_seed is None and len(receipt.seed) == 32


def test_greedy_chat_completion_is_the_argmax(openai_client, served_micro):
    answer = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=16, temperature=0)
    receipt = _recheck(served_micro, answer.model_extra["thinkmesh_receipt"])
    assert receipt.temperature == 0.0
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == answer_text(
        served_micro.tokenizer, receipt.choices[0].completion_ids, receipt.stop_rule)


def test_streamed_chat_with_two_choices_and_a_stop_string(openai_client, served_micro):
    stream = openai_client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Count"}], max_tokens=40, seed=5, n=2,
        stop=["zq", "\n\n"], stream=True, stream_options={"include_usage": True})
    texts, finish, last = {0: "", 1: ""}, {}, None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        last = chunk
    assert last.choices == [] and last.usage is not None
    receipt = _recheck(served_micro, last.model_extra["thinkmesh_receipt"])
    assert receipt.stop_strings == ("zq", "\n\n")
    assert len(receipt.choices) == 2 and receipt.choices[0].completion_ids != receipt.choices[1].completion_ids
    for index, choice in enumerate(receipt.choices):
        assert texts[index] == answer_text(served_micro.tokenizer, choice.completion_ids, receipt.stop_rule)
        assert finish[index] == choice.finish_reason
    assert last.usage.completion_tokens == sum(len(c.completion_ids) for c in receipt.choices)


def test_streamed_completion_ends_with_the_receipt(openai_client, served_micro):
    chunks = list(openai_client.completions.create(model=MODEL_NAME, prompt="Once", max_tokens=20, seed=-3,
                                                   stream=True))
    receipt = _recheck(served_micro, chunks[-1].model_extra["thinkmesh_receipt"])
    text = "".join(c.text for chunk in chunks for c in chunk.choices)
    assert text == answer_text(served_micro.tokenizer, receipt.choices[0].completion_ids, receipt.stop_rule)
    assert all("thinkmesh_receipt" not in (chunk.model_extra or {}) for chunk in chunks[:-1])


def test_concurrent_requests_with_different_settings_all_replay(micro_server, served_micro):
    """Batched (same settings) and unbatched (other settings) requests, sixteen at once."""
    import asyncio

    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=micro_server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
        calls = [client.completions.create(model=MODEL_NAME, prompt=f"Item {i}", max_tokens=8 + i % 3,
                                           temperature=[0.0, 0.7, 1.0][i % 3], seed=i) for i in range(16)]
        return await asyncio.gather(*calls)

    answers = asyncio.run(main())
    for i, answer in enumerate(answers):
        receipt = _recheck(served_micro, answer.model_extra["thinkmesh_receipt"])
        assert receipt.client_seed == i and receipt.max_new_tokens == 8 + i % 3
