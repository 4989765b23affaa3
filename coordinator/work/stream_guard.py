"""Bounds on what incoming streams can cost the coordinator: descriptors, time, memory and logs.

Every stream hivemind hands the coordinator is a unix-socket connection from p2pd, accepted on
the coordinator's event loop, so an idle stream holds a file descriptor and a task until closed.
The guards, each a small object the service owns (`p2p_service.py`):

- `StreamTable`: at most `max_streams` open at once. At the cap, the oldest stream still waiting
  for its first record is closed to make room (an honest peer sends its header at once, so a
  flood of idle streams evicts itself, not the honest one); with none to evict the new stream
  is closed at once.
- `read_body_within`: a body's frames each within `frame_timeout_s` of the last, and the whole
  before a deadline, so a stream that stalls or trickles is closed (`StreamTimeout`).
- `UploadBudget`: bodies in flight (read, decoded or being verified) capped by count and by
  announced bytes; a header that fits the round waits, bounded, for room.
- `guard_accept_errors`: out of descriptors, asyncio's accept loop (CPython 3.11-3.12,
  `BaseSelectorEventLoop._accept_connection`) logs the error and schedules a retry up to
  `backlog` times per wake-up, and each retry re-arms the listener: a hot loop that logged
  7.45 million errors in 3.5 minutes. The guard makes one such error end that wake-up (one
  retry, one record) and routes the loop's error reports through a `RateLimitedLog`.
- `RateLimitedLog`: at most `burst` records per key per `interval_s`; the rest are counted and
  the count is reported with the key's next record.

Thread-safety: loop-thread only, like the handlers that use them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from thinkmesh.protocol.rules.messages import MiB
from thinkmesh.protocol.p2p.transport import FRAME_BYTES, RefusalReason, TransportError, read_frame

logger = logging.getLogger(__name__)
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
WANTED_OPEN_FILES = 8192  # the soft descriptor limit asked for at start (never above the hard one)


@dataclass(frozen=True)
class StreamLimits:
    """The coordinator's stream limits; durations in seconds, sizes in bytes."""

    max_streams: int = 256  # open streams on both handlers; also capped at a quarter of the descriptor limit
    header_timeout_s: float = 10.0  # from a stream's opening to its first record
    frame_timeout_s: float = 20.0  # the longest silence inside a body, or between two model chunks
    min_body_rate: int = 128 * 1024  # a body's deadline: its size at this rate, header_timeout_s at least
    max_uploads: int = 16  # bodies held at once (read, decoded or being verified)
    max_upload_bytes: int = 128 * MiB  # their announced sizes together; at least one largest contribution
    slot_wait_s: float = 30.0  # how long an admitted header waits for room in the budget
    registry_wait_s: float = 10.0  # how long a header waits for a registry read that may admit its key


class StreamTimeout(TransportError):
    """A stream that sent nothing, or too little, within its deadline."""

    def __init__(self, message: str):
        super().__init__(message, RefusalReason.LATE)


class RateLimitedLog:
    """`burst` records per key per `interval_s`, the rest counted (see the module docstring)."""

    def __init__(self, log: logging.Logger, interval_s: float = 10.0, burst: int = 5, max_keys: int = 64,
                 clock: Callable[[], float] = time.monotonic):
        self.log, self.interval_s, self.burst, self.max_keys, self.clock = log, interval_s, burst, max_keys, clock
        self._windows: dict[str, list[float | int]] = {}  # key -> [window start, records in it, suppressed]
        self.suppressed_total = 0

    def admit(self, key: str) -> int | None:
        """None: suppress this record; else how many of `key` were suppressed since its last one."""
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key = "other"
        now = self.clock()
        window = self._windows.setdefault(key, [now, 0, 0])
        if now - window[0] >= self.interval_s:
            window[0], window[1] = now, 0
        if window[1] >= self.burst:
            window[2] += 1
            self.suppressed_total += 1
            return None
        window[1] += 1
        suppressed, window[2] = window[2], 0
        return suppressed

    def __call__(self, level: int, key: str, message: str, *args) -> None:
        suppressed = self.admit(key)
        if suppressed is None:
            return
        if suppressed:
            message += f" [{suppressed} similar records suppressed]"
        self.log.log(level, message, *args)


@dataclass(eq=False)
class OpenStream:
    writer: object  # anything with close(): an asyncio.StreamWriter
    opened: float
    idle: bool = True  # no record read yet: the only kind closed to make room
    evicted: bool = False  # closed to make room (its handler ends quietly)


@dataclass
class StreamTable:
    """The open streams; see the module docstring for the eviction rule."""

    max_streams: int
    streams: dict[int, OpenStream] = field(default_factory=dict)
    evicted: int = 0
    turned_away: int = 0

    def open(self, writer) -> OpenStream | None:
        if len(self.streams) >= self.max_streams:
            victim = next((s for s in self.streams.values() if s.idle), None)  # insertion order: oldest first
            if victim is None:
                self.turned_away += 1
                return None
            self.close(victim)
            victim.evicted = True
            victim.writer.close()  # its handler's pending read ends with an incomplete-read error
            self.evicted += 1
        stream = OpenStream(writer, time.monotonic())
        self.streams[id(stream)] = stream
        return stream

    def close(self, stream: OpenStream) -> None:
        self.streams.pop(id(stream), None)

    def __len__(self) -> int:
        return len(self.streams)


class UploadBudget:
    """Bodies in flight, by count and announced bytes; `acquire` waits (bounded) for room."""

    def __init__(self, max_uploads: int, max_bytes: int):
        self.max_uploads, self.max_bytes = max_uploads, max_bytes
        self.uploads = self.bytes = 0
        self._changed = asyncio.Condition()

    def _fits(self, nbytes: int) -> bool:
        return self.uploads < self.max_uploads and self.bytes + nbytes <= self.max_bytes

    async def acquire(self, nbytes: int, timeout_s: float) -> bool:
        """True once `nbytes` are reserved; False after `timeout_s` without room (or if they never fit)."""
        if nbytes > self.max_bytes:
            return False
        if timeout_s <= 0:
            return self._take(nbytes)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._fits(nbytes)), timeout_s)
            except asyncio.TimeoutError:
                return False
            return self._take(nbytes)

    def _take(self, nbytes: int) -> bool:
        if not self._fits(nbytes):
            return False
        self.uploads += 1
        self.bytes += nbytes
        return True

    async def release(self, nbytes: int) -> None:
        async with self._changed:
            self.uploads -= 1
            self.bytes -= nbytes
            self._changed.notify_all()


async def read_body_within(reader: asyncio.StreamReader, total_bytes: int, frame_timeout_s: float,
                           deadline: float) -> bytes:
    """Exactly `total_bytes` in frames of at most `FRAME_BYTES`, each within `frame_timeout_s` of
    the last and all before `deadline` (loop time); `StreamTimeout` otherwise."""
    loop = asyncio.get_running_loop()
    parts, received = [], 0
    while received < total_bytes:
        left = deadline - loop.time()
        wait = min(frame_timeout_s, left)
        if wait <= 0:
            raise StreamTimeout(f"body incomplete at its deadline: {received} of {total_bytes} bytes")
        try:
            async with asyncio.timeout(wait):
                frame = await read_frame(reader, min(FRAME_BYTES, total_bytes - received))
        except TimeoutError:
            raise StreamTimeout(f"no body frame for {wait:.1f}s after {received} of {total_bytes} bytes") from None
        if not frame:
            raise TransportError("empty body frame")
        parts.append(frame)
        received += len(frame)
    return b"".join(parts)


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raises this process's soft descriptor limit towards `wanted` (never past the hard limit);
    returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.debug("could not raise the open-file limit to %d", target, exc_info=True)
    return soft


class _AcceptOnce:
    """A listening socket that, after one out-of-resource error, reports an empty accept queue
    for the rest of the wake-up (asyncio then returns from its accept loop)."""

    def __init__(self, sock):
        self.sock = sock
        self.failed = False

    def accept(self):
        if self.failed:
            raise BlockingIOError(errno.EAGAIN, "accept paused after a resource error")
        try:
            return self.sock.accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self.failed = True
            raise

    def __getattr__(self, name):
        return getattr(self.sock, name)


def guard_accept_errors(loop: asyncio.AbstractEventLoop, log: RateLimitedLog) -> None:
    """Installs the accept guard and the rate-limited error reports on `loop` (see the module
    docstring). Idempotent; must run before the listeners it should cover start serving."""
    if getattr(loop, "_thinkmesh_accept_guard", False):
        return
    loop._thinkmesh_accept_guard = True
    previous = loop.get_exception_handler()

    def report(loop, context: dict) -> None:
        suppressed = log.admit(str(context.get("message", "error")))
        if suppressed is None:
            return
        if suppressed:
            context = dict(context, message=f"{context.get('message')} [{suppressed} similar reports suppressed]")
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(report)
    accept = getattr(loop, "_accept_connection", None)
    if accept is None:  # not a selector loop (e.g. uvloop): its own accept handling stands
        return

    def accept_connection(protocol_factory, sock, *args, **kwargs):
        raw = sock.sock if isinstance(sock, _AcceptOnce) else sock
        return accept(protocol_factory, _AcceptOnce(raw), *args, **kwargs)

    loop._accept_connection = accept_connection
