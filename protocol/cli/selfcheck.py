"""`thinkmesh selfcheck`: the protocol's worked examples, run on this machine.

A node operator runs it to see that this install computes the protocol exactly as everyone else
does: a canonical encoding, signatures bound to their domain, Merkle proofs that OpenZeppelin
accepts (the shared vectors), deterministic tasks and rule-based rewards. Each check is a pure
computation, so a failure means a broken install, not a flaky network.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from thinkmesh.protocol.rules.hashing import keccak256

from thinkmesh.protocol.rules.encoding import encode_message
from thinkmesh.protocol.rules.errors import ProtocolError, SignatureError
from thinkmesh.protocol.rules.identity import NodeIdentity
from thinkmesh.protocol.rules.merkle import MerkleTree, verify_proof
from thinkmesh.protocol.rules.messages import RoundAnnouncement, decode_message, sign_message, verify_message
from thinkmesh.protocol.rules.rewards import score_completion
from thinkmesh.protocol.rules.tasks import FAMILIES, TaskSpec, generate_task



def _signed_announcement() -> RoundAnnouncement:
    coordinator = NodeIdentity.from_seed(b"\x07" * 32)
    announcement = RoundAnnouncement(
        chain_id=31337, run_id="selfcheck", round_id=1, model_version=0, model_hash=b"\x11" * 32,
        task=TaskSpec("countdown", 2), prompts_per_node=4, seed=b"\x22" * 32,
        deadline_ms=1_700_000_000_000, coordinator_key=coordinator.public_key,
    )
    return sign_message(announcement, coordinator)


def check_encoding() -> str:
    message = _signed_announcement()
    data = encode_message(message)
    assert decode_message(data, RoundAnnouncement) == message
    try:
        decode_message(data + b"\x00", RoundAnnouncement)
    except ProtocolError:
        pass
    else:
        raise AssertionError("trailing bytes were accepted")
    return f"{len(data)}-byte announcement round-trips; trailing bytes refused"


def check_signatures() -> str:
    message = _signed_announcement()
    verify_message(message, message.coordinator_key)
    try:
        verify_message(dataclasses.replace(message, round_id=2), message.coordinator_key)
    except SignatureError:
        return "signature verifies; the same signature fails for another round"
    raise AssertionError("a signature replayed into another round verified")


def check_merkle() -> str:
    items = [keccak256(bytes([i])) for i in range(7)]
    tree = MerkleTree.from_items(items)
    assert all(verify_proof(tree.root, items[i], tree.proof(i)) for i in range(7))
    assert not verify_proof(tree.root, keccak256(b"x"), tree.proof(0))
    return f"7-leaf tree root 0x{tree.root.hex()[:16]}..., all proofs verify"


def check_tasks_and_rewards() -> str:
    lines = []
    for family in FAMILIES:
        task = generate_task(TaskSpec(family, 2), b"\x33" * 32, 5)
        assert task == generate_task(TaskSpec(family, 2), b"\x33" * 32, 5)
        good = f"<think>{task.trace}</think> <answer>{task.solution}</answer>"
        reward = score_completion(task, good, num_tokens=len(good), max_tokens=4096)
        assert reward.accuracy == 1.0 and reward.format == 1.0, (family, reward)
        hidden = f"<think>{task.solution}</think> <answer>no idea</answer>"
        assert score_completion(task, hidden, num_tokens=len(hidden), max_tokens=4096).accuracy == 0.0
        lines.append(family)
    return "deterministic tasks; correct answers score 1, answers hidden in <think> score 0: " + ", ".join(lines)


CHECKS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("canonical encoding", check_encoding),
    ("domain-separated signatures", check_signatures),
    ("Merkle proofs", check_merkle),
    ("tasks and rewards", check_tasks_and_rewards),
)


def run_selfcheck(say: Callable[[str], None]) -> int:
    """Runs every check, reports each, returns the number that failed."""
    failures = 0
    for name, check in CHECKS:
        start = time.perf_counter()
        try:
            detail = check()
            say(f"ok    {name:<30} {detail} ({(time.perf_counter() - start) * 1000:.0f} ms)")
        except Exception as exc:  # a self-check reports every failure rather than stopping at one
            failures += 1
            say(f"FAIL  {name:<30} {type(exc).__name__}: {exc}")
    say(f"{len(CHECKS) - failures} passed, {failures} failed")
    return failures
