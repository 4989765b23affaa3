"""`thinkmesh node init`: a commented node.toml for this machine.

    thinkmesh node init --base-model DIR --rpc URL --ledger 0x... [--out node.toml]

It looks at the machine (CUDA or not, bfloat16 support, free memory), reads the base model's
config (never its weights) and writes a file that `thinkmesh node doctor` and `node run` accept as
is, each choice commented with why. The text is a pure function of what was found
(`render_node_toml`), so it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from thinkmesh.protocol.rules.errors import ProtocolError

GiB = float(1 << 30)


class NodeInitError(ProtocolError):
    """A node.toml that cannot be written as asked (file exists, missing chain or peers)."""


@dataclass(frozen=True)
class MachineFacts:
    """What `node init` found: the device to use and whether it computes in bfloat16, its free memory."""

    device: str  # "cuda" or "cpu"
    device_name: str
    bf16_supported: bool
    free_bytes: int | None


@dataclass(frozen=True)
class PlanLine:
    """One dtype's memory estimate for the comment block (memory_fit.estimate_fit)."""

    dtype: str
    full_gib: float
    adapter_gib: float
    micro_batch: int
    fits: bool


def detect_machine() -> MachineFacts:
    import torch

    from thinkmesh.node.model.memory_fit import free_memory_bytes

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(0)
        return MachineFacts("cuda", torch.cuda.get_device_name(0), bool(torch.cuda.is_bf16_supported()), int(free))
    return MachineFacts("cpu", "CPU", False, free_memory_bytes("cpu"))


def choose_dtype(facts: MachineFacts, requested: str | None) -> str:
    """float32 unless asked: rounds verify in float32 today, and a bfloat16 node's logprobs miss
    the float32 tolerances (docs/verification.md); bfloat16 is offered in a comment where the GPU has it."""
    if requested is None:
        return "float32"
    if requested == "bfloat16" and facts.device == "cpu":
        raise NodeInitError("--dtype bfloat16: expected a CUDA device for bfloat16, found CPU only")
    return requested


def plan_lines(base_model: Path, facts: MachineFacts, max_new_tokens: int, kl_reference: bool) -> list[PlanLine]:
    """Full-model and adapter-round estimates in float32 (and bfloat16 where supported); empty if
    the base model's config does not load or the free memory is unknown (doctor says why)."""
    from thinkmesh.node.ops.doctor_model import ADAPTER_RANK, DTYPE_BYTES, PROMPT_TOKENS, check_base_model
    from thinkmesh.node.model.memory_fit import estimate_fit, parameter_count
    from thinkmesh.protocol.rules.adapters import lora_parameter_count

    check, config = check_base_model(base_model)
    if config is None or facts.free_bytes is None:
        return []
    parameters = parameter_count(config)
    try:
        lora = lora_parameter_count(config.to_dict(), ADAPTER_RANK)
    except KeyError:
        lora = parameters
    lines = []
    for dtype in ("float32", "bfloat16") if facts.bf16_supported else ("float32",):
        args = (config, parameters, DTYPE_BYTES[dtype])
        extra = int(kl_reference)
        full = estimate_fit(*args, parameters, PROMPT_TOKENS, max_new_tokens, facts.free_bytes, extra_models=extra)
        adapter = estimate_fit(*args, lora, PROMPT_TOKENS, max_new_tokens, facts.free_bytes, extra_models=extra)
        lines.append(PlanLine(dtype, full.need_bytes / GiB, adapter.need_bytes / GiB, adapter.plan.micro_batch,
                              adapter.fits))
    return lines


def _q(value: object) -> str:
    """A TOML basic string (JSON's escaping is TOML-compatible for these values)."""
    return json.dumps(str(value))


def render_node_toml(*, facts: MachineFacts, dtype: str, base_model: Path, data_dir: Path, key_dir: Path,
                     rpc_url: str | None, ledger: str | None, initial_peers: list[str], strategy: str,
                     plans: list[PlanLine]) -> str:
    """The node.toml text; every value `NodeConfig` would otherwise default is left to it."""
    free = "unknown" if facts.free_bytes is None else f"{facts.free_bytes / GiB:.1f} GiB free"
    lines = [
        "# thinkmesh node config, written by `thinkmesh node init` for this machine.",
        "# Check it with `thinkmesh node doctor --config THIS_FILE`; every key can be overridden from the",
        "# environment (THINKMESH_NODE__SECTION__KEY=value).",
        "",
        "# The base model: any Hugging Face causal-LM directory (config.json, tokenizer, *.safetensors).",
        "# The node never downloads it; in adapter rounds a base that hashes differently is fetched once",
        "# over P2P and kept under data_dir/bases/.",
        f"base_model = {_q(base_model)}",
        f"data_dir = {_q(data_dir)}        # fetched models, the base cache, logs",
        "",
        f"# Found: {facts.device_name} ({facts.device}), {free}.",
        f"device = {_q(facts.device)}",
    ]
    if facts.bf16_supported and dtype == "float32":
        lines += ["# This GPU computes in bfloat16 (half the memory), but rounds verify in float32 today: a bfloat16",
                  "# node's logprobs miss the float32 tolerances and are slashed unless the coordinator's audit",
                  "# policy uses bf16 ones (docs/verification.md). Switch only when the coordinator says so."]
    elif facts.device == "cpu":
        lines += ["# No CUDA device: float32 on CPU works for the tiny devnet model, slowly for real ones."]
    lines.append(f"dtype = {_q(dtype)}")
    lines += ["", "[identity]", f"key_dir = {_q(key_dir)}   # `thinkmesh keys new` makes it",
              "# password_file = \"...\"   # else THINKMESH_KEY_PASSWORD or a prompt", "",
              "[strategy]", f"preset = {_q(strategy)}   # grpo, dr_grpo, dapo, gspo or rloo", "",
              "[memory]",
              "# Batch sizes in sequences; 0 plans them from the model and free memory on the first round,",
              "# and an out-of-memory error halves them either way (node/model/memory_fit.py)."]
    if plans:
        lines.append("# Estimated here (weights + float32 gradients + one sequence; micro-batch = adapter rounds'):")
        for plan in plans:
            verdict = "fits" if plan.fits else "does NOT fit"
            lines.append(f"#   {plan.dtype:9s} full-model rounds {plan.full_gib:6.2f} GiB, adapter rounds "
                         f"{plan.adapter_gib:6.2f} GiB, micro-batch {plan.micro_batch}: {verdict}")
    else:
        lines.append("# (no estimate: the base model's config did not load here; `node doctor` says why)")
    lines += ["rollout_batch = 0", "micro_batch = 0", "free_fraction = 0.8", ""]
    if rpc_url is not None and ledger is not None:
        lines += ["# The ledger this node is paid on; its bootstrap list is how the node finds the coordinator.",
                  "[chain]", f"rpc_url = {_q(rpc_url)}", f"ledger = {_q(ledger)}",
                  "stake = \"10\"          # whole tokens, staked at registration", ""]
    if initial_peers:
        lines += ["[network]", "# The coordinator's multiaddrs, pinned by hand.",
                  "initial_peers = [" + ", ".join(_q(p) for p in initial_peers) + "]", ""]
    return "\n".join(lines)


def register(commands: argparse._SubParsersAction) -> None:
    """Adds `init` to the `node` command's subparsers."""
    from thinkmesh.protocol.keys.keystore import default_key_dir

    init = commands.add_parser("init", help="write a commented node.toml for this machine",
                               description="Device, dtype and a memory plan found here; [chain] from --rpc/--ledger.")
    init.add_argument("--out", type=Path, default=Path("node.toml"), help="where to write (default node.toml)")
    init.add_argument("--base-model", type=Path, required=True, help="the base model directory")
    init.add_argument("--rpc", help="EVM JSON-RPC URL for [chain]")
    init.add_argument("--ledger", help="ThinkMeshLedger address for [chain]")
    init.add_argument("--initial-peer", action="append", default=[], dest="initial_peers",
                      help="a coordinator multiaddr (repeatable); instead of, or besides, --rpc/--ledger")
    init.add_argument("--key-dir", type=Path, default=default_key_dir(), help="the node's key directory")
    init.add_argument("--data-dir", type=Path, default=None, help="default: $THINKMESH_HOME/node")
    init.add_argument("--strategy", default="grpo")
    init.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                      help="default float32 (rounds verify in float32 today)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=node_init)


def node_init(args: argparse.Namespace) -> int:
    from thinkmesh.protocol.keys.keystore import HOME_ENV
    from thinkmesh.protocol.runtime.atomic_files import PRIVATE_MODE, write_atomic
    from thinkmesh.protocol.rules.strategies import strategy_from_name

    if (args.rpc is None) != (args.ledger is None):
        raise NodeInitError("expected --rpc and --ledger together")
    if args.rpc is None and not args.initial_peers:
        raise NodeInitError("expected --rpc URL --ledger ADDRESS (or --initial-peer MULTIADDR): a node needs a way "
                            "to find the coordinator")
    if args.out.exists() and not args.force:
        raise NodeInitError(f"expected no file at {args.out} (pass --force to overwrite), found one")
    spec = strategy_from_name(args.strategy)
    facts = detect_machine()
    dtype = choose_dtype(facts, args.dtype)
    base_model = args.base_model.expanduser().resolve()
    home = Path(os.environ.get(HOME_ENV, Path.home() / ".thinkmesh"))
    data_dir = (args.data_dir or home / "node").expanduser().resolve()
    plans = plan_lines(base_model, facts, spec.max_new_tokens, spec.beta > 0)
    text = render_node_toml(facts=facts, dtype=dtype, base_model=base_model, data_dir=data_dir,
                            key_dir=args.key_dir.expanduser().resolve(), rpc_url=args.rpc, ledger=args.ledger,
                            initial_peers=args.initial_peers, strategy=args.strategy, plans=plans)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, text, mode=PRIVATE_MODE)
    print(f"node init: wrote {args.out} ({facts.device}, {dtype}); next: thinkmesh node doctor --config {args.out}")
    return 0
