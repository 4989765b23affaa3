"""The serving engine: a bounded queue of generation jobs and one worker thread that runs them.

Generation is the rollout engine's (`thinkmesh.protocol.rules.rollout.generate`), unchanged: every token is
drawn by its `sample_next_token` from the job's public streams, so what a receipt states is what
the engine did. The worker sees the engine's progress through `_StepTap`, a transparent wrapper of
the model: `generate` feeds each step's tokens back in as the next forward's input, so the tap reads
them there and streams them out before the model computes the next step. The tap also tracks each
row's end by the engine's own stop rule (`sampling.text_stopped`), and when `generate` returns, its
completions are authoritative: the tap checks the streamed tokens are their prefix and sends the
rest (the last step is never fed back).

Batching: jobs with the same sampling settings and stop rule run as one batch of up to `max_batch`
rows (a job of n choices is n rows), taken in arrival order; a job with other settings waits for
the next batch. A batch waits up to `batch_window_s` for as many rows as the previous one had:
clients answered together send again together, a few milliseconds apart, and would otherwise
split into alternating batches, each waiting out the other. Batches are
static: a request that arrives while a batch runs waits for it to end (joining rows mid-batch
would need the rollout engine to take new rows between steps). Rows do not depend on their neighbours (per-row streams, see protocol/rules/rollout.py), so
batching changes no answer beyond float-order noise, which the re-check's tolerance absorbs.

Lifecycle: `start()` spawns the worker, which first loads the model (`state` "loading", then
"ready" or "failed"); `submit()` is called from the event loop and raises `NotReady` or `QueueFull`
at once, never blocking; `shutdown()` cancels the running batch and joins the worker with a
timeout. Events reach a job's consumer through its `post` callable (thread-safe), in order:
("tokens", choice, [ids]) any number of times, then ("done", [Completion per choice]) or
("error", message). Only the worker thread touches the model.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from thinkmesh.protocol.rules.rollout import Completion, SamplingSettings, StopRule, generate
from thinkmesh.protocol.rules.prefix_scoring import cache_keyword
from thinkmesh.protocol.rules.sampling import text_stopped

logger = logging.getLogger(__name__)

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"
# How long a batch may wait for the clients of the previous batch to come back (see `_next_batch`).
BATCH_WINDOW_S = 0.02


class NotReady(Exception):
    """The engine cannot take jobs: its model is loading, failed to load, or it is shutting down."""


class QueueFull(Exception):
    """The bounded queue of waiting jobs is full."""


class _BatchCancelled(Exception):
    pass


@dataclass(frozen=True)
class ServedModel:
    """What the worker serves: the model, its tokenizer, its hash (as a receipt names it), the
    compute dtype (as a receipt names it) and the name clients use for it."""

    model: object
    tokenizer: object
    model_hash: bytes
    dtype: str
    name: str

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)


@dataclass(eq=False)
class GenerationJob:
    """One request: a prompt, its choices' stream keys, and where its events go."""

    prompt_ids: tuple[int, ...]
    settings: SamplingSettings
    stop: StopRule
    keys: tuple[bytes, ...]  # one per choice
    post: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def batch_key(self) -> tuple:
        return self.settings, self.stop


def load_served_model(directory, device: str = "cpu", dtype: str = "float32", name: str | None = None) -> ServedModel:
    """A model directory as the engine serves it. The hash is taken in float32, as the directory's
    weights are (`receipts.served_model_hash`, the hash a mesh model version has), before any cast
    to the compute `dtype`; a receipt names that dtype so the re-check knows its tolerance."""
    from pathlib import Path

    from thinkmesh.node.model.model_dir import load_model, load_tokenizer, torch_dtype
    from thinkmesh.protocol.rules.receipts import served_model_hash

    model = load_model(directory, device, "float32")
    model_hash = served_model_hash(model)
    if dtype != "float32":
        model = model.to(torch_dtype(dtype))
    return ServedModel(model, load_tokenizer(directory), model_hash, dtype, name or Path(directory).name)


class ServeEngine:
    def __init__(self, load: Callable[[], ServedModel], *, max_queue: int = 64, max_batch: int = 16,
                 batch_window_s: float = BATCH_WINDOW_S):
        if max_queue < 1 or max_batch < 1 or batch_window_s < 0:
            raise ValueError(f"expected max_queue, max_batch >= 1 and batch_window_s >= 0, "
                             f"got {max_queue}, {max_batch} and {batch_window_s}")
        self._load = load
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self._last_rows = 0
        self.state = LOADING
        self.error: str | None = None
        self.served: ServedModel | None = None
        self._queue: collections.deque[GenerationJob] = collections.deque()
        self._running: list[GenerationJob] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # counters for /health and the bench
        self.rows_run = 0

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine was started already")
        self._thread = threading.Thread(target=self._run, name="thinkmesh-serve-worker", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for job in [*self._running, *self._queue]:
                job.cancelled.set()
                job.post(("error", "the server is shutting down"))
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the serve worker did not stop within %.0f s", timeout)
        self.state = STOPPED

    def wait_ready(self, timeout: float) -> bool:
        """Blocks until the model is loaded (True) or failed / `timeout` passed (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self.state != LOADING, timeout)
            return self.state == READY

    # ---- the event loop's side -----------------------------------------------------------
    def submit(self, job: GenerationJob) -> None:
        """Queues `job` or raises at once: NotReady (loading, failed, stopping), QueueFull."""
        with self._cond:
            if self._stopping or self.state == STOPPED:
                raise NotReady("the server is shutting down")
            if self.state == LOADING:
                raise NotReady("the model is loading")
            if self.state == FAILED:
                raise NotReady(f"the model failed to load: {self.error}")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (the limit is {self.max_queue})")
            if len(job.keys) > self.max_batch:
                raise ValueError(f"a job of {len(job.keys)} choices exceeds max_batch {self.max_batch}")
            self._queue.append(job)
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ---- the worker's side ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            served = self._load()
        except Exception as exc:  # any load failure is reported to clients as 503, with its text
            logger.exception("loading the model failed")
            with self._cond:
                self.error = f"{type(exc).__name__}: {exc}"
                self.state = FAILED
                self._cond.notify_all()
            return
        with self._cond:
            self.served = served
            self.state = READY
            self._cond.notify_all()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._generate(batch)
            finally:
                with self._cond:
                    self._running = []

    def _next_batch(self) -> list[GenerationJob] | None:
        with self._cond:
            while True:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return None
                first = self._queue.popleft()
                if not first.cancelled.is_set():
                    break
            batch, rows = [first], len(first.keys)
            # Clients that were served together tend to come back together: wait (at most the
            # window) until as many rows as the last batch had have arrived.
            target = min(self.max_batch, max(1, self._last_rows))
            deadline = time.monotonic() + self.batch_window_s
            while True:
                kept: collections.deque[GenerationJob] = collections.deque()
                for job in self._queue:
                    if job.cancelled.is_set():
                        continue
                    if job.batch_key == first.batch_key and rows + len(job.keys) <= self.max_batch:
                        batch.append(job)
                        rows += len(job.keys)
                    else:
                        kept.append(job)
                self._queue, seen = kept, len(kept)
                left = deadline - time.monotonic()
                if rows >= target or self._stopping or left <= 0:
                    break
                if not self._cond.wait_for(lambda: len(self._queue) > seen or self._stopping, left):
                    break
            self._last_rows = rows
            if self._stopping:
                for job in batch:
                    job.post(("error", "the server is shutting down"))
                return None
            self._running = batch
            return batch

    def _generate(self, batch: list[GenerationJob]) -> None:
        served = self.served
        settings, stop = batch[0].settings, batch[0].stop
        owners = [(job, choice) for job in batch for choice in range(len(job.keys))]
        streams = _RowStreams(owners, stop, served.tokenizer)
        try:
            completions = generate(
                _StepTap(served.model, streams.step), [job.prompt_ids for job, _ in owners], settings, stop,
                served.tokenizer.pad_token_id, tokenizer=served.tokenizer, keys=[job.keys[c] for job, c in owners],
            )
        except _BatchCancelled:
            return
        except Exception as exc:  # a failed batch fails its requests, not the server
            logger.exception("generation failed for a batch of %d rows", len(owners))
            for job in batch:
                job.post(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            return
        streams.finish(completions)
        self.batches_run += 1
        self.rows_run += len(owners)
        start = 0
        for job in batch:
            job.post(("done", completions[start: start + len(job.keys)]))
            start += len(job.keys)


class _StepTap(torch.nn.Module):
    """The model as `generate` sees it: the same forward, plus a look at each step's tokens.

    `generate` calls the model once to prefill, then once per step with that step's tokens as
    `input_ids` [B, 1]; the tap hands those to `on_step` before running the step's forward."""

    def __init__(self, model, on_step: Callable[[list[int]], None]):
        super().__init__()
        self.inner = model
        self._keyword = cache_keyword(model)
        self._on_step = on_step
        self._calls = 0

    def forward(self, input_ids, cache=None, **kwargs):
        if self._calls:
            self._on_step(input_ids[:, 0].tolist())
        self._calls += 1
        return self.inner(input_ids=input_ids, **{self._keyword: cache}, **kwargs)


class _RowStreams:
    """Each row's tokens as they come, ended by the engine's stop rule; posts them to the rows'
    jobs and aborts the batch (`_BatchCancelled`) once every job in it was cancelled."""

    def __init__(self, owners: list[tuple[GenerationJob, int]], stop: StopRule, tokenizer):
        self.owners = owners
        self.stop = stop
        self.tokenizer = tokenizer
        self.ids: list[list[int]] = [[] for _ in owners]
        self.done = [False] * len(owners)
        self.jobs = list(dict.fromkeys(job for job, _ in owners))

    def step(self, tokens: list[int]) -> None:
        if all(job.cancelled.is_set() for job in self.jobs):
            raise _BatchCancelled()
        for row, token in enumerate(tokens):
            if self.done[row]:
                continue
            self.ids[row].append(token)
            job, choice = self.owners[row]
            job.post(("tokens", choice, [token]))
            if token in self.stop.token_ids or text_stopped(self.tokenizer, self.ids[row], self.stop):
                self.done[row] = True

    def finish(self, completions: list[Completion]) -> None:
        for row, completion in enumerate(completions):
            streamed, final = self.ids[row], list(completion.token_ids)
            if final[: len(streamed)] != streamed:  # the engine's result wins; say so loudly
                logger.error("row %d: streamed tokens %s are not a prefix of the completion %s", row, streamed, final)
                continue
            if len(final) > len(streamed):
                job, choice = self.owners[row]
                job.post(("tokens", choice, final[len(streamed):]))
