"""The serving engine: what it streams is what the rollout engine drew; cancelled work stops."""

from __future__ import annotations

import queue
import threading

import pytest

from thinkmesh.node.serve.engine import GenerationJob, ServeEngine
from thinkmesh.node.serve.openai_schema import TextStream, answer_text
from thinkmesh.protocol.rules.receipts import receipt_row_key
from thinkmesh.protocol.rules.rollout import SamplingSettings, StopRule, generate
from thinkmesh.protocol.rules.sampling import stop_rule_for

pytestmark = pytest.mark.timeout(60)


class _Sink:
    """A job's events, as the worker posts them."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.tokens: dict[int, list[int]] = {}

    def post(self, event: tuple) -> None:
        self.events.put(event)

    def result(self, timeout: float = 30):
        while True:
            event = self.events.get(timeout=timeout)
            if event[0] == "tokens":
                self.tokens.setdefault(event[1], []).extend(event[2])
            else:
                return event


@pytest.fixture
def engine(served_micro):
    engine = ServeEngine(lambda: served_micro, max_batch=8, batch_window_s=10.0)
    engine.start()
    assert engine.wait_ready(30)
    yield engine
    engine.shutdown()


def test_streamed_tokens_are_the_batchs_completions_and_each_row_is_as_if_alone(engine, served_micro):
    tokenizer = served_micro.tokenizer
    settings = SamplingSettings(1.0, 1.0, 24)
    marker = tokenizer.decode(tokenizer("ab")["input_ids"][1:])
    stop = stop_rule_for(tokenizer, (marker, "x"))
    assert stop.multi_token_strings == ("ab",)
    jobs, sinks = [], []
    for index, (prompt, n) in enumerate([("Hello there", 2), ("Q", 1), ("Tell me a story", 3)]):
        sink = _Sink()
        keys = tuple(receipt_row_key(bytes([index]) * 32, row) for row in range(n))
        jobs.append(GenerationJob(tuple(tokenizer(prompt)["input_ids"]), settings, stop, keys, sink.post))
        sinks.append(sink)
    warm_up = _Sink()  # a batch of six rows: the next batch waits (up to the window) for six rows too
    engine.submit(GenerationJob(jobs[0].prompt_ids, settings, stop, tuple(bytes([9, r]) * 16 for r in range(6)),
                                warm_up.post))
    assert warm_up.result()[0] == "done"
    for job in jobs:  # one at a time, yet one batch
        engine.submit(job)
    results = [sink.result() for sink in sinks]
    assert engine.batches_run == 2 and engine.rows_run == 12
    for job, sink, (kind, completions) in zip(jobs, sinks, results):
        assert kind == "done" and len(completions) == len(job.keys)
        alone = generate(served_micro.model, [job.prompt_ids] * len(job.keys), settings, stop,
                         tokenizer.pad_token_id, tokenizer=tokenizer, keys=list(job.keys))
        for choice, completion in enumerate(completions):
            assert sink.tokens[choice] == list(completion.token_ids)
            assert completion.token_ids == alone[choice].token_ids


def test_text_stream_pieces_add_up_to_the_answer_text(served_micro):
    tokenizer = served_micro.tokenizer
    ids = tokenizer("The sum is 42, so abc")["input_ids"][1:]
    rule = StopRule(frozenset(), ("so a",))
    stream = TextStream(tokenizer, rule)
    pieces = [stream.push([token]) for token in ids]
    pieces.append(stream.finish(ids))
    assert "".join(pieces) == answer_text(tokenizer, ids, rule) == "The sum is 42, "
    start = "The sum is 42, so abc".index("so")  # one token per character
    assert pieces[start - 1] == " " and all(piece == "" for piece in pieces[start:])  # "so a" held back, then cut


def test_a_job_cancelled_by_its_client_stops_its_batch(engine, served_micro):
    tokenizer = served_micro.tokenizer
    sink, first_tokens = _Sink(), threading.Event()
    job = GenerationJob(tuple(tokenizer("Go")["input_ids"]), SamplingSettings(1.0, 1.0, 400), StopRule(frozenset()),
                        (b"\x01" * 32,), lambda event: (sink.post(event), first_tokens.set()))
    engine.submit(job)
    assert first_tokens.wait(30)
    job.cancelled.set()  # what the app does when the client goes away
    follower = _Sink()
    engine.submit(GenerationJob(job.prompt_ids, SamplingSettings(0.0, 1.0, 3), StopRule(frozenset()), (b"",),
                                follower.post))
    assert follower.result()[0] == "done"  # the worker moved on
    events = []
    while not sink.events.empty():
        events.append(sink.events.get_nowait())
    assert all(event[0] == "tokens" for event in events) and len(events) < 400  # no "done": it stopped early
    assert engine.rows_run == 1  # the follower's row only


def test_shutdown_fails_waiting_jobs_and_refuses_new_ones(served_micro):
    from thinkmesh.node.serve.engine import NotReady

    engine = ServeEngine(lambda: served_micro)
    engine.start()
    assert engine.wait_ready(30)
    engine.shutdown()
    with pytest.raises(NotReady, match="shutting down"):
        engine.submit(GenerationJob((1,), SamplingSettings(), StopRule(frozenset()), (b"",), lambda e: None))
