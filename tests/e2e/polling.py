"""Waiting on processes that offer no event to await (a port, a status file, a chain block)."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    """Returns `predicate()`'s first truthy value; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
