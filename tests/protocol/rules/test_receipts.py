"""protocol/rules/receipts.py: seeds, stream keys, the record, its encodings and signature, the re-check."""

from __future__ import annotations

import copy
import dataclasses
import hashlib

import pytest
import torch

from thinkmesh.protocol.rules.encoding import decode_message, encode_message
from thinkmesh.protocol.rules.errors import EncodingError
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.receipts import (
    InferenceReceipt, ReceiptChoice, ReceiptError, ServerAnnouncement, check_announcement, check_stop_rule,
    public_seed, receipt_from_json, receipt_row_key, receipt_to_json, recheck_receipt, served_model_hash,
    sign_announcement, sign_receipt,
)
from thinkmesh.protocol.rules.rollout import SamplingSettings, StopRule, generate
from thinkmesh.protocol.rules.sampling import stream_uniforms

SERVER = NodeIdentity.from_seed(b"\x05" * 32)
OTHER = NodeIdentity.from_seed(b"\x06" * 32)


def test_seed_and_row_key_are_the_documented_hashes():
    assert public_seed(42) == hashlib.sha256(b"thinkmesh/serve-seed/v1" + (42).to_bytes(8, "big", signed=True)).digest()
    assert public_seed(42).hex() == "77dda231304e9826d4a75594516806ce21af5686045b1a912e6dbc210f3ef744"
    seed = b"\x00" * 32
    assert receipt_row_key(seed, 1) == hashlib.sha256(
        b"thinkmesh/serve-stream/v1" + (32).to_bytes(4, "big") + seed + (1).to_bytes(4, "big")).digest()
    assert receipt_row_key(seed, 0).hex() == "ea3d3c5d5ed1a427e98323e80f0c49402a0955fd9cb6eb90fbadc7fff0399989"
    assert len({receipt_row_key(seed, r) for r in range(8)} | {receipt_row_key(b"\x01" * 32, 0)}) == 9
    assert public_seed(-1) != public_seed(1)
    with pytest.raises(ReceiptError):
        public_seed(1 << 63)
    with pytest.raises(ReceiptError):
        receipt_row_key(seed, -1)


def receipt(**changes) -> InferenceReceipt:
    fields = dict(
        server_key=SERVER.public_key, model_hash=b"\x11" * 32, request_id="cmpl-1", created_ms=1_700_000_000_000,
        prompt_ids=(1, 40, 41), temperature=0.7, top_p=0.9, max_new_tokens=4, stop_token_ids=(2,), stop_strings=(),
        seed=public_seed(3), client_seed=3, dtype="float32",
        choices=(ReceiptChoice(0, (50, 51, 2), "stop"), ReceiptChoice(1, (52, 53, 54, 55), "length")),
    )
    return InferenceReceipt(**{**fields, **changes})


def test_encoding_and_json_round_trip_to_the_signed_bytes():
    signed = sign_receipt(receipt(), SERVER)
    wire = encode_message(signed)
    assert decode_message(wire, InferenceReceipt) == signed
    assert encode_message(receipt_from_json(receipt_to_json(signed))) == wire
    doc = receipt_to_json(signed)
    assert doc["seed"] == "0x" + public_seed(3).hex() and doc["choices"][1]["completion_ids"] == [52, 53, 54, 55]
    assert receipt_from_json({**doc, "temperature": 1}).temperature == 1.0  # a JSON 1 is the number 1.0


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("seed"), "missing field 'seed'"),
    (lambda d: d.update(extra=1), "unknown field 'extra'"),
    (lambda d: d.update(model_hash="11" * 32), "model_hash: expected 0x-hex"),
    (lambda d: d.update(max_new_tokens="4"), "max_new_tokens: expected int"),
    (lambda d: d["choices"][0].update(row=1), "choices[0].row"),
    (lambda d: d.update(top_p=0.0), "top_p"),
])
def test_json_that_does_not_map_names_the_field(change, field):
    doc = receipt_to_json(receipt())
    change(doc)
    with pytest.raises(ReceiptError, match=field.replace("[", r"\[").replace("]", r"\]")):
        receipt_from_json(doc)


def test_a_receipt_longer_than_its_limit_or_empty_is_refused():
    with pytest.raises(EncodingError, match="completion_ids"):
        receipt(choices=(ReceiptChoice(0, (1, 2, 3, 4, 5), "length"),))
    with pytest.raises(EncodingError, match="completion_ids"):
        receipt(choices=(ReceiptChoice(0, (), "stop"),))
    with pytest.raises(EncodingError, match="finish_reason"):
        receipt(choices=(ReceiptChoice(0, (1,), "tired"),))


def test_only_the_named_key_signs_and_the_domain_is_the_receipts():
    with pytest.raises(ReceiptError):
        sign_receipt(receipt(), OTHER)
    signed = sign_receipt(receipt(), SERVER)
    forged = dataclasses.replace(receipt(server_key=OTHER.public_key), signature=signed.signature)
    assert not recheck_receipt(forged, None, b"").agrees
    # The same key's announcement signature does not verify as a receipt's.
    note = sign_announcement(ServerAnnouncement(SERVER.public_key, b"\x11" * 32, "http://x", 10), SERVER)
    assert recheck_receipt(dataclasses.replace(signed, signature=note.signature), None, b"").reason == "bad-signature"


def test_announcements_check_model_expiry_and_signature():
    note = sign_announcement(ServerAnnouncement(SERVER.public_key, b"\x11" * 32, "http://127.0.0.1:1", 5_000), SERVER)
    check_announcement(note, model_hash=b"\x11" * 32, now_ms=4_999)
    with pytest.raises(ReceiptError, match="expired"):
        check_announcement(note, model_hash=b"\x11" * 32, now_ms=5_000)
    with pytest.raises(ReceiptError, match="offers model"):
        check_announcement(note, model_hash=b"\x22" * 32, now_ms=0)
    with pytest.raises(Exception, match="bad signature"):
        check_announcement(dataclasses.replace(note, url="http://evil"), model_hash=b"\x11" * 32, now_ms=0)
    with pytest.raises(EncodingError, match="url"):
        ServerAnnouncement(SERVER.public_key, b"\x11" * 32, "ftp://x", 1)


def test_stop_rule_checks_without_a_model():
    assert check_stop_rule(receipt()) is None
    inside = receipt(choices=(ReceiptChoice(0, (50, 2, 51), "stop"),))
    assert check_stop_rule(inside).reason == "stop-rule" and check_stop_rule(inside).position == 1
    short = receipt(choices=(ReceiptChoice(0, (50, 51), "length"),))
    assert "ends after 2 tokens" in check_stop_rule(short).detail
    wrong_reason = receipt(choices=(ReceiptChoice(0, (50, 51, 2), "length"),))
    assert "finish_reason" in check_stop_rule(wrong_reason).detail
    with pytest.raises(ReceiptError, match="tokenizer"):
        check_stop_rule(receipt(stop_strings=("ab",)))


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from thinkmesh.node.model.model_dir import load_model
    from thinkmesh.node.model.tiny_model import TinyModelSpec, init_model_dir

    directory = tmp_path_factory.mktemp("receipt-model")
    init_model_dir(directory, TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                            intermediate_size=64), seed=0)
    model = load_model(directory)
    return model, served_model_hash(model)


def drawn_receipt(model, model_hash, settings: SamplingSettings, n: int = 2) -> InferenceReceipt:
    seed = public_seed(9)
    prompt = (1, 40, 41, 42)
    completions = generate(model, [prompt] * n, settings, StopRule(frozenset({2})), 0,
                           keys=[receipt_row_key(seed, r) for r in range(n)])
    return sign_receipt(receipt(
        model_hash=model_hash, prompt_ids=prompt, temperature=settings.temperature, top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens, seed=seed, client_seed=9,
        choices=tuple(ReceiptChoice(r, c.token_ids, c.finish_reason) for r, c in enumerate(completions))), SERVER)


@pytest.mark.parametrize("settings", [SamplingSettings(1.0, 1.0, 12), SamplingSettings(0.6, 0.8, 12),
                                      SamplingSettings(0.0, 1.0, 12)])
def test_what_the_rollout_engine_drew_replays(micro, settings):
    model, model_hash = micro
    check = recheck_receipt(drawn_receipt(model, model_hash, settings), model, model_hash)
    assert check.agrees, check


def test_a_draw_under_other_settings_or_streams_does_not_replay(micro):
    model, model_hash = micro
    honest = drawn_receipt(model, model_hash, SamplingSettings(1.0, 1.0, 12))
    claimed_cooler = sign_receipt(dataclasses.replace(honest, temperature=0.3, signature=b"\0" * 64), SERVER)
    assert recheck_receipt(claimed_cooler, model, model_hash).reason == "draw-mismatch"
    other_stream = sign_receipt(dataclasses.replace(honest, seed=public_seed(10), client_seed=10,
                                                    signature=b"\0" * 64), SERVER)
    check = recheck_receipt(other_stream, model, model_hash)
    assert check.reason == "draw-mismatch" and check.expected_token is not None
    # the first differing token is the first whose uniform falls outside its interval
    assert check.expected_token != check.claimed_token
    assert stream_uniforms(receipt_row_key(public_seed(10), 0), 1)[0] != stream_uniforms(receipt_row_key(public_seed(9), 0), 1)[0]


def test_a_token_outside_the_vocabulary_is_named(micro):
    model, model_hash = micro
    honest = drawn_receipt(model, model_hash, SamplingSettings(1.0, 1.0, 12), n=1)
    ids = (honest.choices[0].completion_ids[0], 10_000) + honest.choices[0].completion_ids[2:]
    bad = sign_receipt(dataclasses.replace(honest, choices=(dataclasses.replace(honest.choices[0], completion_ids=ids),),
                                           signature=b"\0" * 64), SERVER)
    check = recheck_receipt(bad, model, model_hash)
    assert check.reason == "token-range" and "10000" in check.detail


def test_served_model_hash_is_the_manifest_hash(micro):
    from thinkmesh.protocol.rules.model_manifest import build_manifest, canonical_architecture, model_parameters

    model, model_hash = micro
    manifest, _ = build_manifest(model_parameters(model), canonical_architecture(model.config.to_dict()),
                                 chain_id=1, run_id="r", version=0, round_id=0, parent_hash=b"\0" * 32)
    assert manifest.model_hash == model_hash
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        next(nudged.parameters())[0, 0] += 1.0
    assert served_model_hash(nudged) != model_hash
