"""hivemind's DHT process and its p2pd, started for a role, watched, and restarted when one dies.

hivemind runs the DHT in a child process, which starts the p2pd daemon; the role talks to the
DHT through a pipe and to p2pd through a replica (`DHT.replicate_p2p`) on its own event loop.
Neither says when the other end is gone: a request to a DHT process that was killed waits
forever, and the p2pd it leaves behind keeps the listen port and serves the role's stream
handlers while the DHT protocol no longer answers. That is how a coordinator whose DHT process
was killed went silent in the middle of a round. So `WatchedDHT` holds a pidfd on each process
(the kernel reports the exit: nothing is polled) and, when either exits:

1. every call waiting on the DHT (`call`) fails at once with `P2PProcessDied`;
2. both processes are ended (the survivor by its pidfd, so no other process can be hit);
3. a new DHT process and p2pd start with the same identity, listen addresses and peers, and the
   role's `on_restart` hook moves its handlers to the new replica and stores its records again.

Restart, rather than exit, is the first answer because the role's state survives it: the
coordinator keeps its open round with the contributions already accepted, its model, verifier
and chain connections; a node keeps its model and the round it is working on. It takes about a
second, and the peers find the same PeerID at the same address again (a node re-dials its
coordinator by itself). Exit is the answer when restarts do not hold: more than `MAX_RESTARTS`
within `RESTART_WINDOW_S`, or a restart that keeps failing for `RESTART_GIVE_UP_S` (the port
taken, p2pd refusing to start: a node's p2pd will not start while none of its bootstrap peers
answers, so a node waits that long for a coordinator that is restarting too). Then `failed` holds a `P2PRestartFailed` naming the cause, the task that
called `start` is cancelled, and the role's `run` raises the error (`raise_if_failed`), so the
process exits non-zero with that message for its supervisor (`devnet up`, systemd) to restart it
from its checkpoint.

p2pd reads the libp2p private key from a file path. It is given a memfd (`p2p_identity_file`), an
anonymous in-memory file named through /proc, so the Ed25519 seed is never written to a file
system. Both processes are forked after `install_child_hooks`, so neither inherits the key
password or other secrets from the role's environment.

Linux only for the watch itself (pidfd); elsewhere the processes are checked once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from thinkmesh.protocol.rules.errors import ProtocolError
from thinkmesh.protocol.runtime.process_lifecycle import install_child_hooks

logger = logging.getLogger(__name__)
T = TypeVar("T")

START_TIMEOUT_S = 60.0  # a DHT process and its p2pd come up in about half a second
STOP_WAIT_S = 5.0  # for a killed process to be gone
MAX_RESTARTS = 5  # within RESTART_WINDOW_S; one more and the role exits for its supervisor
RESTART_WINDOW_S = 600.0
RESTART_GIVE_UP_S = 120.0  # how long one restart is tried again before the role exits
RESTART_BACKOFF_S = 1.0  # between tries, doubled after each up to RESTART_BACKOFF_MAX_S
RESTART_BACKOFF_MAX_S = 8.0
POLL_S = 1.0  # only where pidfds are missing (not Linux)


class P2PProcessError(ProtocolError):
    """The role's DHT process or p2pd died."""


class P2PProcessDied(P2PProcessError):
    """A call could not complete because the DHT process or p2pd died; a restart is under way."""


class P2PRestartFailed(P2PProcessError):
    """The DHT process or p2pd died and could not be restarted: the role must exit."""


@contextlib.contextmanager
def p2p_identity_file(identity) -> Iterator[str]:
    """A path from which p2pd (any process of this user) reads `identity`'s libp2p private key,
    valid inside the block.

    On Linux an anonymous memory file (memfd) named `/proc/<this pid>/fd/<fd>`: the key is never
    on a file system, and the file is gone when the block closes it. Elsewhere, a mode-0600 file
    in a fresh mode-0700 directory, removed at the end of the block.
    """
    key = identity.libp2p_private_key_bytes()
    if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
        fd = os.memfd_create("thinkmesh-p2p-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, key)
            yield f"/proc/{os.getpid()}/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="thinkmesh-p2p-")
    try:
        path = os.path.join(directory, "identity.key")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            handle.write(key)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _p2pd_of(_dht, node) -> tuple[int, str]:
    """Runs in the DHT process: p2pd's pid and its control socket path."""
    p2p = node.p2p
    return p2p._child.pid, str(p2p.daemon_listen_maddr)  # hivemind 1.1 names no public accessor for the pid


class _Watched:
    """One process and a pidfd on it (None where pidfds are missing)."""

    def __init__(self, what: str, pid: int):
        self.what, self.pid = what, pid
        try:
            self.fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, ProcessLookupError):
                raise P2PProcessDied(f"{what} (pid {pid}) exited before it could be watched") from None
            self.fd = None

    def exited(self) -> bool:
        if self.fd is not None:
            return bool(select.select([self.fd], [], [], 0)[0])
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return zombie(self.pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signal.SIGKILL)
            elif not self.exited():
                os.kill(self.pid, signal.SIGKILL)

    async def wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if self.fd is None:
            while not self.exited() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return self.exited()
        if self.exited():
            return True
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(self.fd, lambda: gone.done() or gone.set_result(True))
        try:
            await asyncio.wait_for(gone, timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def zombie(pid: int) -> bool:
    """True when `pid` has exited but was not reaped yet (alive to `kill(pid, 0)`, dead in fact)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class WatchedDHT:
    """The role's DHT process, its p2pd and this process's replica, restarted when one dies.

    `make_dht(identity_path)` builds the role's `hivemind.DHT` with `start=False` (its peers,
    addresses and validators); `on_restart()` is awaited after each restart, on the event loop,
    with `dht` and `p2p` already the new ones. Use from one event loop; `start`, then `call` for
    every DHT request, `shutdown` at the end.
    """

    def __init__(self, make_dht: Callable[[str], Any], identity, *, role: str,
                 on_restart: Callable[[], Awaitable[None]] | None = None, stop: asyncio.Event | None = None,
                 max_restarts: int = MAX_RESTARTS, restart_window_s: float = RESTART_WINDOW_S):
        """`stop`: the role's stop event; once set, a death is not restarted (a SIGTERM to the
        role's process group reaches the DHT process and p2pd too)."""
        self.make_dht, self.identity, self.role, self.on_restart = make_dht, identity, role, on_restart
        self.stop = stop
        self.max_restarts, self.restart_window_s = max_restarts, restart_window_s
        self.dht = self.p2p = None
        self.restarts = 0
        self.last_cause: str | None = None
        self._restart_times: deque[float] = deque()
        self._watched: list[_Watched] = []
        self._socket_path: str | None = None
        self._up = asyncio.Event()  # set while both processes run
        self._lost = asyncio.Event()  # this generation's: set when one of its processes died
        self._recovery: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        self._owner: asyncio.Task | None = None
        self._closing = False
        self.failed: asyncio.Future | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts both processes and the replica. A first start that fails raises (the role cannot
        start); a later death is restarted, and a failed restart cancels the calling task."""
        install_child_hooks()
        self._owner = asyncio.current_task()
        self.failed = asyncio.get_running_loop().create_future()
        await self._launch()

    async def _launch(self) -> None:
        with p2p_identity_file(self.identity) as identity_path:
            dht = self.make_dht(identity_path)
            dht.run_in_background(await_ready=False)
            try:
                await asyncio.to_thread(dht.wait_until_ready, START_TIMEOUT_S)
                pid, self._socket_path = await asyncio.wait_for(
                    dht.run_coroutine(_p2pd_of, return_future=True), START_TIMEOUT_S)
            except BaseException:
                await asyncio.to_thread(_end_process, dht)
                raise
        watched: list[_Watched] = []
        try:
            watched.append(_Watched("the hivemind DHT process", dht.pid))
            watched.append(_Watched("p2pd", pid))
            p2p = await asyncio.wait_for(dht.replicate_p2p(), START_TIMEOUT_S)
        except BaseException:
            for w in watched:
                w.close()
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(_end_process, dht)
            raise
        self.dht, self.p2p, self._watched = dht, p2p, watched
        self._lost = asyncio.Event()
        loop = asyncio.get_running_loop()
        if all(w.fd is not None for w in watched):
            for w in watched:
                loop.add_reader(w.fd, self._exited, w)
        else:
            self._poller = asyncio.ensure_future(self._poll(watched))
        self._up.set()
        logger.info("%s: hivemind DHT process %d and p2pd %d running", self.role, dht.pid, pid)

    async def _poll(self, watched: list[_Watched]) -> None:
        while True:
            await asyncio.sleep(POLL_S)  # no pidfd on this system: nothing to await
            for w in watched:
                if w.exited():
                    self._exited(w)
                    return

    def _exited(self, which: _Watched) -> None:
        if self._closing or which not in self._watched or self._lost.is_set():
            return
        if self._stopping():
            self._unwatch()
            self._lost.set()
            return
        self._unwatch()
        self._up.clear()
        self._lost.set()
        cause = f"{which.what} (pid {which.pid}) {self._how_it_ended(which)}"
        self._recovery = asyncio.ensure_future(self._recover(cause))

    def _how_it_ended(self, which: _Watched) -> str:
        if which.pid == getattr(self.dht, "pid", None):
            self.dht.join(0.5)  # it exited: the join only reaps it
            code = self.dht.exitcode
            if code is not None and code < 0:
                return f"was killed by {signal.Signals(-code).name}"
            return f"exited with code {code}"
        return "exited"

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self._watched:
            if w.fd is not None:
                loop.remove_reader(w.fd)
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None

    async def _teardown(self) -> None:
        """Ends what is left of this generation: p2pd first, so the DHT process has nothing to stop."""
        for w in reversed(self._watched):
            w.kill()
        for w in self._watched:
            if not await w.wait_exit(STOP_WAIT_S):
                logger.warning("%s: %s (pid %d) still runs %.0fs after SIGKILL", self.role, w.what, w.pid, STOP_WAIT_S)
            w.close()
        self._watched = []
        if self.dht is not None:
            await asyncio.to_thread(self.dht.join, STOP_WAIT_S)
        if self.p2p is not None:
            with contextlib.suppress(Exception):
                await self.p2p.shutdown()
        if self._socket_path and self._socket_path.startswith("/unix/"):
            with contextlib.suppress(OSError):
                os.unlink(self._socket_path[len("/unix"):])  # the killed p2pd's control socket

    async def _recover(self, cause: str) -> None:
        self.last_cause = cause
        logger.error("%s: %s; restarting the DHT process and p2pd", self.role, cause)
        await self._teardown()
        if self._stopping():
            return
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.restart_window_s:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.max_restarts:
            self._fail(f"{cause}, after {len(self._restart_times)} restarts within {self.restart_window_s:.0f}s")
            return
        self._restart_times.append(now)
        delay, attempt = RESTART_BACKOFF_S, 0
        while True:
            attempt += 1
            try:
                await self._launch()
                break
            except Exception as exc:
                if time.monotonic() + delay - now > RESTART_GIVE_UP_S:
                    self._fail(f"{cause}, and restarting it failed for {RESTART_GIVE_UP_S:.0f}s (last: {exc})")
                    return
                logger.warning("%s: restart %d of the DHT process failed (%s); trying again in %.0fs", self.role,
                               attempt, exc, delay)
            await asyncio.sleep(delay)  # backoff before the next try: nothing to await but time
            delay = min(2 * delay, RESTART_BACKOFF_MAX_S)
            if self._stopping():
                return
        self.restarts += 1
        logger.warning("%s: restarted the DHT process (pid %d) and p2pd after: %s", self.role, self.dht.pid, cause)
        if self.on_restart is not None:
            try:
                await self.on_restart()
            except Exception as exc:
                logger.exception("%s: re-attaching to the restarted DHT failed", self.role)
                self._fail(f"{cause}; after the restart: {exc}")
        self._recovery = None

    def _stopping(self) -> bool:
        return self._closing or (self.stop is not None and self.stop.is_set())

    def _fail(self, why: str) -> None:
        error = P2PRestartFailed(
            f"{self.role}: {why}; exiting so that a supervisor restarts the {self.role} from its saved state")
        logger.error("%s", error)
        if not self.failed.done():
            self.failed.set_result(error)
        self._up.set()  # wakes the calls waiting for a restart: they raise `error`
        if self._owner is not None and not self._owner.done():
            self._owner.cancel()

    def raise_if_failed(self) -> None:
        """Raises the `P2PRestartFailed` that ended this DHT, if one did (call it where the role's
        `run` catches `CancelledError`: that cancel came from here)."""
        if self.failed is not None and self.failed.done():
            raise self.failed.result()

    async def shutdown(self) -> None:
        """Stops both processes: hivemind's own shutdown first (it stops p2pd), SIGKILL after its grace."""
        self._closing = True
        if self._recovery is not None and self._recovery is not asyncio.current_task():
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
        if self._watched:
            self._unwatch()
        if self.p2p is not None:
            with contextlib.suppress(Exception):
                await self.p2p.shutdown()
        if self.dht is not None:
            await asyncio.to_thread(_end_process, self.dht)
        for w in self._watched:  # a p2pd whose DHT process could not stop it
            if not w.exited():
                w.kill()
            w.close()
        self._watched = []
        self.dht = self.p2p = None

    # ---- requests -------------------------------------------------------------------------------
    async def call(self, request: Callable[[Any], Awaitable[T]], timeout_s: float | None = None) -> T:
        """The result of `request(dht)` (e.g. `lambda dht: dht.get(key, return_future=True)`).

        Waits for a restart under way first. Raises `P2PProcessDied` when the DHT process or p2pd
        dies before the answer (hivemind's own future would never resolve), `P2PRestartFailed`
        once no restart will come, `asyncio.TimeoutError` after `timeout_s` if given.
        """
        self.raise_if_failed()
        await self._up.wait()
        self.raise_if_failed()
        lost = self._lost
        try:
            work = asyncio.ensure_future(_awaited(request(self.dht)))
        except OSError as exc:  # the pipe to a DHT process that just died
            raise P2PProcessDied(f"{self.role}: the DHT process is gone ({exc})") from exc
        died = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({work, died}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
            if not work.done():
                work.cancel()
        if work in done:
            try:
                return work.result()
            except OSError as exc:
                raise P2PProcessDied(f"{self.role}: the DHT process is gone ({exc})") from exc
        if lost.is_set():
            raise P2PProcessDied(f"{self.role}: {self.last_cause or 'the DHT process or p2pd died'}")
        raise asyncio.TimeoutError(f"no answer from the DHT process within {timeout_s}s")

    def status(self) -> dict:
        """For /status: the processes' pids, how many restarts, and why the last one happened."""
        return {"dht_pid": getattr(self.dht, "pid", None), "p2pd_pid": self._watched[1].pid if len(self._watched) > 1 else None,
                "restarts": self.restarts, "last_cause": self.last_cause}


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _end_process(dht) -> None:
    """Blocking: hivemind's shutdown of a DHT process (bounded by its grace), then SIGKILL."""
    with contextlib.suppress(Exception):
        if dht.pid is not None and dht.is_alive():
            dht.shutdown()
    with contextlib.suppress(Exception):
        if dht.pid is not None and dht.is_alive():
            dht.kill()
        if dht.pid is not None:
            dht.join(STOP_WAIT_S)
