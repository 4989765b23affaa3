"""Mesh benchmark: 3 nodes x 3 rounds on loopback per gradient compression mode, against
`thinkmesh train local` doing the same work.

    .venv/bin/python bench/mesh.py [--model tiny|micro] [--rounds 3] [--modes none,fp16,uniform8,blockwise8]
                                   [--lr LR] [--eval-prompts 128] [--cache-dir DIR]

`--model tiny` (the default) is what `thinkmesh devnet up` trains: the devnet's default profile's
recipe (the 1.6M-parameter `tiny` shape and its cold start, the same cache key as the devnet's),
its template, prompts per node, group size, max tokens and coordinator lr. `--model micro` is an 82k-parameter
shape cold-started in the R1 template, 2 prompts of 32 tokens per node, lr 1e-3. Either is built
once and cached in `--cache-dir`. Per mode, a real coordinator and three real node processes
(grpo, dapo, gspo) over p2pd train it; the coordinator's round records give the upload bytes per
round (the signed contributions as sent: samples + gradient) and its held-out evaluation the
accuracy after the last round, reported with the held-out size and the binomial standard error
sqrt(p(1-p)/n). All modes of one run share the node keys, hence the prompts: the accuracies across
modes are a paired comparison, while from one run to the next they move with the keys (the tiny
`none` mode ended at 0.102, 0.133, 0.164 and 0.188 in four runs at lr 1e-4 or 3e-4).

`time_ratio_vs_local` is the mesh's summed round wall time (announce -> new version evaluated
and checkpointed, `none` mode) over the same span of a `thinkmesh train local` subprocess run in
this bench: same model, steps = rounds, prompts per step = 3 nodes x prompts per node, the same
group size, max tokens and held-out evaluation after each step. Where the extra mesh time goes is
read off the coordinator's and the nodes' /status, sampled every 0.1 s (so +-0.1 s per figure).
Prints one JSON object as its last line.

Measured 2026-11-27 on the 2-core dev box shared with other work (gradient wire format 2), the
8-bit bar being at most 30% of fp32's bytes per round, with the tiny profile as it was then (a
4000-example cold start without slips, lr 3e-4; 1e-3 took held-out accuracy from 0.117 to 0.016
in 3 rounds); the bytes do not depend on the cold start, the accuracies do:
  tiny   bytes/round none 19.23 MB; fp16 0.501, uniform8 0.256, blockwise8 0.252 of none; held-out
         accuracy 0.117 -> 0.102 (none, fp16, blockwise8), 0.086 (uniform8), +-0.027; local 0.141.
         Time ratio 1.80 (18.1 s / 10.1 s): 8.8 s collecting (per node 4.7 s rollouts + gradient,
         3.2 s polling and fetching the new version, 0.6 s upload) and 9.3 s aggregating,
         evaluating 128 prompts and checkpointing; 1.06-1.9 over runs, with the machine's load.
  micro  bytes/round none 1.00 MB; fp16 0.507, uniform8 0.308, blockwise8 0.263 of none (wire
         format 1: 0.311 for both 8-bit modes); uniform8 misses the bar here on its 1 KiB codebook
         per tensor (15 quantized tensors: 4.7% of fp32) and ~1.2% of samples. Held-out accuracy
         0.047 -> 0.086 +-0.025 in every mode; local 0.086. Time ratio 0.97 (12.7 s / 13.2 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thinkmesh.devnet.model_cache import ModelRecipe

PASSWORD = "bench-mesh"
STRATEGIES = ("grpo", "dapo", "gspo")
TASK, DIFFICULTY = "linear", 1
EVAL_PROMPTS = 128
SAMPLE_S = 0.1


@dataclass(frozen=True)
class Workload:
    """The base model and one node's share of a round (counts, tokens)."""

    recipe: ModelRecipe
    template: str
    prompts: int
    group: int
    max_tokens: int
    lr: float


def workload(model: str) -> Workload:
    """`tiny`: the devnet's default profile as `thinkmesh devnet up` runs it (its recipe, template,
    prompts per node, group and max tokens). `micro`: 82k parameters, cold-started in the R1
    template, 2 prompts of 32 tokens per node (linear-1 answers take ~25 tokens)."""
    from thinkmesh.devnet.model_cache import ModelRecipe
    from thinkmesh.devnet.profiles import PROFILES
    from thinkmesh.node.local.coldstart import ColdStartSettings
    from thinkmesh.node.model.tiny_model import TinyModelSpec

    if model == "tiny":
        profile = PROFILES["tiny"]
        return Workload(profile.recipe, profile.recipe.coldstart.template, profile.prompts_per_node,
                        profile.group_size, profile.max_new_tokens, lr=profile.lr)
    recipe = ModelRecipe(
        "bench-mesh",
        TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),
        ColdStartSettings(families=(TASK,), template="r1", num_examples=1024, epochs=2, batch_size=16, lr=1e-2),
    )
    return Workload(recipe, "r1", prompts=2, group=4, max_tokens=32, lr=1e-3)


def _status(port_file: Path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{int(port_file.read_text())}/status", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


@dataclass
class Timeline:
    """When each round opened and closed, when each node was up (its status answered: model loaded)
    and when each node's contribution to a round came back."""

    ready: dict[str, float] = field(default_factory=dict)
    opened: dict[int, float] = field(default_factory=dict)
    closed: dict[int, float] = field(default_factory=dict)
    finished: dict[tuple[str, int], float] = field(default_factory=dict)

    def start(self, round_id: int) -> float:
        """When the round could start: announced, and every node up (round 1 may open while
        nodes still load their model: that is start-up, not a round's cost)."""
        return max(self.opened[round_id], *self.ready.values())

    def sample(self, coordinator: dict | None, nodes: dict[str, dict | None]) -> None:
        now = time.monotonic()
        if coordinator is not None:
            current = coordinator.get("open_round")
            if current is not None:
                self.opened.setdefault(current["round_id"], now)
            for record in coordinator["rounds"]:
                self.closed.setdefault(record["round_id"], now)
            for round_id in self.opened:
                if coordinator["phase"] == "aggregating" and (current is None or current["round_id"] != round_id):
                    self.closed.setdefault(round_id, now)
        for name, status in nodes.items():
            if status is not None:
                self.ready.setdefault(name, now)
            for entry in (status or {}).get("history", []):
                self.finished.setdefault((name, entry["round_id"]), now)


def where_time_goes(status: dict, nodes: dict[str, dict], timeline: Timeline) -> dict:
    """Seconds per round, summed over rounds (node figures: mean over the nodes)."""
    rounds = status["rounds"]
    collect = sum(timeline.closed[r["round_id"]] - timeline.start(r["round_id"]) for r in rounds)
    startup = sum(timeline.start(r["round_id"]) - timeline.opened[r["round_id"]] for r in rounds)
    split = {"before_work": 0.0, "work": 0.0, "upload": 0.0, "waiting_for_slowest": 0.0}
    for name, node in nodes.items():
        for entry in node["history"]:
            round_id = entry["round_id"]
            if round_id not in timeline.opened or (name, round_id) not in timeline.finished:
                continue
            finished = timeline.finished[(name, round_id)]
            split["work"] += entry["work_s"]
            split["upload"] += entry["total_s"] - entry["work_s"]
            opened = max(timeline.opened[round_id], timeline.ready[name])
            split["before_work"] += max(0.0, finished - opened - entry["total_s"])
            split["waiting_for_slowest"] += max(0.0, timeline.closed[round_id] - finished)
    result = {f"node_{k}_s": round(v / len(nodes), 2) for k, v in split.items()}
    round_s = sum(r["duration_s"] for r in rounds) - startup
    result.update({
        "round_s": round(round_s, 2),
        "collect_s": round(collect, 2),
        "aggregate_eval_checkpoint_s": round(round_s - collect, 2),
        "excluded_node_startup_s": round(startup, 2),
        "model_bytes_fetched_per_node": sum(n["counters"]["model_bytes_fetched"] for n in nodes.values()) / len(nodes),
    })
    return result


def run_mesh(root: Path, base: Path, keys: dict, mode: str, rounds: int, eval_prompts: int, work: Workload) -> dict:
    env = dict(os.environ, THINKMESH_KEY_PASSWORD=PASSWORD, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    from thinkmesh.devnet.configs import RoundPlan, coordinator_config, node_config, write_config

    plan = RoundPlan(rounds=rounds, deadline_s=300, close_when=3, prompts_per_node=work.prompts, min_peers=3,
                     eval_prompts=eval_prompts, eval_max_new_tokens=work.max_tokens, group_size=work.group,
                     max_new_tokens=work.max_tokens, task_family=TASK, template=work.template, lr=work.lr)
    write_config(coordinator_config(
        base_model=base, data_dir=root / "coordinator", key_dir=keys["coordinator"], password_file=None, p2p_port=None,
        port_file=root / "coordinator.port", maddrs_file=root / "maddrs", plan=plan, chain=None, run_id=f"bench-{mode}",
        overrides={"round": {"task_difficulty": DIFFICULTY}, "aggregation": {"rule": "mean"}},
    ), root / "coordinator.toml")  # fmt: skip
    procs = []
    timeline = Timeline()
    try:
        log = open(root / "coordinator.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "thinkmesh.protocol.cli.main", "coordinator", "run", "--config",
                                       str(root / "coordinator.toml")], env=env, stdout=log, stderr=log,
                                      start_new_session=True))
        _wait(lambda: (root / "maddrs").exists(), 180)
        maddrs = [m for m in (root / "maddrs").read_text().split() if m]
        from thinkmesh.protocol.rules.identity import peer_id_from_public_key
        from thinkmesh.protocol.keys.keystore import read_binding

        coordinator_peer = peer_id_from_public_key(read_binding(keys["coordinator"]).ed25519_public_key)
        for name in STRATEGIES:
            write_config(node_config(
                coordinator_peer_id=coordinator_peer, bootstrap=maddrs, base_model=base, data_dir=root / name,
                key_dir=keys[name], password_file=None, strategy=name, port_file=root / f"{name}.port", plan=plan,
                chain=None, run_id=f"bench-{mode}",
                overrides={"round": {"compression": mode, "sync_interval_s": 10.0}},
            ), root / f"{name}.toml")  # fmt: skip
            log = open(root / f"{name}.log", "ab")
            procs.append(subprocess.Popen([sys.executable, "-m", "thinkmesh.protocol.cli.main", "node", "run",
                                           "--config", str(root / f"{name}.toml")], env=env, stdout=log, stderr=log,
                                          start_new_session=True))

        def poll():
            status = _status(root / "coordinator.port")
            nodes = {name: _status(root / f"{name}.port") for name in STRATEGIES}
            timeline.sample(status, nodes)
            return status is not None and status["phase"] == "done" and all(nodes.values()) and (status, nodes)

        status, nodes = _wait(poll, 1200, every=SAMPLE_S)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
    records = status["rounds"]
    return {
        "bytes_per_round": sum(c["upload_bytes"] for r in records for c in r["contributors"]) / len(records),
        "gradient_bytes_per_round": sum(c["gradient_bytes"] for r in records for c in r["contributors"]) / len(records),
        "accuracy_before": status["evals"][0]["accuracy"],
        "accuracy": status["evals"][-1]["accuracy"],
        "contributions": sum(len(r["contributors"]) for r in records),
        "timing": where_time_goes(status, nodes, timeline),
    }


def run_local(root: Path, base: Path, rounds: int, eval_prompts: int, work: Workload) -> dict:
    """`thinkmesh train local` on the mesh's total work: one step per round, all nodes' prompts."""
    run_dir = root / "local"
    argv = [sys.executable, "-m", "thinkmesh.protocol.cli.main", "train", "local", "--model", str(base),
            "--run-dir", str(run_dir), "--task", TASK, "--difficulty", str(DIFFICULTY), "--template", work.template,
            "--strategy", "grpo", "--steps", str(rounds), "--prompts-per-step", str(work.prompts * len(STRATEGIES)),
            "--group-size", str(work.group), "--max-new-tokens", str(work.max_tokens), "--lr", str(work.lr), "--warmup-steps", "1",
            "--eval-every", "1", "--eval-tasks", str(eval_prompts), "--checkpoint-every", str(rounds), "--threads", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    started = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process_s = time.monotonic() - started
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [m for m in lines if m["kind"] == "eval"]
    steps = [m for m in lines if m["kind"] == "train"]
    return {
        "seconds": evals[-1]["elapsed_s"] - evals[0]["elapsed_s"],  # steps 1..R and their evals, as the mesh's rounds
        "process_s": round(process_s, 2),
        "rollout_s": round(sum(m["rollout_s"] for m in steps), 2),
        "update_s": round(sum(m["update_s"] for m in steps), 2),
        "accuracy_before": evals[0]["accuracy"],
        "accuracy": evals[-1]["accuracy"],
    }


def _wait(predicate, timeout: float, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(every)
    raise TimeoutError("benchmark mesh did not finish in time")


def std_error(accuracy: float, n: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="none,fp16,uniform8,blockwise8")
    parser.add_argument("--eval-prompts", type=int, default=EVAL_PROMPTS)
    parser.add_argument("--model", choices=("tiny", "micro"), default="tiny",
                        help="tiny: the devnet's default profile (1.6M parameters); micro: 82k, minutes faster")
    parser.add_argument("--lr", type=float, default=None, help="the aggregation's (and train local's) AdamW lr")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the cold-started base model is kept")
    args = parser.parse_args()
    from thinkmesh.devnet.layout import default_cache_dir
    from thinkmesh.devnet.model_cache import ensure_model
    from thinkmesh.protocol.keys.keystore import create_keys

    work = workload(args.model)
    if args.lr is not None:
        work = dataclasses.replace(work, lr=args.lr)
    model = ensure_model(work.recipe, args.cache_dir or default_cache_dir())
    with tempfile.TemporaryDirectory(prefix="thinkmesh-bench-") as tmp:
        root = Path(tmp)
        keys = {}
        for name in ("coordinator", *STRATEGIES):
            create_keys(root / "keys" / name, PASSWORD, kdf="light")
            keys[name] = root / "keys" / name
        results = {}
        for mode in args.modes.split(","):
            (root / mode).mkdir()
            results[mode] = run_mesh(root / mode, model.path, keys, mode, args.rounds, args.eval_prompts, work)
            print(f"{mode}: {json.dumps(results[mode])}", file=sys.stderr, flush=True)
        local = run_local(root, model.path, args.rounds, args.eval_prompts, work)
        print(f"local: {json.dumps(local)}", file=sys.stderr, flush=True)
    reference = results.get("none") or next(iter(results.values()))
    n = args.eval_prompts
    report = {
        "bench": "mesh", "nodes": len(STRATEGIES), "rounds": args.rounds,
        "work": {"task": f"{TASK}-{DIFFICULTY}", "template": work.template, "prompts_per_node": work.prompts,
                 "group_size": work.group, "max_new_tokens": work.max_tokens, "lr": work.lr, "model": args.model,
                 "base_model": model.path.name, "coldstart_s": round(model.built_s, 1)},
        "bytes_per_round": {m: r["bytes_per_round"] for m, r in results.items()},
        "bytes_ratio_vs_none": {m: round(r["bytes_per_round"] / reference["bytes_per_round"], 4)
                                for m, r in results.items()},
        "gradient_bytes_per_round": {m: r["gradient_bytes_per_round"] for m, r in results.items()},
        "accuracy": {m: r["accuracy"] for m, r in results.items()},
        "accuracy_std_error": {m: round(std_error(r["accuracy"], n), 4) for m, r in results.items()},
        "accuracy_before": reference["accuracy_before"],
        "heldout_size": n,
        "local_accuracy": local["accuracy"],
        "time_ratio_vs_local": round(reference["timing"]["round_s"] / local["seconds"], 2),
        "mesh_seconds": reference["timing"]["round_s"],
        "local_seconds": round(local["seconds"], 2),
        "local": local,
        "where_mesh_time_goes": {m: r["timing"] for m, r in results.items()},
        "note": "mesh_seconds: announce (or, in round 1, the last node up) -> new version evaluated and checkpointed, "
                "summed over rounds ('none' mode); "
                "local_seconds: `thinkmesh train local` from after its step-0 eval to its last eval (same steps, "
                "prompts, group, tokens, evals). Node figures are means over the 3 nodes, summed over rounds: "
                "before_work = announcement poll + model fetch, waiting_for_slowest = done until the round closed; "
                "all 4 processes share this machine's CPUs.",
    }
    report["codec_bytes_ratio_tiny_model"] = codec_bytes_ratio()
    print(json.dumps(report))


def codec_bytes_ratio() -> dict[str, float]:
    """Gradient bytes per mode over fp32 for the devnet's default `tiny` shape (1.6M parameters),
    random gradients through the nodes' codec: the codec's share of the ratio, without samples,
    whichever `--model` the mesh ran."""
    import torch

    from thinkmesh.node.model.tiny_model import TinyModelSpec, qwen2_config
    from thinkmesh.protocol.rules.gradient_codec import encode_gradient
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen2_config(TinyModelSpec()))
    gradient = {name: torch.randn_like(p) * 1e-3 for name, p in model.named_parameters()}
    sizes = {mode: encode_gradient(gradient, mode).nbytes for mode in ("none", "fp16", "uniform8", "blockwise8")}
    return {mode: round(size / sizes["none"], 4) for mode, size in sizes.items()}


if __name__ == "__main__":
    main()
