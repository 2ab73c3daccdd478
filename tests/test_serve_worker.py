"""The server's model worker: batching of queued requests and skipping requests whose client left."""

from __future__ import annotations

import threading
import time

from slm_swap.llm.batching import Job, ModelWorker


class FakeModel:
    """Records each generate call; the first call waits until released, so jobs pile up behind it."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.abandoned: list[list] = []  # each call's `abandoned` predicates
        self.release = threading.Event()

    def render(self, messages):
        return messages[-1]["content"]

    def generate(self, prompts, adapter=None, max_new_tokens=None, stop=None, abandoned=None):
        self.calls.append(list(prompts))
        self.abandoned.append(abandoned)
        if len(self.calls) == 1:
            self.release.wait(10)
        return [f"echo {p}" for p in prompts]


def job(text, adapter=None):
    return Job([{"role": "user", "content": text}], adapter, 16)


def test_queued_jobs_for_the_same_model_run_as_one_batch_and_cancelled_ones_are_skipped():
    model = FakeModel()
    worker = ModelWorker(model, batch_size=8)
    try:
        first = worker.submit(job("first"))
        while not model.calls:  # the worker is busy with `first`
            time.sleep(0.01)
        queued = [worker.submit(job(f"q{i}")) for i in range(3)]
        other_adapter = worker.submit(job("tuned", adapter="toolcall"))
        gone = job("client left")
        worker.submit(gone)
        gone.abandon()
        model.release.set()
        assert first.result(10) == "echo first"
        assert [f.result(10) for f in queued] == ["echo q0", "echo q1", "echo q2"]
        assert other_adapter.result(10) == "echo tuned"
    finally:
        worker.stop()
    assert model.calls == [["first"], ["q0", "q1", "q2"], ["tuned"]]  # "client left" never generated


def test_a_running_job_that_is_abandoned_tells_the_model_its_row_is_given_up():
    """`future.cancel()` cannot stop a running job: the model learns through `abandoned[i]()`, which
    the decoder consults at each step (tests/test_local_serve.py shows the row then ends)."""
    model = FakeModel()
    worker = ModelWorker(model, batch_size=8)
    try:
        running = job("leaves")
        future = worker.submit(running)
        while not model.calls:  # generating
            time.sleep(0.01)
        [given_up] = model.abandoned[0]
        assert not given_up()
        running.abandon()
        assert given_up()
        model.release.set()
        future.result(10)  # the worker lives on and finishes the batch
        assert worker.submit(job("next")).result(10) == "echo next"
    finally:
        worker.stop()


def test_steady_traffic_to_one_adapter_cannot_starve_another():
    # The model is busy; two requests for the base model, then one for an adapter, then a steady
    # stream for the base model: four arrive at once, and four more while each later batch
    # generates. The adapter's request must go as soon as it is the oldest waiting, not behind
    # every later arrival (the old worker put it back at the end of the queue each round).
    model = FakeModel()
    worker = ModelWorker(model, batch_size=4)
    arrivals = iter(range(100))
    stream: list = []

    def more_base_traffic():
        stream.extend(worker.submit(job(f"a{next(arrivals)}")) for _ in range(4))

    generate = model.generate

    def generate_while_traffic_arrives(prompts, adapter=None, max_new_tokens=None, stop=None, abandoned=None):
        if 1 <= len(model.calls) < 7:  # the six batches after `first` each see four new arrivals
            more_base_traffic()
        return generate(prompts, adapter, max_new_tokens, stop, abandoned)

    model.generate = generate_while_traffic_arrives
    try:
        first = worker.submit(job("first"))
        while not model.calls:
            time.sleep(0.01)
        stream.extend(worker.submit(job(f"a{next(arrivals)}")) for _ in range(2))  # older than b
        tuned = worker.submit(job("b", adapter="toolcall"))
        more_base_traffic()  # younger than b
        model.release.set()
        assert first.result(10) == "echo first"
        assert tuned.result(10) == "echo b"
        assert all(f.result(10).startswith("echo a") for f in stream)
    finally:
        worker.stop()
    # first; the two a's older than b with the next two (a full batch); then b, now the oldest.
    assert model.calls[:3] == [["first"], ["a0", "a1", "a2", "a3"], ["b"]]
    assert len(stream) == 30
    # Base-model requests are served in arrival order, in full batches.
    served = [p for call in model.calls[1:] for p in call if p != "b"]
    assert served == [f"a{i}" for i in range(len(stream))]
    assert all(len(call) == 4 for call in model.calls[3:-1])


def test_stop_serves_what_was_queued_before_it():
    model = FakeModel()
    worker = ModelWorker(model, batch_size=2)
    first = worker.submit(job("first"))
    while not model.calls:
        time.sleep(0.01)
    queued = [worker.submit(job(f"q{i}", adapter=("toolcall" if i % 2 else None))) for i in range(4)]
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    model.release.set()
    stopper.join(10)
    assert not worker.thread.is_alive()
    assert first.result(0) == "echo first" and [f.result(0) for f in queued] == ["echo q0", "echo q1", "echo q2", "echo q3"]
    assert model.calls == [["first"], ["q0", "q2"], ["q1", "q3"]]


def test_a_short_batch_waits_its_gather_window_and_a_full_one_does_not():
    """Agents' next steps arrive moments apart: with a gather window a batch short of full waits for
    them (one batch, not two); a full batch goes at once."""
    model = FakeModel()
    model.release.set()  # nothing blocks
    worker = ModelWorker(model, batch_size=3, gather_s=1.0)
    try:
        early = worker.submit(job("a0"))
        time.sleep(0.2)  # the worker has taken a0 and is waiting for more
        late = worker.submit(job("a1"))
        assert early.result(10) == "echo a0" and late.result(10) == "echo a1"
        started = time.monotonic()
        full = [worker.submit(job(f"b{i}")) for i in range(3)]
        assert [f.result(10) for f in full] == ["echo b0", "echo b1", "echo b2"]
        assert time.monotonic() - started < 0.9  # full: it did not wait out the window
    finally:
        worker.stop()
    assert model.calls == [["a0", "a1"], ["b0", "b1", "b2"]]
