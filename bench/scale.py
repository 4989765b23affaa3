"""Adapter rounds at scale: bytes per node per round, peak memory and one settled round's wall time.

For each model shape (the devnet's tiny Qwen2, and Qwen2.5-0.5B's exact architecture, randomly
initialised by `thinkmesh model init --arch qwen2.5-0.5b`), runs a real mesh: anvil with the
deployed ledger, a coordinator with `[adapter]` (LoRA on every linear layer) and `[chain]`, and two
nodes (dapo and gspo, blockwise8), all separate processes talking through p2pd. Two rounds: the
first includes the first sync (the nodes hold the base locally, found by hash), the second is the
steady state. Reported per shape: upload bytes (the contribution) and download bytes (one adapter
version) per node per round, each also as a ratio of the full model's fp32 bytes; the peak RSS
(VmHWM) of the coordinator's and the nodes' main processes; the wall time of round 2 from its
announcement to its settlement transaction mined. Prints one JSON object.

    .venv/bin/python bench/scale.py                        # both shapes (the 0.5B takes minutes)
    .venv/bin/python bench/scale.py --shapes tiny --rank 8
"""

from __future__ import annotations

import argparse
import json
import os
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
    from thinkmesh.node.model.tiny_model import ARCHITECTURES, init_model_dir

    directory = cache / shape
    if not (directory / "config.json").exists():
        init_model_dir(directory, ARCHITECTURES[shape])
    return directory


def run_shape(shape: str, base: Path, root: Path, rank: int, max_new_tokens: int) -> dict:
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
        plan = RoundPlan(rounds=2, deadline_s=1800, close_when=len(NODES), prompts_per_node=1, min_peers=len(NODES),
                         eval_prompts=0, eval_max_new_tokens=max_new_tokens, group_size=2,
                         max_new_tokens=max_new_tokens, lr=1e-4, adapter_rank=rank)
        write_config(coordinator_config(
            base_model=base, data_dir=root / "coordinator", key_dir=root / "keys" / "coordinator", password_file=None,
            p2p_port=p2p_port, port_file=root / "coordinator.port", maddrs_file=root / "coordinator.maddrs", plan=plan,
            chain=chain, run_id="scale", overrides={"aggregation": {"rule": "mean"}, "round": {"start_delay_s": 0.0}},
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
            announced = time.time()
            _wait(lambda: len(intents := journal.load()) == 2 and intents[-1].done, 3600, "round 2's settlement", procs)
            settled = time.time()
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
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        intents = journal.load()
        settled_rounds = [client.round(i.round_id).status.name for i in intents]
    full = status["base_bytes"]
    round_two = [h for n in nodes.values() for h in n["history"] if h["round_id"] == 2]
    upload = max(h["upload_bytes"] for h in round_two)
    fetched = [n["counters"]["model_bytes_fetched"] / n["counters"]["models_fetched"]
               for n in nodes.values() if n["counters"]["models_fetched"]]
    # A version whose update was zero (all-equal rewards in every group) keeps its hash and moves no
    # bytes; the figure is what a changed adapter version moves: its manifest's fp32 bytes, or the
    # measured wire bytes of a fetch where one happened (zlib-compressed), whichever is larger.
    from thinkmesh.protocol.rules.adapters import lora_parameter_count

    config = json.loads((base / "config.json").read_text())
    adapter_bytes = 4 * lora_parameter_count(config, rank, tuple(status["adapter"]["target_modules"]))
    download = max([adapter_bytes, *fetched])
    record2 = status["rounds"][1]
    return {
        "shape": shape, "full_model_fp32_bytes": full, "adapter": status["adapter"],
        "adapter_params": adapter_bytes // 4, "adapter_fetches_measured_bytes": [int(f) for f in fetched],
        "upload_bytes_per_node_round": upload, "upload_ratio": round(upload / full, 6),
        "download_bytes_per_node_round": int(download), "download_ratio": round(download / full, 6),
        "base_bytes_fetched": {n: s["counters"]["base_bytes_fetched"] for n, s in nodes.items()},
        "peak_rss_mb": {"coordinator": rss["coordinator"], "nodes": max(rss[n] for n, _ in NODES)},
        "round_wall_s": round(settled - announced, 1), "round_collect_to_commit_s": record2["duration_s"],
        "node_work_s": max(h["work_s"] for h in round_two), "setup_s": round(announced - started, 1),
        "accepted_round_2": len(record2["contributors"]), "settled_on_chain": settled_rounds,
        "settings": {"prompts_per_node": 1, "group_size": 2, "max_new_tokens": max_new_tokens, "rank": rank,
                     "compression": "blockwise8", "nodes": len(NODES), "torch_threads": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="tiny,qwen2.5-0.5b")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "thinkmesh-bench-models")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="thinkmesh-scale-") as tmp:
        for shape in args.shapes.split(","):
            base = model_dir(shape, args.cache)
            result = run_shape(shape, base, Path(tmp) / shape, args.rank, args.max_new_tokens)
            result["bars"] = {"upload_le_1pct": result["upload_ratio"] <= 0.01,
                              "download_le_1pct": result["download_ratio"] <= 0.01,
                              "round_settled": result["settled_on_chain"] == ["SETTLED", "SETTLED"]}
            results[shape] = result
            print(json.dumps({shape: result}), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "scale", "machine": f"{os.cpu_count()} cores, CPU", "results": results}))


if __name__ == "__main__":
    main()
