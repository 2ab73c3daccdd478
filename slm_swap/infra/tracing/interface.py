"""The tracing interface commands use: a `Tracer` opens `Run`s (one trace each); the base classes
are the null versions, which record nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any


class Run:
    """One command run: one trace. These methods record nothing (`NullRun`); none raises."""

    trace_id: str | None = None
    experiment: dict[str, Any] | None = None  # the eval's dataset run, once flushed

    def use_dataset(self, name: str, items: Sequence[Mapping[str, Any]], *, metadata: dict[str, Any],
                    experiment: str) -> None:
        """Make this run dataset run `experiment` of dataset `name` (items: `input`,
        `expected_output`; metadata holds `sha256`); examples then name items by index."""

    def example(self, index: int, *, input: Any, output: Any, metadata: dict[str, Any],
                scores: Mapping[str, float] | None = None, generation: Mapping[str, Any] | None = None) -> None:
        """One example: its item's trace in the dataset run, else a child observation. `scores`:
        its metrics; `generation`: model, prompt_tokens, completion_tokens, latency_s."""

    def child(self, name: str, *, input: Any, output: Any, metadata: dict[str, Any],
              children: Sequence[Mapping[str, Any]] = ()) -> None:
        """A child observation with children of its own (e.g. a trajectory and its steps). Each child:
        `name`, `input`, `output`, `metadata`, and `generation` (model, prompt_tokens,
        completion_tokens, latency_s) to record it as a model call."""

    def event(self, name: str, *, metadata: dict[str, Any]) -> None:
        """A point-in-time event, e.g. compare's decision."""

    def score(self, name: str, value: float) -> None:
        """A numeric score on the trace (and on the dataset run)."""

    def update(self, output: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        """Set the trace's output and/or add metadata."""


class NullRun(Run):
    """Tracing off: records nothing."""


class Tracer:
    """Opens runs; this base (`NullTracer`) records nothing."""

    @contextlib.contextmanager
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any], tags: Sequence[str] = ()) -> Iterator[Run]:
        """One trace (`tags` on it, for filtering); an exception inside marks it as an error and is re-raised."""
        yield NullRun()

    def flush(self) -> bool:
        """Publish experiments, deliver what is buffered, within the bound; True if all arrived."""
        return True

    def close(self) -> None:
        """Nothing per command: the process's client is shut down at exit, within EXIT_TIMEOUT_S."""

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullTracer(Tracer):
    """Tracing off (LANGFUSE_DISABLED=1): sends nothing, `trace_id` is None."""
