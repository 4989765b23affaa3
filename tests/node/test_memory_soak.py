"""A long-running node keeps flat RAM: 50 rounds of the daemon's own per-round work in one process."""

from __future__ import annotations

import gc
import json
import os

import pytest
import torch

ROUNDS = 50
WINDOW = 10  # RSS moves +-3 MiB round to round (allocator pools): compare the peaks of windows
# Allowed growth from the peak of rounds 6-15 to the peak of rounds 41-50. Measured here: +0.1 MiB
# as the node stands; +3.75 MiB when each round's contribution (~100 KiB encoded) is kept alive.
RSS_GROWTH_BOUND_MB = 3.0


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def soak_daemon(tmp_path):
    """A `NodeDaemon` with its model and tokenizer in place, nothing started (no DHT, no chain)."""
    from tests.verification_world import make_model
    from thinkmesh.node.config import NodeConfig
    from thinkmesh.node.work.daemon import NodeDaemon
    from thinkmesh.node.model.tokenizer import build_tokenizer
    from thinkmesh.protocol.rules.identity import NodeIdentity

    coordinator = NodeIdentity.from_seed(b"\xc0" * 32)
    config = NodeConfig(
        coordinator_peer_id=coordinator.peer_id, base_model=tmp_path / "model", data_dir=tmp_path / "data",
        identity={"key_dir": tmp_path / "keys"},
        network={"initial_peers": [f"/ip4/127.0.0.1/tcp/1/p2p/{coordinator.peer_id}"]},
        strategy={"preset": "dapo", "group_size": 4, "max_new_tokens": 10},
    )
    daemon = NodeDaemon(config, NodeIdentity.from_seed(b"\x01" * 32))
    daemon.model, daemon.tokenizer = make_model(), build_tokenizer()
    return daemon, coordinator


def one_round(daemon, coordinator, round_id: int) -> dict:
    """`take_part` without the network: `_work`, the upload's encoding, the history, /status."""
    from tests.verification_world import announce
    from thinkmesh.protocol.rules.messages import encode_message

    announcement = announce(coordinator, daemon.model, round_id, round_id.to_bytes(32, "big"), prompts=2)
    summary, contribution = daemon._work(announcement)
    body = encode_message(contribution)
    daemon.history.append({"round_id": round_id, "upload_bytes": len(body),
                           "gradient_bytes": contribution.gradient.nbytes, **summary})
    return json.loads(json.dumps(daemon.status(), default=str))


@pytest.mark.timeout(150)
def test_fifty_rounds_of_node_work_keep_rss_flat(tmp_path):
    from thinkmesh.node.work.daemon import HISTORY_LIMIT

    torch.set_num_threads(1)
    daemon, coordinator = soak_daemon(tmp_path)
    rss = []
    for round_id in range(1, ROUNDS + 1):
        status = one_round(daemon, coordinator, round_id)
        gc.collect()
        rss.append(rss_bytes())
    growth_mb = (max(rss[-WINDOW:]) - max(rss[5: 5 + WINDOW])) / 2**20
    assert growth_mb < RSS_GROWTH_BOUND_MB, [round(r / 2**20, 1) for r in rss]
    assert status["memory"]["oom_events"] == 0 and status["memory"]["last_round"]["rollout"] == 8 and 1 <= status["memory"]["last_round"]["micro"] <= 8
    assert status["history"][-1]["round_id"] == ROUNDS and status["history"][-1]["samples"] == 8
    assert daemon.history.maxlen == HISTORY_LIMIT
