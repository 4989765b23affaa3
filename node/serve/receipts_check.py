"""`thinkmesh verify-receipt`: re-check a server's answer with nothing but the model directory.

The file is either a bare receipt (the `thinkmesh_receipt` object) or a whole response body that
carries one (a completion, a chat completion, or the last chunk of a stream); with a whole
non-streamed body the answer's text is checked against its tokens too. The checks are
`receipts.recheck_receipt`'s, in its order, then the text (`text-mismatch`) and, when the
caller names them, the expected seed (`--seed`) and server key (`--server-key`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.node.serve.openai_schema import answer_text
from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.rules.receipts import (
    InferenceReceipt, ReceiptCheck, ReceiptError, public_seed, receipt_from_json, recheck_receipt, served_model_hash,
)

MALFORMED = "malformed"
TEXT_MISMATCH = "text-mismatch"
NOT_EXPECTED = "not-expected"


@dataclass(frozen=True)
class ReceiptFile:
    receipt: InferenceReceipt
    texts: list[str] | None  # the answer's text per choice, when the file is a whole response


def read_receipt_file(path: str | Path) -> ReceiptFile:
    """The receipt (and the answer's texts) in `path`; ReceiptError when it holds none."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReceiptError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(doc, dict):
        raise ReceiptError(f"{path}: expected a JSON object")
    if "error" in doc and "thinkmesh_receipt" not in doc:
        raise ReceiptError(f"{path}: an error response, not an answer: {json.dumps(doc['error'])[:300]}")
    if "thinkmesh_receipt" not in doc:
        return ReceiptFile(receipt_from_json(doc), None)
    texts = None
    choices = doc.get("choices")
    if choices and doc.get("object") in ("text_completion", "chat.completion") and "delta" not in choices[0]:
        texts = [c["message"]["content"] if "message" in c else c["text"] for c in choices]
    return ReceiptFile(receipt_from_json(doc["thinkmesh_receipt"]), texts)


def check_receipt_file(path: str | Path, model, tokenizer, model_hash: bytes | None = None, seed: int | None = None,
                       server_key: bytes | None = None) -> ReceiptCheck:
    """The verdict on the receipt in `path` against the loaded `model`; never raises on bad input."""
    try:
        found = read_receipt_file(path)
    except ProtocolError as exc:
        return ReceiptCheck(False, MALFORMED, str(exc))
    receipt = found.receipt
    if seed is not None and (receipt.client_seed != seed or receipt.seed != public_seed(seed)):
        return ReceiptCheck(False, NOT_EXPECTED, f"the receipt was drawn under client seed {receipt.client_seed} "
                            f"(0x{receipt.seed.hex()}), expected {seed}")
    if server_key is not None and receipt.server_key != server_key:
        return ReceiptCheck(False, NOT_EXPECTED, f"the receipt names server 0x{receipt.server_key.hex()}, "
                            f"expected 0x{server_key.hex()}")
    check = recheck_receipt(receipt, model, model_hash or served_model_hash(model), tokenizer, tokenizer.pad_token_id)
    if not check.agrees or found.texts is None:
        return check
    if len(found.texts) != len(receipt.choices):
        return ReceiptCheck(False, TEXT_MISMATCH, f"the answer has {len(found.texts)} choices, the receipt {len(receipt.choices)}")
    for index, (text, choice) in enumerate(zip(found.texts, receipt.choices)):
        expected = answer_text(tokenizer, choice.completion_ids, receipt.stop_rule)
        if text != expected:
            return ReceiptCheck(False, TEXT_MISMATCH, f"choice {index}: the answer's text {text!r} is not its tokens' "
                                f"text {expected!r}", index)
    return check


def format_check(check: ReceiptCheck) -> str:
    """One line: `agree: ...` or `disagree: REASON: ...`."""
    return f"agree: {check.detail}" if check.agrees else f"disagree: {check.reason}: {check.detail}"
