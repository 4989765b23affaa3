"""`thinkmesh verify-receipt` agrees with an honest answer and refuses a tampered one, naming why
and where: a token, the model hash, the seed, the text, a cut-short answer."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from thinkmesh.protocol.cli.main import main
from thinkmesh.protocol.rules.receipts import receipt_from_json, receipt_to_json, sign_receipt

from tests.node.serve.conftest import MODEL_NAME

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def answers(micro_server):
    """A sampled completion (client seed), a sampled chat (server seed) and a greedy completion."""
    import openai

    client = openai.OpenAI(base_url=micro_server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
    sampled = client.completions.create(model=MODEL_NAME, prompt="Tell me", max_tokens=20, temperature=1.0, seed=42)
    chat = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Why?"}],
                                          max_tokens=20, temperature=0.8)
    greedy = client.completions.create(model=MODEL_NAME, prompt="Tell me", max_tokens=20, temperature=0)
    return {name: a.model_dump(exclude_unset=True) for name, a in
            {"sampled": sampled, "chat": chat, "greedy": greedy}.items()}


def verify(tmp_path, micro_model_dir, capsys, doc, *extra) -> tuple[int, dict]:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(doc))
    code = main(["verify-receipt", str(path), "--model", str(micro_model_dir), "--json", *extra])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def resigned(receipt_json: dict, identity, **changes) -> dict:
    """What a lying server sends: a changed receipt, signed again with its own key."""
    receipt = dataclasses.replace(receipt_from_json(receipt_json), **changes)
    return receipt_to_json(sign_receipt(receipt, identity))


def with_token(receipt_json: dict, position: int, token: int) -> dict:
    doc = copy.deepcopy(receipt_json)
    doc["choices"][0]["completion_ids"][position] = token
    return doc


def other_token(token: int) -> int:
    return 10 + (token - 9) % 90  # another printable character's id


@pytest.mark.parametrize("name", ["sampled", "chat", "greedy"])
def test_an_honest_answer_agrees_bare_or_whole(answers, name, tmp_path, micro_model_dir, capsys):
    code, verdict = verify(tmp_path, micro_model_dir, capsys, answers[name])  # whole body: the text is checked too
    assert (code, verdict["reason"]) == (0, "ok"), verdict
    code, verdict = verify(tmp_path, micro_model_dir, capsys, answers[name]["thinkmesh_receipt"])
    assert (code, verdict["reason"]) == (0, "ok"), verdict


def test_the_plain_output_says_agree(answers, tmp_path, micro_model_dir, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(answers["sampled"]["thinkmesh_receipt"]))
    assert main(["verify-receipt", str(path), "--model", str(micro_model_dir), "--seed", "42"]) == 0
    assert capsys.readouterr().out.startswith("agree: all ")


def test_one_token_changed_breaks_the_signature(answers, tmp_path, micro_model_dir, capsys):
    receipt = answers["sampled"]["thinkmesh_receipt"]
    token = receipt["choices"][0]["completion_ids"][5]
    code, verdict = verify(tmp_path, micro_model_dir, capsys, with_token(receipt, 5, other_token(token)))
    assert (code, verdict["reason"]) == (1, "bad-signature")


@pytest.mark.parametrize("name, reason", [("sampled", "draw-mismatch"), ("greedy", "not-argmax")])
def test_one_token_changed_and_signed_again_fails_the_replay_at_that_token(
        answers, name, reason, server_identity, tmp_path, micro_model_dir, capsys):
    receipt = answers[name]["thinkmesh_receipt"]
    ids = list(receipt["choices"][0]["completion_ids"])
    position = 7
    ids[position] = other_token(ids[position])
    choice = receipt_from_json(receipt).choices[0]
    lying = resigned(receipt, server_identity, choices=(dataclasses.replace(choice, completion_ids=tuple(ids)),))
    code, verdict = verify(tmp_path, micro_model_dir, capsys, lying)
    assert (code, verdict["reason"]) == (1, reason), verdict
    assert (verdict["choice"], verdict["position"]) == (0, position)
    assert verdict["claimed_token"] == ids[position]
    assert verdict["expected_token"] == receipt["choices"][0]["completion_ids"][position]


def test_another_model_hash_is_refused(answers, server_identity, tmp_path, micro_model_dir, capsys):
    receipt = answers["sampled"]["thinkmesh_receipt"]
    doc = {**receipt, "model_hash": "0x" + "ab" * 32}
    code, verdict = verify(tmp_path, micro_model_dir, capsys, doc)
    assert (code, verdict["reason"]) == (1, "bad-signature")
    code, verdict = verify(tmp_path, micro_model_dir, capsys, resigned(receipt, server_identity, model_hash=b"\xab" * 32))
    assert (code, verdict["reason"]) == (1, "model-hash")
    assert "the model hashes to 0x" in verdict["detail"]


def test_another_seed_is_refused(answers, server_identity, tmp_path, micro_model_dir, capsys):
    receipt = answers["sampled"]["thinkmesh_receipt"]  # drawn under the client's seed 42
    code, verdict = verify(tmp_path, micro_model_dir, capsys, {**receipt, "seed": "0x" + "01" * 32})
    assert (code, verdict["reason"]) == (1, "bad-signature")
    code, verdict = verify(tmp_path, micro_model_dir, capsys, resigned(receipt, server_identity, seed=b"\x01" * 32))
    assert (code, verdict["reason"]) == (1, "seed-mismatch")
    code, verdict = verify(tmp_path, micro_model_dir, capsys, receipt, "--seed", "43")
    assert (code, verdict["reason"]) == (1, "not-expected")
    # A server-drawn seed swapped for another: the streams no longer give these tokens.
    chat = answers["chat"]["thinkmesh_receipt"]
    code, verdict = verify(tmp_path, micro_model_dir, capsys, resigned(chat, server_identity, seed=b"\x01" * 32))
    assert (code, verdict["reason"]) == (1, "draw-mismatch"), verdict


def test_text_that_is_not_the_tokens_text_is_refused(answers, tmp_path, micro_model_dir, capsys):
    doc = copy.deepcopy(answers["chat"])
    doc["choices"][0]["message"]["content"] = "The answer is 42."
    code, verdict = verify(tmp_path, micro_model_dir, capsys, doc)
    assert (code, verdict["reason"]) == (1, "text-mismatch")


def test_a_cut_short_answer_breaks_the_stop_rule(answers, server_identity, tmp_path, micro_model_dir, capsys):
    receipt = answers["greedy"]["thinkmesh_receipt"]
    choice = receipt_from_json(receipt).choices[0]
    assert choice.finish_reason == "length"
    short = resigned(receipt, server_identity, choices=(dataclasses.replace(
        choice, completion_ids=choice.completion_ids[:-3]),))
    code, verdict = verify(tmp_path, micro_model_dir, capsys, short)
    assert (code, verdict["reason"]) == (1, "stop-rule")


def test_a_file_without_a_receipt_is_refused(tmp_path, micro_model_dir, capsys):
    code, verdict = verify(tmp_path, micro_model_dir, capsys, {"choices": [], "thinkmesh_receipt": {"seed": "0x00"}})
    assert (code, verdict["reason"]) == (1, "malformed")
    assert "missing field" in verdict["detail"] or "unknown field" in verdict["detail"]
