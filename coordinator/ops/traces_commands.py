"""The network's reasoning-trace dataset, with provenance anyone can check against the chain:

    thinkmesh traces export --config coordinator.toml --rounds A..B OUT.jsonl
    thinkmesh traces verify OUT.jsonl --rpc URL --ledger ADDR

`export` writes one JSON line per accepted sample of each committed round in A..B (in a generation
round, per accepted trace: correct and well formed, `protocol/rules/generation.py`) (from the
coordinator's settlement journal, accepted contributions and evidence files): the prompt, the
completion (text and token ids), its logprobs and verified rewards, who made it, its trace hash
(`protocol/rules/traces.py`) and the Merkle proof to the round's traces root. `verify` recomputes every
sample hash and trace hash from the line itself and checks the proof with the contract's
`verifyTrace` and locally against `round(id).tracesRoot`; exit status 0 iff every line verifies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.runtime.atomic_files import write_atomic


class TracesError(ProtocolError):
    """A trace export that cannot be made or read (bad range, missing records, malformed line)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    traces = subparsers.add_parser("traces", help="export and verify the accepted reasoning traces")
    commands = traces.add_subparsers(dest="traces_command", metavar="COMMAND")
    export = commands.add_parser("export", help="write accepted traces with Merkle proofs as JSONL")
    export.add_argument("out", type=Path, help="output JSONL file")
    export.add_argument("--config", required=True, type=Path, help="the coordinator's TOML file (its data_dir)")
    export.add_argument("--rounds", required=True, help="A..B (inclusive) or a single round id")
    export.set_defaults(handler=export_traces)
    verify = commands.add_parser("verify", help="check every exported trace's proof against the chain")
    verify.add_argument("file", type=Path, help="a JSONL file from `traces export`")
    verify.add_argument("--rpc", required=True, help="EVM JSON-RPC URL")
    verify.add_argument("--ledger", required=True, help="ThinkMeshLedger address")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(handler=verify_traces)


def parse_rounds(text: str) -> range:
    first, sep, last = text.partition("..")
    try:
        a, b = int(first), int(last) if sep else int(first)
    except ValueError:
        raise TracesError(f"--rounds: expected A..B or N, got {text!r}") from None
    if not 0 <= a <= b:
        raise TracesError(f"--rounds: expected 0 <= A <= B, got {text!r}")
    return range(a, b + 1)


def trace_lines(data_dir: Path, evidence_dir: Path, rounds: range, tokenizer) -> list[dict]:
    """The export's records (see the module docstring); only rounds whose intent is journaled."""
    from thinkmesh.coordinator.settlement.round_settlement import SettlementJournal
    from thinkmesh.coordinator.work.verifier import ContributionArchive, round_dir
    from thinkmesh.protocol.rules.evidence import read_evidence
    from thinkmesh.protocol.rules.messages import sample_hash
    from thinkmesh.protocol.rules.scoring import completion_text
    from thinkmesh.protocol.rules.tasks import render_prompt
    from thinkmesh.protocol.rules.traces import contribution_traces, traces_tree
    from thinkmesh.protocol.rules.verification import node_tasks

    archive = ContributionArchive(data_dir / "contributions")
    lines = []
    for intent in SettlementJournal(data_dir / "settlement").load():
        if intent.round_id not in rounds:
            continue
        contributions, addresses = [], {}
        for entry in intent.accepted:
            contribution = archive.load(intent.round_id, entry.node_key)
            if contribution is None:
                raise TracesError(f"round {intent.round_id}: the accepted contribution of 0x{entry.node_key.hex()} is missing")
            contributions.append(contribution)
            addresses[entry.node_key] = entry.address
        # a generation round published its accepted traces only (protocol/rules/generation.py)
        tree = traces_tree(leaf for c in contributions for leaf in contribution_traces(c, intent.generation))
        if tree.root != intent.traces_root:
            raise TracesError(f"round {intent.round_id}: the archived contributions give another traces root than settled")
        by_key = {c.node_key: c for c in contributions}
        announcements = {}
        for position, leaf in enumerate(tree.leaves):
            contribution = by_key[leaf.node_key]
            if leaf.node_key not in announcements:
                evidence = read_evidence(round_dir(evidence_dir, intent.round_id) / f"{leaf.node_key.hex()}.evidence")
                announcements[leaf.node_key] = evidence.announcement
            announcement = announcements[leaf.node_key]
            sample = contribution.samples[leaf.sample_index]
            task = node_tasks(announcement, leaf.node_key)[sample.prompt_index]
            assert sample_hash(sample) == leaf.sample_hash
            lines.append({
                "run_id": leaf.run_id, "round_id": leaf.round_id, "node_key": leaf.node_key.hex(),
                "node": addresses[leaf.node_key], "sample_index": leaf.sample_index,
                "prompt_index": sample.prompt_index, "prompt": render_prompt(task, announcement.prompt_template),
                "completion": completion_text(tokenizer, sample.completion_ids),
                "completion_ids": list(sample.completion_ids), "logprobs": list(sample.logprobs),
                "rewards": [sample.rewards.accuracy, sample.rewards.format, sample.rewards.language, sample.rewards.length],
                "sample_hash": leaf.sample_hash.hex(), "trace_hash": tree.hashes[position].hex(),
                "traces_root": tree.root.hex(), "proof": [p.hex() for p in tree.proof(position)],
                # the version sampled: the whole model's hash, or in an adapter round the adapter's and its base's
                "model_hash": announcement.model_hash.hex(),
                "base_hash": announcement.adapter.base_hash.hex() if announcement.adapter is not None else None,
                "round_kind": announcement.kind,
            })
    return lines


def export_traces(args: argparse.Namespace) -> int:
    from thinkmesh.coordinator.config import load_coordinator_config
    from thinkmesh.coordinator.work.daemon import load_tokenizer

    config = load_coordinator_config(args.config)
    rounds = parse_rounds(args.rounds)
    evidence_dir = config.chain.evidence_dir if config.chain and config.chain.evidence_dir else config.data_dir / "evidence"
    lines = trace_lines(config.data_dir, evidence_dir, rounds, load_tokenizer(config.base_model))
    write_atomic(args.out, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    print(f"traces export: {len(lines)} traces from rounds {rounds.start}..{rounds.stop - 1} to {args.out}")
    return 0


def check_line(line: dict):
    """Recomputes the line's sample and trace hash; returns (its `TraceLeaf`, trace hash, proof)."""
    from thinkmesh.protocol.rules.messages import Sample, sample_hash
    from thinkmesh.protocol.rules.rewards import RewardBreakdown
    from thinkmesh.protocol.rules.traces import TraceLeaf, leaf_trace_hash

    try:
        sample = Sample(int(line["prompt_index"]), tuple(line["completion_ids"]), tuple(float(x) for x in line["logprobs"]),
                        RewardBreakdown(*(float(x) for x in line["rewards"])))
        leaf = TraceLeaf(line["run_id"], int(line["round_id"]), bytes.fromhex(line["node_key"]), int(line["sample_index"]),
                         sample_hash(sample))
        item = leaf_trace_hash(leaf)
        proof = [bytes.fromhex(p) for p in line["proof"]]
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise TracesError(f"expected a `traces export` line, got one that does not parse: {exc}") from exc
    if leaf.sample_hash.hex() != line["sample_hash"] or item.hex() != line["trace_hash"]:
        raise TracesError(f"round {line['round_id']} sample {line['sample_index']}: the hashes do not match its content")
    return leaf, item, proof


def verify_line(client, roots: dict[int, bytes], line: dict) -> tuple[int, bytes, bool]:
    """(round, trace hash, verified) of one exported line: `check_line`, then the proof through the
    contract's `verifyTrace` and the rules' `verify_trace_proof` against the round's settled
    `tracesRoot` (cached in `roots`). Raises TracesError for a line whose hashes do not match its content."""
    from thinkmesh.protocol.rules.traces import verify_trace_proof

    leaf, item, proof = check_line(line)
    if leaf.round_id not in roots:
        roots[leaf.round_id] = client.round(leaf.round_id).traces_root
    return leaf.round_id, item, (client.verify_trace(leaf.round_id, item, proof)
                                 and verify_trace_proof(roots[leaf.round_id], leaf, proof))


def verify_traces(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment

    client = LedgerClient.connect(args.rpc, discover_deployment(args.rpc, args.ledger))
    roots: dict[int, bytes] = {}
    verified, failures = 0, []
    try:
        text = args.file.read_text()
    except OSError as exc:
        raise TracesError(f"{args.file}: {exc.strerror}") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            round_id, item, ok = verify_line(client, roots, json.loads(raw))
        except (TracesError, ValueError) as exc:
            failures.append(f"line {number}: {exc}")
            continue
        if ok:
            verified += 1
        else:
            failures.append(f"line {number}: round {round_id} trace 0x{item.hex()[:16]} is not under the settled root")
    if args.json:
        print(json.dumps({"verified": verified, "failed": len(failures), "rounds": sorted(roots), "failures": failures[:20]}))
    else:
        print(f"traces verify: {verified} verified, {len(failures)} failed, rounds {sorted(roots)}")
        for failure in failures[:20]:
            print(f"  {failure}")
    return 0 if verified and not failures else 1
