"""`thinkmesh verify-evidence FILE [--model DIR]`: re-run a verdict and print agree or disagree.

Exit status: 0 agree, 1 disagree. A malformed file or a wrong model directory is a
`ProtocolError`, which the dispatcher prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `verify-evidence`; its handler returns the exit status."""
    parser = subparsers.add_parser(
        "verify-evidence", help="re-run a verification verdict from its evidence file and print agree/disagree"
    )
    parser.add_argument("file", type=Path, help="the evidence file (canonical msgpack, as the coordinator wrote it)")
    parser.add_argument("--model", type=Path, help="the round's model directory (needed for logprob/gradient verdicts); "
                        "in an adapter round, the base model's")
    parser.add_argument("--adapter", type=Path, help="an adapter round's adapter (<model hash>.adapter.safetensors); "
                        "default: that file beside the evidence file, where the coordinator writes it")
    parser.add_argument("--hash", dest="expected_hash", help="0x-hex keccak256 expected for the file (e.g. from chain)")
    parser.add_argument("--coordinator", help="0x-hex Ed25519 key the announcement must be signed by")
    parser.add_argument("--registry", type=Path, help="file of registered node keys (0x-hex, one a line)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=_verify_evidence)


def _hex(text: str, what: str, size: int) -> bytes:
    from thinkmesh.protocol.rules.evidence import EvidenceError

    try:
        value = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        value = b""
    if len(value) != size:
        raise EvidenceError(f"{what}: expected {size} bytes as 0x-hex, got {text!r}")
    return value


def _load_model(directory: Path):
    """Any causal LM directory, float32 on CPU, as the verifier scores it."""
    import torch
    from transformers import AutoModelForCausalLM

    from thinkmesh.protocol.rules.scoring import load_tokenizer

    from thinkmesh.protocol.rules.evidence import EvidenceError

    if not (directory / "config.json").is_file():
        raise EvidenceError(f"--model {directory}: expected a model directory with config.json, found none")
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, load_tokenizer(directory)


def _attach_round_adapter(base, announcement, adapter_file: Path | None, evidence_file: Path):
    """The adapter round's model: `base` (which must hash to the announced base) with the
    announced LoRA attached and the adapter file's tensors in it. The version hash is checked
    by `rerun_evidence` against the announcement's `model_hash`."""
    from thinkmesh.protocol.rules.adapters import adapter_file_name, attach_adapter, load_adapter_file
    from thinkmesh.protocol.rules.evidence import EvidenceError
    from thinkmesh.protocol.rules.model_manifest import canonical_architecture, model_parameters, parameters_hash

    spec = announcement.adapter
    base_hash = parameters_hash(model_parameters(base), canonical_architecture(base.config.to_dict()))
    if base_hash != spec.base_hash:
        raise EvidenceError(f"--model: the base hashes to 0x{base_hash.hex()}, the round's base is 0x{spec.base_hash.hex()}")
    path = adapter_file or evidence_file.parent / adapter_file_name(announcement.model_hash)
    if not path.is_file():
        raise EvidenceError(f"an adapter round's verdict needs its adapter: no file at {path} (pass --adapter FILE)")
    model = attach_adapter(base, spec)
    load_adapter_file(model, path)
    return model


def _verify_evidence(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.rules.evidence import EvidenceError, evidence_hash, read_evidence, rerun_evidence

    evidence = read_evidence(args.file)
    digest = evidence_hash(evidence)
    notes: list[str] = []
    agrees = True
    if args.expected_hash and digest != _hex(args.expected_hash, "--hash", 32):
        agrees = False
        notes.append(f"the file hashes to 0x{digest.hex()}, expected {args.expected_hash}")
    model = tokenizer = None
    if args.model:
        model, tokenizer = _load_model(args.model)
        if evidence.announcement.adapter is not None:
            model = _attach_round_adapter(model, evidence.announcement, args.adapter, args.file)
    registry = None
    if args.registry:
        try:
            lines = args.registry.read_text().split()
        except OSError as exc:
            raise EvidenceError(f"--registry {args.registry}: {exc.strerror}") from exc
        registry = frozenset(_hex(line, "--registry entry", 32) for line in lines)
    coordinator = _hex(args.coordinator, "--coordinator", 32) if args.coordinator else None
    outcome = rerun_evidence(evidence, model, tokenizer, registered_nodes=registry, coordinator_key=coordinator)
    agrees = agrees and outcome.agrees
    notes.extend(outcome.notes)
    word = "agree" if agrees else "disagree"
    c = evidence.contribution
    if args.json:
        print(json.dumps({
            "result": word, "evidence_hash": "0x" + digest.hex(), "reason": evidence.reason,
            "rerun_reason": outcome.rerun_reason, "round_id": c.round_id, "node_key": "0x" + c.node_key.hex(),
            "findings": len(evidence.findings), "notes": notes,
        }, sort_keys=True))
    else:
        print(word)
        print(f"evidence  0x{digest.hex()}")
        print(f"verdict   {evidence.reason} (round {c.round_id}, node 0x{c.node_key.hex()[:16]}..., "
              f"{len(evidence.findings)} findings)")
        print(f"re-run    {outcome.rerun_reason or '-'}")
        for note in notes:
            print(f"note      {note}")
    return 0 if agrees else 1
