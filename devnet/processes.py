"""Child processes of a devnet: started with their own log files, watched, and stopped cleanly.

Each child runs in its own process group, so stopping it also stops what it started (a node's
p2pd daemon, for instance). Stopping is SIGTERM, a grace period, then SIGKILL: no orphan survives
`devnet up` returning, whether it ends normally, on Ctrl-C or on a child's death.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from thinkmesh.protocol.errors import ProtocolError

logger = logging.getLogger(__name__)


class DevnetError(ProtocolError):
    """Something the devnet cannot start or keep running, said so that the user can fix it."""


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab", buffering=0)
        try:
            self.popen = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        except OSError as exc:
            raise DevnetError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        if not self.popen or self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        # the group may hold grandchildren that outlived their parent
        _signal_group(self.popen.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessGroup:
    """The devnet's children, stopped in reverse start order."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(self, process: ManagedProcess) -> ManagedProcess:
        process.start()
        self.processes.append(process)
        return process

    def check_alive(self) -> None:
        """Raises DevnetError naming the first child that died, with the end of its log."""
        for process in self.processes:
            code = process.exit_code()
            if code is not None:
                raise DevnetError(
                    f"{process.name} exited with code {code}; the end of {process.log_path}:\n"
                    f"{process.log_tail()}"
                )

    def stop_all(self, grace_s: float = 10.0) -> None:
        for process in reversed(self.processes):
            process.stop(grace_s)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2, group: ProcessGroup | None = None):
    """Polls `condition()` until it returns a truthy value; raises DevnetError after `timeout_s`.

    Used only for things that offer no event to await (a port opening, a chain block). A dead
    child ends the wait at once rather than at the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if group is not None:
            group.check_alive()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DevnetError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def stop_together(processes: Sequence[ManagedProcess], grace_s: float = 10.0) -> None:
    """SIGTERM to every process at once, one shared grace period, then SIGKILL to any group left.

    Stopping N nodes one after the other would cost up to N grace periods; together it costs one.
    """
    running = [p for p in processes if p.popen is not None and p.popen.poll() is None]
    for process in running:
        _signal_group(process.popen.pid, signal.SIGTERM)
    started = time.monotonic()
    deadline = started + grace_s
    for process in running:
        try:
            process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            logger.debug("%s exited %.1fs after SIGTERM", process.name, time.monotonic() - started)
        except subprocess.TimeoutExpired:
            logger.info("%s still ran %.0fs after SIGTERM: killing it", process.name, grace_s)
            _signal_group(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=5)
    for process in running:  # grandchildren (p2pd) that outlived their parent
        _signal_group(process.popen.pid, signal.SIGKILL)
