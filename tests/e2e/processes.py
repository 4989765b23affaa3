"""The roles an end-to-end test starts: each in a process group of its own (the daemon, its DHT
process and their p2pd), so one signal reaches all of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A loopback TCP port free now (a role bound to it later may, rarely, lose a race for it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_groups(procs: dict[str, subprocess.Popen], grace_s: float = 15) -> None:
    """SIGTERM to each process group, SIGKILL to one still there after `grace_s`; empties `procs`."""
    for proc in procs.values():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
        except ProcessLookupError:
            pass
    procs.clear()
