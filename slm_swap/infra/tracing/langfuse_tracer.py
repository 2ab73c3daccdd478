"""Tracing to Langfuse: `LangfuseTracer` opens each run as a trace through the process's client; an
eval's examples become a dataset run (`run_experiment`), published by a flush bounded in time."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langfuse import Evaluation, propagate_attributes
from opentelemetry import context as otel_context

from slm_swap.infra.config import REDACTED, Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.tracing.clients import bounded, describe, langfuse_client
from slm_swap.infra.tracing.datasets import dataset_upload
from slm_swap.infra.tracing.interface import NullRun, Run, Tracer
from slm_swap.infra.tracing.masking import MASK, truncate
from slm_swap.infra.tracing.problems import PROBLEMS
from slm_swap.infra.tracing.settings import langfuse_settings, require_langfuse_settings


class _LangfuseRun(Run):
    def __init__(self, tracer: LangfuseTracer, root: Any, stack: contextlib.ExitStack, metadata: dict[str, Any]):
        self._tracer, self._root, self._stack, self._metadata = tracer, root, stack, metadata
        self.trace_id, self._dataset, self._experiment_name = root.trace_id, None, ""
        self._examples: dict[int, dict[str, Any]] = {}
        self._rates: dict[str, float] = {}

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # a tracing bug must not fail the command
            self._tracer._note(f"could not record {what}: {type(exc).__name__}: {exc}")

    def use_dataset(self, name, items, *, metadata, experiment) -> None:
        self._experiment_name = experiment
        self._dataset = dataset_upload(self._tracer._client, name, items, metadata)

    def example(self, index, *, input, output, metadata, scores=None, generation=None) -> None:
        if self._dataset is not None:  # recorded as the dataset run, at flush
            self._examples[index] = {"output": output, "scores": dict(scores or {}), "generation": dict(generation or {})}
        else:
            self._guard(f"example {index}", lambda: self._root.start_observation(
                name=f"example-{index}", input=input, output=output, metadata={"example_index": index, **metadata}).end())

    def child(self, name, *, input, output, metadata, children=()) -> None:
        def record() -> None:
            parent = self._root.start_observation(name=name, input=input, output=output, metadata=metadata)
            for entry in children:
                generation = entry.get("generation")
                common = {"name": entry["name"], "input": entry.get("input"), "output": entry.get("output"),
                          "metadata": entry.get("metadata")}
                if generation:
                    usage = {"input": generation.get("prompt_tokens"), "output": generation.get("completion_tokens")}
                    parent.start_observation(as_type="generation", model=generation.get("model"),
                                             usage_details={k: v for k, v in usage.items() if v is not None},
                                             **common).end()
                else:
                    parent.start_observation(**common).end()
            parent.end()

        self._guard(f"observation {name!r}", record)

    def event(self, name, *, metadata) -> None:
        self._guard(f"event {name!r}", lambda: self._root.create_event(name=name, metadata=metadata))

    def score(self, name, value) -> None:
        if not isinstance(value, (int, float)) or not math.isfinite(value):  # bools count as 1.0/0.0
            return self._tracer._note(f"score {name!r} is not a finite number ({value!r}); not sent")
        self._rates[name] = float(value)
        self._guard(f"score {name!r}", lambda: self._root.score_trace(name=name, value=float(value), data_type="NUMERIC"))

    def update(self, output=None, metadata=None) -> None:
        if output is not None or metadata:
            self._guard("the run's output", lambda: self._root.update(output=output, metadata=metadata))

    def _end(self, error: BaseException | None) -> None:
        if error is not None:  # set by hand and kept from OpenTelemetry, which would record the raw text
            message = truncate(MASK.text(f"{type(error).__name__}: {error}".rstrip(": ")))
            self._guard("the error", lambda: self._root.update(level="ERROR", status_message=message))
        self._guard("the end of the run", self._stack.close)
        if error is None and self._dataset is not None and self._examples:
            self._tracer._experiments.append(self)

    def _publish(self) -> None:
        """The dataset run: `run_experiment` over the recorded examples (on flush's worker)."""
        dataset, items = self._dataset.result()
        client, examples = self._tracer._client, self._examples

        def task(*, item: Any, **_: Any) -> Any:
            example = examples[item.metadata["index"]]
            if generation := example["generation"]:  # ends after its measured latency
                usage = {"input": generation.get("prompt_tokens"), "output": generation.get("completion_tokens")}
                started_ns = time.time_ns()
                client.start_observation(name="generation", as_type="generation", model=generation.get("model"),
                                         input=item.input, output=example["output"],
                                         usage_details={k: v for k, v in usage.items() if v is not None},
                                         ).end(end_time=started_ns + int(generation.get("latency_s", 0) * 1e9))
            return example["output"]

        def metrics(*, metadata: Any, **_: Any) -> list[Evaluation]:
            return [Evaluation(name=k, value=float(v)) for k, v in examples[metadata["index"]]["scores"].items()]

        def rates(**_: Any) -> list[Evaluation]:
            return [Evaluation(name=name, value=value) for name, value in self._rates.items()]

        tags = {**self._metadata, "langfuse_trace_id": self.trace_id}
        result = client.run_experiment(
            name=self._experiment_name, description=f"SLM Swap eval, command trace {self.trace_id}",
            data=[items[index] for index in sorted(examples) if index in items], task=task, evaluators=[metrics],
            run_evaluators=[rates], metadata={k: str(v) for k, v in tags.items() if isinstance(v, (str, int, float))})
        self.experiment = {"dataset": dataset, "run": result.run_name, "id": result.experiment_id, "url": result.experiment_url}


class LangfuseTracer(Tracer):
    """Traces through the process's Langfuse client; `flush()` takes at most `flush_timeout_s`."""

    def __init__(self, settings: Settings, *, flush_timeout_s: float = 10.0):
        if not flush_timeout_s > 0:
            raise ValueError("flush_timeout_s must be positive")
        require_langfuse_settings(settings)  # even under LANGFUSE_DISABLED=1: blank keys make the SDK read the env
        self._bound, self._host = float(flush_timeout_s), langfuse_settings(settings)["LANGFUSE_HOST"]
        try:  # one request with its retries fits in a flush
            self._entry = langfuse_client(settings, request_timeout_s=max(1, min(5, int(self._bound / 2))))
        except (SlmSwapError, ValueError):
            raise
        except Exception as exc:
            raise SlmSwapError(f"could not start Langfuse tracing: {describe(exc)}") from exc
        self._client, self._experiments, self._notes = self._entry.langfuse, [], []

    def _note(self, text: str) -> None:
        self._notes.append(" ".join(MASK.text(text).split())[:300])

    @contextlib.contextmanager
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any], tags: Sequence[str] = ()) -> Iterator[Run]:
        stack = contextlib.ExitStack()
        try:  # from an empty OpenTelemetry context: a trace of its own, even inside another run
            stack.callback(otel_context.detach, otel_context.attach(otel_context.Context()))
            root = stack.enter_context(self._client.start_as_current_observation(name=name, input=input, metadata=metadata))
            short = {k: v for k, v in MASK(data=metadata).items() if isinstance(v, (str, int, float, bool))
                     and v != REDACTED and len(json.dumps(v)) <= 200}  # the SDK drops longer trace metadata
            stack.enter_context(propagate_attributes(trace_name=name, metadata=short or None, tags=list(tags) or None))
            run: Run = _LangfuseRun(self, root, stack, metadata)
        except Exception as exc:
            with contextlib.suppress(Exception):
                stack.close()
            self._note(f"could not start run {name!r}: {type(exc).__name__}: {exc}")
            run = NullRun()
        try:
            yield run
        except BaseException as exc:
            if isinstance(run, _LangfuseRun):
                run._end(error=exc)
            raise
        if isinstance(run, _LangfuseRun):
            run._end(error=None)

    def flush(self) -> bool:
        runs, self._experiments = self._experiments, []
        late, stage, worker = [], ["the flush"], set()  # written by the worker, which may outlive the bound

        def work() -> None:
            worker.add(threading.get_ident())
            for run in runs:
                stage[0] = f"experiment {run._experiment_name!r}"
                try:
                    run._publish()
                except Exception as exc:
                    late.append(f"{stage[0]} not recorded: {describe(exc)}")
            stage[0] = "the flush"
            self._client.flush()

        finished, error = bounded(work, self._bound)
        for text in list(late) + ([f"flush failed: {describe(error)}"] if error else []) \
                + ([] if finished else [f"{stage[0]} did not finish within {self._bound:g}s"]):
            self._note(text)
        if sdk := PROBLEMS.drain(self._entry.threads | worker | {threading.get_ident()}):
            self._note(sdk)
        problems, self._notes = self._notes, []
        self._entry.last_flush_ok = not problems
        if problems:
            print(f"warning: traces were not delivered to Langfuse at {self._host}: {'; '.join(problems)}", file=sys.stderr)
        return not problems
