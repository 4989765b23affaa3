"""Child processes of a devnet: started with their own log files, watched, restarted, and stopped cleanly.

Each child runs in its own process group, so stopping it also stops what it started (a node's
p2pd daemon, for instance). Stopping is SIGTERM, a grace period, then SIGKILL: no orphan survives
`devnet up` returning, whether it ends normally, on Ctrl-C or on a child's death.

A child that dies is reported with the last line of its log (a role that cannot restart its own
DHT exits naming the cause) and, where its role allows, started again (`ProcessGroup.revive`) with
the same command: the coordinator resumes from its checkpoint, a node from its saved model. At
most `MAX_RESTARTS` times within `RESTART_WINDOW_S` per child; past that the devnet stops, as a
child that dies at once after each start would otherwise restart forever.

Children get this process's environment without its secrets (`scrubbed_environment`): each role
reads its key password from its own password file.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.p2p.dht_process import zombie
from thinkmesh.protocol.runtime.process_lifecycle import scrubbed_environment

logger = logging.getLogger(__name__)
MAX_RESTARTS = 3  # per child, within RESTART_WINDOW_S
RESTART_WINDOW_S = 600.0


class DevnetError(ProtocolError):
    """Something the devnet cannot start or keep running, said so that the user can fix it."""


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None
    restarted_at: deque[float] = field(default_factory=deque)  # monotonic times of its restarts

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab", buffering=0)
        try:
            self.popen = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**scrubbed_environment(), **self.env}, start_new_session=True,
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

    def how_it_ended(self) -> str:
        """"exited with code 1 (its last log line)" or "was killed by SIGKILL"."""
        code = self.exit_code()
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        last = next((line for line in reversed(self.log_tail(40).splitlines()) if line.strip()), "")
        return f"exited with code {code}" + (f" ({last.strip()[:300]})" if last else "")

    def may_restart(self, now: float) -> bool:
        """True while it restarted fewer than MAX_RESTARTS times within RESTART_WINDOW_S."""
        while self.restarted_at and now - self.restarted_at[0] > RESTART_WINDOW_S:
            self.restarted_at.popleft()
        return len(self.restarted_at) < MAX_RESTARTS

    def restart(self, now: float) -> None:
        """Starts the same command again, appending to the same log (its group is ended first)."""
        if self.popen is not None:
            _signal_group(self.popen.pid, signal.SIGKILL)  # what it left behind (a DHT process, p2pd)
        self.restarted_at.append(now)
        self.start()

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

    def revive(self, restartable: Callable[[str], bool], say: Callable[[str], None]) -> list[ManagedProcess]:
        """Restarts every child that died and whose role `restartable(name)`, saying so; returns
        those restarted. Raises DevnetError, with the end of its log, for a child that died and may
        not restart (its role, or MAX_RESTARTS within RESTART_WINDOW_S used up)."""
        restarted = []
        for process in self.processes:
            if process.exit_code() is None:
                continue
            now = time.monotonic()
            if not restartable(process.name) or not process.may_restart(now):
                why = f", after {MAX_RESTARTS} restarts within {RESTART_WINDOW_S:.0f}s" if restartable(process.name) else ""
                raise DevnetError(f"{process.name} {process.how_it_ended()}{why}; the end of {process.log_path}:\n"
                                  f"{process.log_tail()}")
            say(f"{process.name} {process.how_it_ended()}; restarting it "
                f"(restart {len(process.restarted_at) + 1} of at most {MAX_RESTARTS} within {RESTART_WINDOW_S:.0f}s)")
            process.restart(now)
            restarted.append(process)
        return restarted

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


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), which tells a process from a later
    one given the same pid; None when it is gone or not readable (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[-1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc; [] elsewhere."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), ()):
            found.append(child)
            queue.append(child)
    return found


def stop_process_tree(pid: int, grace_s: float, *, started: int | None = None) -> bool:
    """SIGTERM to `pid`, then SIGKILL to it and to every process below it that is left after
    `grace_s` (its DHT process and p2pd, if it could not stop them). With `started`
    (`process_start_time`), a pid now held by another process is left alone. True if it ran."""
    if not pid_alive(pid) or (started is not None and process_start_time(pid) != started):
        return False
    below = set(descendants(pid))
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace_s
    while pid_alive(pid) and not zombie(pid) and time.monotonic() < deadline:
        below |= set(descendants(pid))
        time.sleep(0.1)  # another process's exit offers no event to wait on
    for victim in [pid, *below]:
        if pid_alive(victim) and not zombie(victim):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return True


def alive(pids: Iterable[int]) -> list[int]:
    """The pids that still run (a zombie, exited but not yet reaped, does not count)."""
    return [pid for pid in pids if pid_alive(pid) and not zombie(pid)]


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
