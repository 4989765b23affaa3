"""`thinkmesh distill`: a dataset of correct reasoning, then SFT of a smaller student (node/local/distill.py).

    thinkmesh distill --teacher DIR --student-arch mini --out DIR          rejection sampling from a teacher
    thinkmesh distill --rpc URL --ledger ADDR --data-dir DIR --rounds A..B --student-arch mini --out DIR

The second form takes the accepted traces of settled rounds (training or generation rounds) from a
coordinator's data directory, the records `traces export` writes (`coordinator.ops.traces_commands.
trace_lines`), checks every one against the chain with `traces verify`'s own check
(`traces_commands.verify_line`: the contract's `verifyTrace` and the round's settled `tracesRoot`)
and refuses to train if any fails; the dataset keeps each line whole, so `thinkmesh traces verify
OUT/distill.jsonl` re-checks it. Of the verified traces it keeps those whose committed rewards pass
the generation round's acceptance rule (`generation.trace_accepted`: accuracy 1 and format 1), unless
`--keep all`; a generation round's traces all pass it already. Round prompts are never held-out
problems (`tasks.task_for_node` draws through `trainable_task`). The completion text is decoded
with the student's tokenizer, which must be the mesh model's.

It lives in `devnet/` because it joins a coordinator's archive with a node's training loop, and
only this layer may import both. Heavy imports stay inside the handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KEEP_CORRECT, KEEP_ALL = "correct", "all"


def register(subparsers: argparse._SubParsersAction) -> None:
    distill = subparsers.add_parser(
        "distill", help="rejection-sample a teacher (or take verified on-chain traces) and SFT a smaller student",
        description="Exactly one source: --teacher DIR, or --rpc/--ledger/--data-dir/--rounds (verified traces).",
    )
    source = distill.add_argument_group("teacher source")
    source.add_argument("--teacher", type=Path, default=None, help="a causal LM directory to rejection-sample from")
    source.add_argument("--task", default="linear", help="comma-separated task families")
    source.add_argument("--difficulty", default="1", help="comma-separated difficulty levels")
    source.add_argument("--template", default="r1-compact")
    source.add_argument("--prompts", type=int, default=1200, help="problems asked (never a held-out one)")
    source.add_argument("--samples", type=int, default=4, help="completions sampled per prompt (k)")
    source.add_argument("--keep-per-prompt", type=int, default=1, help="distinct correct completions kept per prompt")
    source.add_argument("--temperature", type=float, default=1.0)
    source.add_argument("--top-p", type=float, default=1.0)
    source.add_argument("--max-new-tokens", type=int, default=40)
    chain = distill.add_argument_group("verified-traces source")
    chain.add_argument("--rpc", default=None, help="EVM JSON-RPC URL")
    chain.add_argument("--ledger", default=None, help="ThinkMeshLedger address")
    chain.add_argument("--data-dir", type=Path, default=None, help="the coordinator's data_dir")
    chain.add_argument("--evidence-dir", type=Path, default=None, help="its evidence dir (default DATA_DIR/evidence)")
    chain.add_argument("--rounds", default=None, help="A..B (inclusive) or a single round id")
    chain.add_argument("--keep", choices=(KEEP_CORRECT, KEEP_ALL), default=KEEP_CORRECT,
                       help="correct: accuracy 1 and format 1 only (rejection sampling); all: every accepted trace")
    student = distill.add_argument_group("student")
    student.add_argument("--student-arch", default=None, help="a fresh student: tiny, mini, micro (or qwen2.5-0.5b)")
    student.add_argument("--student", type=Path, default=None, help="or an existing model directory to start from")
    student.add_argument("--out", type=Path, required=True, help="the distilled student + distill.jsonl + summary")
    student.add_argument("--epochs", type=int, default=12, help="SFT epochs over the kept examples")
    student.add_argument("--batch-size", type=int, default=32)
    student.add_argument("--lr", type=float, default=3e-3)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--device", default="cpu")
    distill.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    distill.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    distill.set_defaults(handler=distill_command)


def distill_command(args: argparse.Namespace) -> int:
    import json
    import tempfile

    import torch
    from transformers.utils import logging as hf_logging

    from thinkmesh.node.local.distill import (
        DistillError, RejectionSettings, StudentSettings, init_student, rejection_sample, train_student,
    )

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    chain_args = (args.rpc, args.ledger, args.data_dir, args.rounds)
    if (args.teacher is None) == (not any(chain_args)):
        raise DistillError("distill: expected exactly one source, --teacher DIR or --rpc/--ledger/--data-dir/--rounds")
    if (args.student_arch is None) == (args.student is None):
        raise DistillError("distill: expected exactly one of --student-arch ARCH and --student DIR")
    with tempfile.TemporaryDirectory(prefix="thinkmesh-distill-") as scratch:
        student = args.student
        if student is None:
            student = Path(scratch) / "student"
            init_student(args.student_arch, student, seed=args.seed)
        if args.teacher is not None:
            settings = RejectionSettings(
                families=tuple(f.strip() for f in args.task.split(",") if f.strip()),
                difficulties=tuple(int(d) for d in args.difficulty.split(",") if d.strip()),
                template=args.template, prompts=args.prompts, samples_per_prompt=args.samples,
                keep_per_prompt=args.keep_per_prompt, temperature=args.temperature, top_p=args.top_p,
                max_new_tokens=args.max_new_tokens, seed=args.seed,
            )
            dataset = rejection_sample(args.teacher, settings, device=args.device)
        else:
            if not all(chain_args):
                raise DistillError("distill: the verified-traces source needs all of --rpc, --ledger, --data-dir, --rounds")
            dataset = verified_traces_dataset(args.rpc, args.ledger, args.data_dir, args.rounds, student,
                                              evidence_dir=args.evidence_dir, keep=args.keep)
        origin = f"--student-arch {args.student_arch} (seed {args.seed})" if args.student is None else str(student)
        result = train_student(student, dataset, args.out,
                               StudentSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
                               device=args.device, origin=origin)
    if args.json:
        print(json.dumps(result.summary, sort_keys=True))
    else:
        print(f"distill: kept {result.examples} of {dataset.sampled} samples; student trained in {result.seconds:.0f}s "
              f"(final loss {result.final_loss:.3f}) -> {result.out}")
    return 0


def verified_traces_dataset(rpc_url: str, ledger: str, data_dir: Path, rounds: str, tokenizer_dir: Path, *,
                            evidence_dir: Path | None = None, keep: str = KEEP_CORRECT, client=None):
    """The accepted traces of `rounds`, every one verified against the chain (module docstring);
    raises DistillError naming the first that is not under its round's settled root."""
    from thinkmesh.coordinator.ops.traces_commands import parse_rounds, trace_lines, verify_line
    from thinkmesh.node.local.distill import SOURCE_TRACES, Dataset, DistillError
    from thinkmesh.node.model.model_dir import load_tokenizer
    from thinkmesh.protocol.chain.client import LedgerClient, discover_deployment
    from thinkmesh.protocol.rules.generation import trace_accepted
    from thinkmesh.protocol.rules.rewards import RewardBreakdown
    from thinkmesh.protocol.rules.tasks import PARTITION_ID

    if client is None:
        client = LedgerClient.connect(rpc_url, discover_deployment(rpc_url, ledger))
    span = parse_rounds(rounds)
    lines = trace_lines(data_dir, evidence_dir or data_dir / "evidence", span, load_tokenizer(tokenizer_dir))
    if not lines:
        raise DistillError(f"distill: rounds {rounds} of {data_dir} hold no settled accepted traces")
    roots: dict[int, bytes] = {}
    for line in lines:
        round_id, item, ok = verify_line(client, roots, line)
        if not ok:
            raise DistillError(f"distill: round {round_id} trace 0x{item.hex()[:16]} (node 0x{line['node_key'][:16]}, "
                               f"sample {line['sample_index']}) is not under the round's settled traces root on chain")
    kept = [{**line, "source": SOURCE_TRACES} for line in lines
            if keep == KEEP_ALL or trace_accepted(RewardBreakdown(*line["rewards"]))]
    provenance = {"source": SOURCE_TRACES, "ledger": ledger, "rounds": sorted(roots), "keep": keep,
                  "traces_roots": {str(r): root.hex() for r, root in sorted(roots.items())},
                  "heldout_partition": PARTITION_ID}
    return Dataset(tuple(kept), len(lines), 0.0, provenance)
