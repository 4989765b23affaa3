"""`thinkmesh serve` under load against `model.generate` in one process, on the same model.

The server is the real command (`thinkmesh serve`, its own process, one torch thread unless
`--threads`); clients in this process send streaming completions (same prompt, distinct seeds,
temperature 1, `--max-tokens` each) at 1, 4 and 16 concurrent clients, each client `--requests`
requests back to back. Per level: tokens/s over all clients (completion tokens from each
stream's usage / wall time of the round) and time to first token (send -> first chunk carrying a
token; mean and p50). The reference is transformers' `model.generate` in this process (same
model, threads, sampling and max new tokens), a batch as large as the level's client count:
its tokens/s (tokens up to each row's EOS / time) and its time to first token (a generate of one
new token). For where the server's time goes, `rollout_engine` is the rollout engine alone (what
the server runs: public streams, float64 draws) at the same batch sizes. Server, reference and
engine rounds alternate (`--rounds`), and each figure is the median over rounds, the ratios
(server / model.generate) the median of each round's ratio: all measured in one run, on one
machine, so load that drifts during the run hits both sides alike.

    .venv/bin/python bench/serve.py                    # CPU, the devnet's tiny model (built in a temp dir)
    .venv/bin/python bench/serve.py --device cuda
The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LEVELS = (1, 4, 16)
PROMPT = "User: What is 12+30? Think step by step.\nAssistant:"


def start_server(model_dir: Path, args, home: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "thinkmesh.protocol.cli.main", "serve", "--model", str(model_dir), "--port", "0",
               "--device", args.device, "--threads", str(args.threads), "--max-batch", "16",
               "--max-tokens-limit", str(args.max_tokens), "--identity", str(home / "serve.key")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events: dict[str, dict] = {}
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                events[event["event"]] = event
                if event["event"] == "ready":
                    ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(180):
        process.kill()
        raise SystemExit("bench/serve.py: `thinkmesh serve` did not become ready within 180 s")
    return process, events["listening"]["url"]


async def one_request(session, url: str, seed: int, max_tokens: int) -> tuple[float, int, float]:
    """(time to first token, completion tokens, total time) of one streamed completion."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed, "stream": True}
    started = time.perf_counter()
    first, tokens = None, 0
    async with session.post(url + "/v1/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if first is None and '"choices": [{' in line:  # the first chunk that carries a token
                first = time.perf_counter() - started
            if '"usage"' in line:  # parse only the last chunk: the clients share the server's cores
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return first if first is not None else float("nan"), tokens, time.perf_counter() - started


async def server_level(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def client(index: int) -> list:
            return [await one_request(session, url, index * 1000 + r, max_tokens) for r in range(requests)]

        await one_request(session, url, -1, 4)  # warm-up
        started = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - started
    ttfts = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"requests": len(results), "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_mean_s": statistics.mean(ttfts), "ttft_p50_s": statistics.median(ttfts)}


def reference_level(model, tokenizer, batch: int, repeats: int, max_tokens: int, device: str) -> dict:
    import torch

    prompt = tokenizer([PROMPT] * batch, return_tensors="pt", padding=True).to(device)
    common = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": tokenizer.eos_token_id}

    def timed(new_tokens: int) -> tuple[float, int]:
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=new_tokens, **common)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        generated = out[:, prompt["input_ids"].shape[1]:].tolist()
        count = sum(row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
                    for row in generated)
        return elapsed, count

    timed(4)  # warm-up
    ttfts = [timed(1)[0] for _ in range(repeats)]
    runs = [timed(max_tokens) for _ in range(repeats)]
    return {"batch": batch, "tokens_per_s": sum(c for _, c in runs) / sum(t for t, _ in runs),
            "ttft_mean_s": statistics.mean(ttfts)}


def engine_level(model, tokenizer, batch: int, repeats: int, max_tokens: int) -> dict:
    """The rollout engine alone (what the server runs), for where the server's time goes."""
    from thinkmesh.protocol.rules.receipts import receipt_row_key
    from thinkmesh.protocol.rules.rollout import SamplingSettings, generate
    from thinkmesh.protocol.rules.sampling import stop_rule_for

    prompt = tokenizer(PROMPT)["input_ids"]
    settings, stop = SamplingSettings(1.0, 1.0, max_tokens), stop_rule_for(tokenizer, ())
    elapsed = tokens = 0
    for repeat in range(repeats):
        keys = [receipt_row_key(repeat.to_bytes(32, "big"), row) for row in range(batch)]
        started = time.perf_counter()
        out = generate(model, [prompt] * batch, settings, stop, tokenizer.pad_token_id, tokenizer=tokenizer, keys=keys)
        elapsed += time.perf_counter() - started
        tokens += sum(len(c.token_ids) for c in out)
    return {"batch": batch, "tokens_per_s": tokens / elapsed}


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="a model directory (default: a fresh tiny model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and reference alike")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=3, help="server/reference/engine rounds per level, interleaved")
    args = parser.parse_args()

    import torch

    from thinkmesh.node.model.model_dir import load_model, load_tokenizer
    from thinkmesh.node.model.tiny_model import init_model_dir

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        work = Path(work)
        model_dir = Path(args.model_dir) if args.model_dir else work / "tiny"
        if not args.model_dir:
            init_model_dir(model_dir)
        torch.set_num_threads(args.threads)
        model, tokenizer = load_model(model_dir, args.device), load_tokenizer(model_dir)
        params = sum(p.numel() for p in model.parameters())
        process, url = start_server(model_dir, args, work)
        levels = {}
        try:
            for clients in LEVELS:  # rounds interleaved, so load that drifts hits all three alike
                rounds = [(asyncio.run(server_level(url, clients, args.requests, args.max_tokens)),
                           reference_level(model, tokenizer, clients, 2, args.max_tokens, args.device),
                           engine_level(model, tokenizer, clients, 2, args.max_tokens)) for _ in range(args.rounds)]
                server, reference, engine = ([r[i] for r in rounds] for i in range(3))
                levels[str(clients)] = {
                    "server": {"tokens_per_s": median_of(server, "tokens_per_s"),
                               "ttft_mean_s": median_of(server, "ttft_mean_s"),
                               "ttft_p50_s": median_of(server, "ttft_p50_s"),
                               "requests_per_round": server[0]["requests"]},
                    "model_generate": {"tokens_per_s": median_of(reference, "tokens_per_s"),
                                       "ttft_mean_s": median_of(reference, "ttft_mean_s")},
                    "rollout_engine": {"tokens_per_s": median_of(engine, "tokens_per_s")},
                    "server_over_model_generate": {
                        "tokens_per_s": statistics.median(s["tokens_per_s"] / r["tokens_per_s"] for s, r, _ in rounds),
                        "ttft": statistics.median(s["ttft_mean_s"] / r["ttft_mean_s"] for s, r, _ in rounds)},
                }
        finally:
            process.terminate()
            process.wait(30)
    print(json.dumps({"model_parameters": params, "device": args.device, "threads": args.threads,
                      "max_tokens": args.max_tokens, "rounds": args.rounds, "cpu_count": os.cpu_count(),
                      "load_average": os.getloadavg(), "clients": levels}))


if __name__ == "__main__":
    main()
