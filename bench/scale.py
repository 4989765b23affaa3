"""Adapter rounds at scale: bytes per node per round, peak memory and one settled round's wall time.

For each model shape (the devnet's tiny Qwen2, and Qwen2.5-0.5B's exact architecture, randomly
initialised by `thinkmesh model init --arch qwen2.5-0.5b`), runs a real mesh: anvil with the
deployed ledger, a coordinator with `[adapter]` (LoRA on every linear layer) and `[chain]`, and two
nodes (dapo and gspo, blockwise8), all separate processes talking through p2pd. Two rounds: the
first includes the first sync (the nodes hold the base locally, found by hash), the second is the
steady state. Reported per shape: upload bytes (the contribution) and download bytes (one adapter
version) per node per round, each also as a ratio of the full model's fp32 bytes; the peak RSS
(VmHWM) of the coordinator's and the nodes' main processes; the wall time of round 2 from its
announcement to its settlement transaction mined; the 1-minute load average while it ran. Prints
one JSON object.

The download is measured where a changed adapter version moved: round 1's update changed the
adapter, and each node's log names the fetch of round 2's version with its wire bytes. The tiny
shape is the devnet's cold-started model (found in, or built into, the devnet's model cache) on
its own task family and round sizes, so its rewards differ within groups and the update is
nonzero. The 0.5B shape is randomly initialised behind a character tokenizer: every completion
scores the same (0.1, the language component alone), the update is zero, the version keeps its
hash and nothing moves. There the figure is computed (the adapter manifest's fp32 bytes, what a
changed version moves) and marked so (`download_measured: false`); the tiny shape's measured wire
bytes over its own computed bytes (`download_wire_over_manifest`) checks that computation.

    .venv/bin/python bench/scale.py                        # both shapes (the 0.5B takes minutes)
    .venv/bin/python bench/scale.py --shapes tiny --rank 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PASSWORD = "bench-scale"
NODES = (("n1", "dapo"), ("n2", "gspo"))
# The node's log line for one version fetched (node/work/daemon.py `sync_model`).
FETCH_LINE = re.compile(r"fetched model version (\d+) \(0x([0-9a-f]+), (\d+) bytes\)")


def round_sizes(shape: str, rank: int, max_new_tokens: int | None) -> dict:
    """The round's settings per shape. Tiny: the devnet's own profile with adapter rounds (its task
    family, template, group size, prompts and LoRA step size), where the cold-started model's
    rewards vary, and the coordinator's default contribution-value batch (8 prompts x 4). 0.5B: one
    prompt per node, groups of 2, short completions and a value batch of the same size (1 x 2): on
    a 2-core CPU the default value batch alone takes the 0.5B coordinator many minutes per round."""
    if shape == "tiny":
        from thinkmesh.devnet.profiles import profile_named

        profile = profile_named("tiny").with_adapter(rank)
        sizes = {"task_family": profile.task_family, "template": profile.recipe.coldstart.template,
                 "prompts_per_node": profile.prompts_per_node, "group_size": profile.group_size,
                 "max_new_tokens": profile.max_new_tokens, "lr": profile.lr, "value_prompts": 8, "value_group": 4}
    else:
        sizes = {"task_family": "arithmetic", "template": "r1", "prompts_per_node": 1, "group_size": 2,
                 "max_new_tokens": 8, "lr": 1e-4, "value_prompts": 1, "value_group": 2}
    if max_new_tokens is not None:
        sizes["max_new_tokens"] = max_new_tokens
    return sizes


def fetches(log: Path) -> list[tuple[int, str, int]]:
    """(version, hash prefix, wire bytes) of every model version a node's log says it fetched."""
    found = FETCH_LINE.findall(log.read_text(errors="replace")) if log.exists() else []
    return [(int(version), prefix, int(size)) for version, prefix, size in found]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(path: Path) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{int(path.read_text())}/status", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _wait(predicate, timeout: float, what: str, procs: dict):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def model_dir(shape: str, cache: Path) -> Path:
    """Tiny: the devnet's cold-started model (`devnet/model_cache.py`, built once if the cache lacks
    it). Other shapes: that architecture randomly initialised (`thinkmesh model init --arch`)."""
    from thinkmesh.node.model.tiny_model import ARCHITECTURES, init_model_dir

    if shape == "tiny":
        from thinkmesh.devnet.model_cache import ensure_model
        from thinkmesh.devnet.profiles import profile_named

        return ensure_model(profile_named("tiny").recipe, cache, progress=True).path
    directory = cache / shape
    if not (directory / "config.json").exists():
        init_model_dir(directory, ARCHITECTURES[shape])
    return directory


def run_shape(shape: str, base: Path, root: Path, rank: int, sizes: dict) -> dict:
    from thinkmesh.coordinator.settlement.round_settlement import SettlementJournal
    from thinkmesh.devnet.configs import ChainEndpoint, RoundPlan, coordinator_config, node_config, write_config
    from thinkmesh.devnet.anvil import Anvil
    from thinkmesh.protocol.chain.client import LedgerClient, deploy
    from thinkmesh.protocol.keys.keystore import create_keys
    from thinkmesh.protocol.chain.ledger import tokens

    root.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    env = dict(os.environ, THINKMESH_KEY_PASSWORD=PASSWORD, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    with Anvil(accounts=2) as anvil:
        keys = {name: create_keys(root / "keys" / name, PASSWORD, kdf="light") for name in ["coordinator", *dict(NODES)]}
        admin = anvil.accounts[0]
        deployment = deploy(anvil.rpc_url, admin.private_key, unbonding_delay_s=3600, min_stake=tokens(1),
                            coordinator=keys["coordinator"].evm_address)
        (root / "deployment.json").write_text(deployment.to_json())
        client = LedgerClient.connect(anvil.rpc_url, deployment, private_key=admin.private_key)
        client.mint(admin.address, tokens(1000))
        client.fund(tokens(1000))
        for name, unlocked in keys.items():
            anvil.rpc("anvil_setBalance", [unlocked.evm_address, hex(10**20)])
            if name != "coordinator":
                client.mint(unlocked.evm_address, tokens(50))
        p2p_port = _port()
        chain = ChainEndpoint(anvil.rpc_url, deployment.ledger, root / "deployment.json")
        plan = RoundPlan(rounds=2, deadline_s=1800, close_when=len(NODES), prompts_per_node=sizes["prompts_per_node"],
                         min_peers=len(NODES), eval_prompts=0, eval_max_new_tokens=sizes["max_new_tokens"],
                         group_size=sizes["group_size"], max_new_tokens=sizes["max_new_tokens"],
                         task_family=sizes["task_family"], template=sizes["template"], lr=sizes["lr"],
                         adapter_rank=rank)
        write_config(coordinator_config(
            base_model=base, data_dir=root / "coordinator", key_dir=root / "keys" / "coordinator", password_file=None,
            p2p_port=p2p_port, port_file=root / "coordinator.port", maddrs_file=root / "coordinator.maddrs", plan=plan,
            chain=chain, run_id="scale",
            overrides={"aggregation": {"rule": "mean"}, "round": {"start_delay_s": 0.0},
                       "eval": {"value_prompts": sizes["value_prompts"], "value_group": sizes["value_group"]}},
        ), root / "coordinator.toml")  # fmt: skip
        started = time.time()

        def start(name: str, argv: list[str]) -> None:
            log = open(root / f"{name}.log", "ab")
            procs[name] = subprocess.Popen([sys.executable, "-m", "thinkmesh.protocol.cli.main", *argv], env=env, stdout=log,
                                           stderr=log, start_new_session=True, cwd=root)

        try:
            start("coordinator", ["coordinator", "run", "--config", str(root / "coordinator.toml")])
            _wait(lambda: (root / "coordinator.maddrs").exists(), 1200, "the coordinator's multiaddrs", procs)
            maddrs = [m for m in (root / "coordinator.maddrs").read_text().split() if m]
            for name, preset in NODES:
                path = write_config(node_config(
                    coordinator_peer_id=keys["coordinator"].identity.peer_id, bootstrap=maddrs, base_model=base,
                    data_dir=root / name, key_dir=root / "keys" / name, password_file=None, strategy=preset,
                    port_file=root / (name + ".port"), plan=plan, chain=chain, run_id="scale",
                    overrides={"round": {"compression": "blockwise8", "upload_timeout_s": 1200, "sync_interval_s": 10.0},
                               "chain": {"stake": "20"}},
                ), root / f"{name}.toml")  # fmt: skip
                start(name, ["node", "run", "--config", str(path)])
            coordinator_port = root / "coordinator.port"
            journal = SettlementJournal(root / "coordinator" / "settlement")
            _wait(lambda: (s := _status(coordinator_port)) and s["round_id"] == 2 and s["phase"] == "collecting",
                  3600, "round 2's announcement", procs)
            announced, load_announced = time.time(), os.getloadavg()[0]
            _wait(lambda: len(intents := journal.load()) == 2 and intents[-1].done, 3600, "round 2's settlement", procs)
            settled, load_settled = time.time(), os.getloadavg()[0]
            status = _status(coordinator_port)
            nodes = {name: _status(root / f"{name}.port") for name, _ in NODES}
            rss = {name: _peak_rss_mb(proc.pid) for name, proc in procs.items()}
        except BaseException:
            for path in sorted(root.glob("*.log")):
                print(f"===== {path.name} =====\n{path.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            for proc in procs.values():
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:  # busy in a worker thread: not left running
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:
                    pass
        intents = journal.load()
        settled_rounds = [client.round(i.round_id).status.name for i in intents]
    full = status["base_bytes"]
    round_two = [h for n in nodes.values() for h in n["history"] if h["round_id"] == 2]
    upload = max(h["upload_bytes"] for h in round_two)
    from thinkmesh.protocol.rules.adapters import lora_parameter_count

    config = json.loads((base / "config.json").read_text())
    adapter_bytes = 4 * lora_parameter_count(config, rank, tuple(status["adapter"]["target_modules"]))
    record1, record2 = status["rounds"][0], status["rounds"][1]
    changed = record1["model_hash_after"] != record1["model_hash_before"]
    # Round 2's version is round 1's result: what each node fetched of it, from its log.
    wanted = record2["model_hash_before"]
    round_two_fetches = {name: [size for _, prefix, size in fetches(root / f"{name}.log") if wanted.startswith(prefix)]
                         for name, _ in NODES}
    measured = changed and all(round_two_fetches.values())
    if measured:
        download = max(max(sizes) for sizes in round_two_fetches.values())
        source = "measured: wire bytes of round 2's changed adapter version, fetched by each node"
    else:
        download = adapter_bytes
        source = ("computed: the adapter manifest's fp32 bytes (round 1's update was zero, so no changed version "
                  "moved; see the tiny shape's download_wire_over_manifest for the measured ratio)")
    return {
        "shape": shape, "full_model_fp32_bytes": full, "adapter": status["adapter"],
        "adapter_params": adapter_bytes // 4, "adapter_manifest_fp32_bytes": adapter_bytes,
        "upload_bytes_per_node_round": upload, "upload_ratio": round(upload / full, 6),
        "download_bytes_per_node_round": int(download), "download_ratio": round(download / full, 6),
        "download_measured": measured, "download_source": source,
        "round_1_update_changed_adapter": changed, "round_2_fetch_wire_bytes": round_two_fetches,
        "download_wire_over_manifest": round(download / adapter_bytes, 4) if measured else None,
        "all_version_fetches": {name: fetches(root / f"{name}.log") for name, _ in NODES},
        "mean_reward": {name: {h["round_id"]: round(h["mean_reward"], 4) for h in node["history"]}
                        for name, node in nodes.items()},
        "base_bytes_fetched": {n: s["counters"]["base_bytes_fetched"] for n, s in nodes.items()},
        "peak_rss_mb": {"coordinator": rss["coordinator"], "nodes": max(rss[n] for n, _ in NODES)},
        "round_wall_s": round(settled - announced, 1), "round_collect_to_commit_s": record2["duration_s"],
        "node_work_s": max(h["work_s"] for h in round_two), "setup_s": round(announced - started, 1),
        "load_avg_1m": {"round_2_announced": round(load_announced, 2), "round_2_settled": round(load_settled, 2)},
        "accepted_round_2": len(record2["contributors"]), "settled_on_chain": settled_rounds,
        "settings": {**sizes, "lr": round(sizes["lr"], 8), "rank": rank, "compression": "blockwise8",
                     "nodes": len(NODES), "torch_threads": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,qwen2.5-0.5b")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the shape's completion length")
    parser.add_argument("--cache", type=Path, default=None,
                        help="model cache (default: the devnet's, $THINKMESH_HOME/cache or .thinkmesh/cache)")
    args = parser.parse_args()
    from thinkmesh.devnet.layout import default_cache_dir

    cache = args.cache or default_cache_dir()
    results = {}
    with tempfile.TemporaryDirectory(prefix="thinkmesh-scale-") as tmp:
        for shape in args.shapes.split(","):
            base = model_dir(shape, cache)
            sizes = round_sizes(shape, args.rank, args.max_new_tokens)
            result = run_shape(shape, base, Path(tmp) / shape, args.rank, sizes)
            result["bars"] = {"upload_le_1pct": result["upload_ratio"] <= 0.01,
                              "download_le_1pct": result["download_ratio"] <= 0.01,
                              "round_settled": result["settled_on_chain"] == ["SETTLED", "SETTLED"]}
            results[shape] = result
            print(json.dumps({shape: result}), file=sys.stderr, flush=True)
    measured = [r["download_wire_over_manifest"] for r in results.values() if r["download_measured"]]
    print(json.dumps({"bench": "scale", "machine": f"{os.cpu_count()} cores, CPU", "bars_are_for": "qwen2.5-0.5b",
                      "download_wire_over_manifest_measured": measured, "results": results}))


if __name__ == "__main__":
    main()
