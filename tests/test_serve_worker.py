"""The server's model worker: batching of queued requests and skipping requests whose client left."""

from __future__ import annotations

import threading
import time

from slm_swap.serve import ModelWorker, _Job


class FakeModel:
    """Records each generate call; the first call waits until released, so jobs pile up behind it."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def render(self, messages):
        return messages[-1]["content"]

    def generate(self, prompts, adapter=None, max_new_tokens=None):
        self.calls.append(list(prompts))
        if len(self.calls) == 1:
            self.release.wait(10)
        return [f"echo {p}" for p in prompts]


def job(text, adapter=None):
    return _Job([{"role": "user", "content": text}], adapter, 16)


def test_queued_jobs_for_the_same_model_run_as_one_batch_and_cancelled_ones_are_skipped():
    model = FakeModel()
    worker = ModelWorker(model, batch_size=8)
    try:
        first = worker.submit(job("first"))
        while not model.calls:  # the worker is busy with `first`
            time.sleep(0.01)
        queued = [worker.submit(job(f"q{i}")) for i in range(3)]
        other_adapter = worker.submit(job("tuned", adapter="toolcall"))
        gone = worker.submit(job("client left"))
        assert gone.cancel()
        model.release.set()
        assert first.result(10) == "echo first"
        assert [f.result(10) for f in queued] == ["echo q0", "echo q1", "echo q2"]
        assert other_adapter.result(10) == "echo tuned"
    finally:
        worker.stop()
    assert model.calls == [["first"], ["q0", "q1", "q2"], ["tuned"]]  # "client left" never generated
