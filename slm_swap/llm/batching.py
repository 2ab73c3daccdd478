"""One thread owns the local model; requests queue for it and are generated in batches.

`slm-swap serve` answers HTTP requests through it, and the agent eval's local model
(`trajectories.agent_models`) runs every concurrent agent's steps through it, so steps of agents
running side by side are decoded together as one batch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from slm_swap.llm.local import LocalModel


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text before the first stop sequence (OpenAI leaves the sequence out), and whether one was
    found. The decoder ends a row as soon as its text holds one; the text is cut here."""
    found = [text.index(stop) for stop in stops if stop in text]
    return (text[: min(found)], True) if found else (text, False)


@dataclass
class Job:
    """One request: chat messages, the adapter to use (None: the base model), a token budget and
    stop strings; the result (a `Generation`) or the error arrives on `future`."""

    messages: list[dict[str, str]]
    adapter: str | None
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    future: Future = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)

    def abandon(self) -> None:
        """The caller has gone (a client hung up): a queued job is skipped, and a running one's row
        leaves its batch at the next decode step (its result, finish reason "abandoned", is unused).
        `future.cancel()` alone cannot stop a job that is already running."""
        self.abandoned.set()
        self.future.cancel()


@dataclass
class _Call:
    """Work on the model itself (loading an adapter), run by the worker between two batches."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class ModelWorker:
    """The only thread that touches the model: takes queued jobs, batches compatible ones, and runs
    `call`s between batches."""

    def __init__(self, model: LocalModel, batch_size: int, gather_s: float = 0.0):
        """`gather_s`: how long a batch short of `batch_size` waits for more jobs before it runs (0: it
        runs at once). Callers whose requests come in waves, such as agents running side by side, want
        a moment: each decode step costs about as much for 2 rows as for 8 on a small model."""
        self.model = model
        self.batch_size = batch_size
        self.gather_s = gather_s
        self.jobs: queue.Queue[Job | _Call | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="slm-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        self.jobs.put(job)
        return job.future

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the worker thread before the next batch starts (never during one): how a
        served model gains an adapter while requests keep coming. Its result or exception in the future."""
        call = _Call(fn)
        self.jobs.put(call)
        return call.future

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        # Strictly fair: `pending` holds every waiting job in arrival order, and each batch is the
        # oldest one plus the next compatible ones (same adapter and max_tokens), so a job is served
        # within as many batches as there are jobs older than it, whatever keeps arriving.
        pending: list[Job] = []
        stopping = False  # `None` was queued: serve what came before it, then return
        while True:
            gather_until = None
            while not stopping:  # take everything that has arrived, in order
                if not pending:
                    timeout = None  # nothing to do: wait for the next arrival
                elif len(pending) < self.batch_size and self.gather_s > 0:
                    gather_until = gather_until or time.monotonic() + self.gather_s
                    timeout = max(0.0, gather_until - time.monotonic())
                else:
                    timeout = 0.0
                try:
                    job = self.jobs.get_nowait() if timeout == 0 else self.jobs.get(timeout=timeout)
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                elif isinstance(job, _Call):
                    self._run_call(job)
                else:
                    pending.append(job)
            # Callers that hung up (client timeout) abandoned their jobs: they take no batch slot.
            pending = [job for job in pending if not job.future.cancelled()]
            if not pending:
                if stopping:
                    return
                continue
            oldest, batch, rest = pending[0], [pending[0]], []
            for job in pending[1:]:
                same = job.adapter == oldest.adapter and job.max_tokens == oldest.max_tokens
                (batch if same and len(batch) < self.batch_size else rest).append(job)
            pending = rest
            self._generate(batch)

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except Exception as exc:  # the caller gets it; the worker lives on
            call.future.set_exception(exc)

    def _generate(self, batch: list[Job]) -> None:
        # Callers that hung up (client timeout) abandoned their jobs: don't spend the CPU on them.
        # (`_run` dropped those it saw; this also catches any cancelled since.)
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            prompts = [self.model.render(job.messages) for job in batch]
            results = self.model.generate(prompts, adapter=batch[0].adapter, max_new_tokens=batch[0].max_tokens,
                                          stop=[job.stop for job in batch],
                                          abandoned=[job.abandoned.is_set for job in batch])
        except Exception as exc:  # reported to each caller (the server answers 500); the worker lives on
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)
