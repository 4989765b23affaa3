"""Protocol-layer throughput: `python bench/protocol.py` prints one JSON object.

- encode/decode MB/s of a signed Contribution carrying a 10M-parameter fp16 gradient (20 MB)
  and 64 samples of 128 tokens, decoding with every strictness check on;
- Ed25519 sign/verify per second over a 1 KiB payload in a signing domain;
- time to build the Merkle root of 10,000 sample hashes (keccak256, OpenZeppelin layout).
Each figure is the best of several repeats, to damp noise on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from thinkmesh.protocol.rules.hashing import keccak256

from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.identity import NodeIdentity, SigningDomain, verify_signature
from thinkmesh.protocol.rules.merkle import merkle_root
from thinkmesh.protocol.rules.messages import (
    Contribution, GradientPayload, Sample, TensorBlob, decode_message, sample_hash, samples_root,
    sign_message,
)
from thinkmesh.protocol.rules.rewards import RewardBreakdown
from thinkmesh.protocol.rules.strategies import PRESETS


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_contribution(identity: NodeIdentity, params: int) -> Contribution:
    chunk = params // 10
    tensors = tuple(TensorBlob(f"layer{i:02d}.weight", os.urandom(chunk * 2)) for i in range(10))
    samples = tuple(
        Sample(prompt_index=i // 8, completion_ids=tuple(range(i, i + 128)),
               logprobs=tuple(-0.01 * t for t in range(128)), rewards=RewardBreakdown(1.0, 1.0, 1.0, 0.0))
        for i in range(64)
    )
    contribution = Contribution(
        chain_id=31337, run_id="bench", round_id=1, node_key=identity.public_key,
        model_hash=b"\x01" * 32, strategy=PRESETS["dapo"], samples=samples,
        samples_root=samples_root(samples), gradient=GradientPayload("fp16", tensors),
    )
    return sign_message(contribution, identity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    identity = NodeIdentity.generate()
    contribution = make_contribution(identity, args.params)
    data = encode_message(contribution)
    megabytes = len(data) / 1e6
    encode_s = best_of(args.repeats, lambda: encode_message(contribution))
    decode_s = best_of(args.repeats, lambda: decode_message(data, Contribution))

    domain = SigningDomain(31337, "bench", "contribution", 1)
    payload = os.urandom(1024)
    signature = identity.sign(domain, payload)
    n = 2000
    sign_s = best_of(3, lambda: [identity.sign(domain, payload) for _ in range(n)])
    verify_s = best_of(3, lambda: [verify_signature(identity.public_key, domain, payload, signature) for _ in range(n)])

    leaves = [keccak256(i.to_bytes(8, "big")) for i in range(10_000)]
    merkle_s = best_of(3, lambda: merkle_root(leaves))
    hash_s = best_of(3, lambda: [sample_hash(s) for s in contribution.samples])

    print(json.dumps({
        "contribution_bytes": len(data),
        "gradient_params": args.params,
        "encode_mb_per_s": round(megabytes / encode_s, 1),
        "decode_mb_per_s": round(megabytes / decode_s, 1),
        "sign_per_s": round(n / sign_s),
        "verify_per_s": round(n / verify_s),
        "merkle_root_10k_leaves_ms": round(merkle_s * 1000, 2),
        "sample_hash_per_s": round(len(contribution.samples) / hash_s),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
