"""The chain side of settlement, run behind the round loop: rounds go on while the chain is away.

Every transaction the coordinator owes the ledger for its rounds goes through one `SettlementQueue`:
opening a round (its model hash and seed commitment) and settling it (`settlement.send_settlement`:
the awards, in parts when they do not fit a block, then each slash). Guarantees:

- **Never blocks the round loop.** `open_round` and `settle` only enqueue; one worker thread, started
  by `start()` and stopped by `shutdown()`, talks to the chain with its own client.
- **In order, each round exactly once.** Jobs run first in, first out; a job that fails is retried,
  with backoff (`RETRY_FIRST_S` doubling to `RETRY_MAX_S`), before anything behind it runs. The
  contract settles a round once, slashes a node once per round and takes a round's parts in sequence,
  so a retry after any failure (a lost receipt included) never pays or slashes twice.
- **Durable.** The settlement journal is the queue's durable form: an intent not marked done is a
  queued settlement, put back in the queue by `RoundSettler.recover` at restart, whatever the chain
  says then. Openings are not journaled: a settle job opens its round first if the chain lacks it.
- **Visible.** Failures are logged rate-limited (the first of a kind at once, then at most one line
  per `LOG_EVERY_S` with a count), each saying what was expected and what the chain answered;
  `backlog()` is what /status shows.

Any error is retried: an RPC outage, a paused ledger, a pool too small, a block gas limit too low for
even one award, or a round the chain holds with another payload (this last one needs an operator,
and says so in the log and in `backlog()`; the rounds behind it wait).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from thinkmesh.protocol.chain.errors import (
    ChainError,
    ContractRevertError,
    RpcUnreachableError,
    SettlementConflictError,
)
from thinkmesh.protocol.rules.errors import ProtocolError

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
LOG_EVERY_S = 60.0
SHUTDOWN_JOIN_S = 5.0


@dataclass(frozen=True)
class OpenJob:
    round_id: int
    model_hash: bytes
    seed: bytes
    kind: str = "training"  # protocol/rules/generation.py; openRound does not take it, the settlement publishes it (RoundDescribed)

    def describe(self) -> str:
        return f"round {self.round_id}'s opening (openRound)"


@dataclass(frozen=True)
class SettleJob:
    intent: Any  # settlement.SettlementIntent

    @property
    def round_id(self) -> int:
        return self.intent.round_id

    def describe(self) -> str:
        return f"round {self.round_id}'s settlement"


class FailureLog:
    """Rate-limited log of one failure streak: a new kind of failure is logged at once, a repeat
    at most every `every_s` seconds with how many were held back."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock=time.monotonic, *, log: logging.Logger = logger,
                 event: str = "settlement-retry") -> None:
        self.every_s, self.clock, self.log, self.event = every_s, clock, log, event
        self.kind: tuple | None = None
        self.logged_at = float("-inf")
        self.held_back = 0

    def failed(self, kind: tuple, message: str, level: int = logging.WARNING, exc_info=None) -> bool:
        """Logs `message` unless it repeats the last kind within `every_s`; True if it was logged."""
        now = self.clock()
        if kind == self.kind and now - self.logged_at < self.every_s:
            self.held_back += 1
            return False
        if self.held_back:
            message += f" ({self.held_back} more like the last one held back)"
        self.log.log(level, "%s", message, exc_info=exc_info, extra={"event": self.event})
        self.kind, self.logged_at, self.held_back = kind, now, 0
        return True

    def reset(self) -> None:
        self.kind, self.logged_at, self.held_back = None, float("-inf"), 0


def failure_kind(exc: BaseException) -> tuple:
    """What makes two failures "the same" for the log: the error's class and, for a revert, its name."""
    return (type(exc).__name__, exc.error_name if isinstance(exc, ContractRevertError) else None)


class SettlementQueue:
    """One worker thread that sends `OpenJob`s and `SettleJob`s in order; see the module docstring.

    `open_round`, `settle`, `backlog` are thread-safe and never block on the chain. `step()` runs one
    attempt of the head job in the calling thread (what the worker loops over; tests call it directly).
    `step_hook` goes to `settlement.send_settlement` (its `after-settle` crash point; tests only).
    """

    def __init__(self, client, journal, *, retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S,
                 log_every_s: float = LOG_EVERY_S, clock=time.monotonic, step_hook=None) -> None:
        self.client = client
        self.journal = journal
        self.step_hook = step_hook
        self.retry_first_s, self.retry_max_s = retry_first_s, retry_max_s
        self.clock = clock
        self._jobs: deque = deque()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = FailureLog(log_every_s, clock)
        self.failures = 0  # consecutive failed attempts of the head job
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.retry_at: float | None = None
        self.settled_through: int | None = None  # the last round whose settlement (slashes included) is done
        self.settled = 0

    # ---- the round loop's side (never blocks on the chain) ---------------------------------------
    def open_round(self, round_id: int, model_hash: bytes, seed: bytes, kind: str = "training") -> None:
        self._put(OpenJob(round_id, model_hash, seed, kind))

    def settle(self, intent) -> None:
        self._put(SettleJob(intent))

    def _put(self, job) -> None:
        with self._changed:
            if not any(type(j) is type(job) and j.round_id == job.round_id for j in self._jobs):
                self._jobs.append(job)
            self._changed.notify_all()

    def backlog(self) -> dict:
        """What /status shows: the rounds waiting to be settled (and opened), and why they wait."""
        with self._changed:
            jobs = list(self._jobs)
        now = self.clock()
        return {
            "pending_rounds": [j.round_id for j in jobs if isinstance(j, SettleJob)],
            "pending_openings": [j.round_id for j in jobs if isinstance(j, OpenJob)],
            "settled_through": self.settled_through,
            "settled_now": self.settled,
            "state": "idle" if not jobs else "retrying" if self.failures else "sending",
            "failed_attempts": self.failures,
            "failing_for_s": None if self.failing_since is None else round(now - self.failing_since, 1),
            "last_error": self.last_error,
            "retry_in_s": None if self.retry_at is None else round(max(0.0, self.retry_at - now), 1),
        }

    def __len__(self) -> int:
        with self._changed:
            return len(self._jobs)

    # ---- the worker -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the settlement queue is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="settlement-queue", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = SHUTDOWN_JOIN_S) -> bool:
        """Stops the worker after its current chain call; True if it ended within `timeout_s`. Queued
        settlements stay in the journal for the next start."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("the settlement worker is still inside a chain call after %.0f s; leaving it", timeout_s)
            return False
        return True

    def wait_empty(self, timeout_s: float) -> bool:
        """Blocks until every queued job is done (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._jobs:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                while not self._jobs and not self._stop.is_set():
                    self._changed.wait()
            if self._stop.is_set():
                return
            delay = self.step()
            if delay:
                self._stop.wait(delay)

    def step(self) -> float:
        """One attempt at the head job: 0.0 when it succeeded (or there was none), else the seconds
        to wait before the next attempt."""
        with self._changed:
            if not self._jobs:
                return 0.0
            job = self._jobs[0]
        try:
            self._do(job)
        except Exception as exc:  # noqa: BLE001 - every failure is retried; see the module docstring
            return self._failed(job, exc)
        with self._changed:
            self._jobs.popleft()
            self._changed.notify_all()
        if self.failures:
            logger.info("the chain took %s after %d failed attempts over %.0f s; %d job(s) left", job.describe(),
                        self.failures, self.clock() - self.failing_since, len(self),
                        extra={"event": "settlement-resumed", "round": job.round_id})
        self.failures, self.failing_since, self.last_error, self.retry_at = 0, None, None, None
        self._log.reset()
        return 0.0

    def _do(self, job) -> None:
        from thinkmesh.coordinator.settlement.round_settlement import ensure_round_open, open_for_settlement, settle_pending

        if isinstance(job, OpenJob):
            ensure_round_open(self.client, job.round_id, job.model_hash, job.seed)
            return
        open_for_settlement(self.client, job.intent)
        settle_pending(self.client, self.journal, [job.intent], self.step_hook)
        self.settled_through, self.settled = job.round_id, self.settled + 1

    def _failed(self, job, exc: Exception) -> float:
        now = self.clock()
        self.failures += 1
        self.failing_since = self.failing_since if self.failing_since is not None else now
        delay = min(self.retry_max_s, self.retry_first_s * 2 ** (self.failures - 1))
        self.retry_at = now + delay
        with self._changed:
            behind = sum(isinstance(j, SettleJob) for j in self._jobs)
        if isinstance(exc, RpcUnreachableError):
            came = f"the RPC did not answer ({exc})"
        elif isinstance(exc, ProtocolError):
            came = f"the chain answered: {exc}"
        else:
            came = f"an unexpected {type(exc).__name__}: {exc}"
        self.last_error = f"{type(exc).__name__}: {exc}"
        needs_operator = isinstance(exc, SettlementConflictError) or (
            isinstance(exc, ProtocolError) and not isinstance(exc, ChainError))  # settlement.SettlementError
        message = (f"{job.describe()} is queued, {behind} round(s) waiting (attempt {self.failures}, next in "
                   f"{delay:.0f} s): expected it to go through; {came}"
                   + ("; this will not pass by itself: an operator must look at the chain and the journal"
                      if needs_operator else "") + "; training goes on")
        self._log.failed(failure_kind(exc), message, logging.ERROR if needs_operator else logging.WARNING,
                         exc_info=None if isinstance(exc, ProtocolError) else exc)  # a bug: keep its traceback
        return delay

