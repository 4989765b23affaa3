"""Mesh benchmark: 3 nodes x 3 rounds on loopback per gradient compression mode.

    .venv/bin/python bench/mesh.py [--rounds 3] [--modes none,fp16,uniform8,blockwise8]

Per mode, a real coordinator and three real node processes (grpo, dapo, gspo) over p2pd train
the tiny model; from the coordinator's round records it takes the upload bytes per round (the
signed contributions as sent: samples + gradient) and the held-out accuracy after the last
round. `time_ratio_vs_local` divides the mesh's summed round wall time (announce -> new
version, for the `none` mode) by the same work done in one process with no network: the three
strategies' rollouts and gradients one after another, the aggregation and the AdamW step.
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PASSWORD = "bench-mesh"
STRATEGIES = ("grpo", "dapo", "gspo")
PROMPTS, GROUP, MAX_TOKENS = 2, 4, 12


def _status(port_file: Path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{int(port_file.read_text())}/status", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _wait(predicate, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise TimeoutError("benchmark mesh did not finish in time")


def run_mesh(root: Path, base: Path, keys: dict, mode: str, rounds: int) -> dict:
    env = dict(os.environ, THINKMESH_KEY_PASSWORD=PASSWORD, OMP_NUM_THREADS="1")
    (root / "coordinator.toml").write_text(f"""
run_id = "bench-{mode}"
base_model = "{base}"
data_dir = "{root / 'coordinator'}"
[identity]
key_dir = "{keys['coordinator']}"
[network]
maddrs_file = "{root / 'maddrs'}"
[round]
rounds = {rounds}
deadline_s = 120
close_when = 3
min_peers = 3
prompts_per_node = {PROMPTS}
[aggregation]
lr = 0.001
[eval]
prompts = 8
max_new_tokens = 16
[observability]
port_file = "{root / 'coordinator.port'}"
console = false
""")
    procs = []
    try:
        log = open(root / "coordinator.log", "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "thinkmesh.devnet.cli", "coordinator", "run", "--config",
                                       str(root / "coordinator.toml")], env=env, stdout=log, stderr=log,
                                      start_new_session=True))
        _wait(lambda: (root / "maddrs").exists(), 120)
        maddrs = [m for m in (root / "maddrs").read_text().split() if m]
        from thinkmesh.protocol.keystore import read_binding
        from thinkmesh.protocol.identity import peer_id_from_public_key

        coordinator_peer = peer_id_from_public_key(read_binding(keys["coordinator"]).ed25519_public_key)
        for name in STRATEGIES:
            (root / f"{name}.toml").write_text(f"""
run_id = "bench-{mode}"
coordinator_peer_id = "{coordinator_peer}"
base_model = "{base}"
data_dir = "{root / name}"
[identity]
key_dir = "{keys[name]}"
[network]
initial_peers = {json.dumps(maddrs)}
[strategy]
preset = "{name}"
group_size = {GROUP}
max_new_tokens = {MAX_TOKENS}
[round]
poll_s = 0.3
compression = "{mode}"
[observability]
console = false
""")
            log = open(root / f"{name}.log", "ab")
            procs.append(subprocess.Popen([sys.executable, "-m", "thinkmesh.devnet.cli", "node", "run",
                                           "--config", str(root / f"{name}.toml")], env=env, stdout=log, stderr=log,
                                          start_new_session=True))
        status = _wait(lambda: (s := _status(root / "coordinator.port")) and s["phase"] == "done" and s, 900)
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
        "accuracy": status["evals"][-1]["accuracy"],
        "round_seconds": sum(r["duration_s"] for r in records),
        "contributions": sum(len(r["contributors"]) for r in records),
    }


def run_local(base: Path, rounds: int) -> float:
    """The mesh's compute in one process: per round, 3 strategies' rollout+gradient, mean, AdamW step."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from thinkmesh.node.contribution_step import samples_and_gradients
    from thinkmesh.protocol.identity import NodeIdentity
    from thinkmesh.protocol.scoring import load_tokenizer
    from thinkmesh.protocol.messages import RoundAnnouncement
    from thinkmesh.protocol.strategies import strategy_from_name
    from thinkmesh.protocol.tasks import TaskSpec

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    nodes = [NodeIdentity.generate() for _ in STRATEGIES]
    started = time.perf_counter()
    for round_id in range(1, rounds + 1):
        announcement = RoundAnnouncement(
            chain_id=1, run_id="local", round_id=round_id, model_version=round_id - 1, model_hash=b"\x00" * 32,
            task=TaskSpec("arithmetic", 1), prompts_per_node=PROMPTS, seed=round_id.to_bytes(32, "big"),
            deadline_ms=0, coordinator_key=b"\x00" * 32)
        grads = []
        for node, name in zip(nodes, STRATEGIES):
            base_spec = strategy_from_name(name)
            spec = dataclasses.replace(base_spec, group_size=GROUP, max_new_tokens=MAX_TOKENS,
                                       overlong_buffer=MAX_TOKENS // 5 if base_spec.overlong_buffer else 0)
            grads.append(samples_and_gradients(model, tokenizer, announcement, node.public_key, spec)[1])
        for name, param in model.named_parameters():
            param.grad = sum(g[name] for g in grads) / len(grads)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="none,fp16,uniform8,blockwise8")
    args = parser.parse_args()
    from thinkmesh.node.tiny_model import init_model_dir
    from thinkmesh.protocol.keystore import create_keys

    with tempfile.TemporaryDirectory(prefix="thinkmesh-bench-") as tmp:
        root = Path(tmp)
        base = root / "base"
        init_model_dir(base)
        keys = {}
        for name in ("coordinator", *STRATEGIES):
            create_keys(root / "keys" / name, PASSWORD, kdf="light")
            keys[name] = root / "keys" / name
        results = {}
        for mode in args.modes.split(","):
            (root / mode).mkdir()
            results[mode] = run_mesh(root / mode, base, keys, mode, args.rounds)
            print(f"{mode}: {json.dumps(results[mode])}", file=sys.stderr, flush=True)
        local_s = run_local(base, args.rounds)
    reference = results.get("none") or next(iter(results.values()))
    report = {
        "bench": "mesh", "nodes": 3, "rounds": args.rounds,
        "bytes_per_round": {m: r["bytes_per_round"] for m, r in results.items()},
        "bytes_ratio_vs_none": {m: r["bytes_per_round"] / reference["bytes_per_round"] for m, r in results.items()},
        "accuracy": {m: r["accuracy"] for m, r in results.items()},
        "mesh_round_seconds": {m: r["round_seconds"] for m, r in results.items()},
        "local_seconds": local_s,
        "time_ratio_vs_local": reference["round_seconds"] / local_s,
        "note": "local = the same rollouts, gradients, mean and AdamW step in one process (no p2p, no eval, "
                "no serialization); the mesh's extra time is gradient encoding, upload, the per-version "
                "held-out eval and checkpoint, model sync, and 3 processes sharing the CPU",
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
