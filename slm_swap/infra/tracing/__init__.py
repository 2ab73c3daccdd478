"""Langfuse tracing for `eval`, `train` and `compare`: the only module that imports `langfuse`.

    with open_tracer(settings) as tracer:   # SlmSwapError unless LANGFUSE_* are set or LANGFUSE_DISABLED=1
        with tracer.run("eval toolcall azure", input={...}, metadata={"prefect_flow_run_id": id}) as run:
            run.use_dataset("slm-swap/xlam/toolcall/test", items, metadata={"sha256": sha}, experiment="azure gpt-4o")
            run.example(0, input=prompt, output=text, metadata={...}, scores={"valid_call": True},
                        generation={"model": "gpt-4o", "prompt_tokens": 812, "completion_tokens": 31, "latency_s": 0.9})
            run.score("valid_call_rate", 0.82)
        tracer.flush()   # False, plus one stderr line, if something was not delivered
        run.experiment   # the dataset run: {"dataset", "run", "id", "url"}

A run is a trace; `event` an event observation, `score` a score on the trace. An eval that calls
`use_dataset` is a Langfuse experiment: its split a dataset (one item per row, uploaded once, in the
background while the eval runs), the eval a dataset run whose example traces link to their items,
each with a generation (model, tokens, latency) and its metrics as scores, the rates as run scores.
Under LANGFUSE_DISABLED=1 a `NullTracer` records nothing through the same interface.

Public SDK API only: one client per process (the SDK keeps one per public key), `mask=` and
`mask_otel_spans=`, `start_as_current_observation`, `score_trace`, the dataset calls,
`run_experiment`, `flush`, `shutdown`. The SDK logs failed deliveries rather than raising: its log
records are collected (not printed) and `flush()` reports them in one line. `flush()` publishes the
experiments and flushes on a worker thread joined with `flush_timeout_s`: a Langfuse that is down,
failing or hanging costs a command at most that, plus `EXIT_TIMEOUT_S` for the client's shutdown at
exit (which also removes the SDK's own, unbounded, exit hook). Values under a key containing
key/secret/token/password and the secret values in `Settings` become "[redacted]", values are
capped at 4 KB, and every exported string attribute is scrubbed once more.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlencode

import httpx
from langfuse import Evaluation, Langfuse, propagate_attributes
from langfuse.api import NotFoundError
from langfuse.types import MaskOtelSpansResult, OtelSpanPatch
from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from pydantic import BaseModel, SecretBytes, SecretStr

from slm_swap.infra.config import REDACTED, Settings
from slm_swap.infra.errors import SlmSwapError

SECRET_KEY_PARTS = ("key", "secret", "token", "password")  # broad: hides "max_tokens" too, rather than leak
VALUE_CAP_BYTES = 4096  # per value, or per top-level entry of a bigger mapping
EXIT_TIMEOUT_S = 1.0
DATASET_WRITERS = 4  # parallel dataset-item uploads


def _langfuse_settings(settings: Settings) -> dict[str, str]:
    text = lambda v: (v.get_secret_value() if isinstance(v, SecretStr) else v or "").strip()  # noqa: E731
    return {"LANGFUSE_PUBLIC_KEY": text(settings.langfuse_public_key),
            "LANGFUSE_SECRET_KEY": text(settings.langfuse_secret_key),
            "LANGFUSE_HOST": text(settings.langfuse_host).rstrip("/")}


def check_tracing_settings(settings: Settings) -> None:
    """Raise `SlmSwapError` (one line) unless tracing is configured or explicitly disabled."""
    if not settings.langfuse_disabled:
        _require_langfuse_settings(settings)


def _require_langfuse_settings(settings: Settings) -> None:
    values = _langfuse_settings(settings)
    if missing := [name for name, value in values.items() if not value]:
        one = len(missing) == 1
        raise SlmSwapError(f"Langfuse tracing is required but {', '.join(missing)} {'is' if one else 'are'} not set; "
                           f"set {'it' if one else 'them'} (environment or .env), or set LANGFUSE_DISABLED=1 to run "
                           "without tracing (local dry runs only)")
    if not values["LANGFUSE_HOST"].startswith(("http://", "https://")):
        raise SlmSwapError("LANGFUSE_HOST must be an http(s) URL such as https://cloud.langfuse.com, "
                           f"got {values['LANGFUSE_HOST']!r}")


def trace_url(settings: Settings, trace_id: str | None) -> str | None:
    """A trace's page, built offline (Langfuse redirects `{host}/trace/{id}` to its project)."""
    host = _langfuse_settings(settings)["LANGFUSE_HOST"]
    return f"{host}/trace/{trace_id}" if trace_id and host and not settings.langfuse_disabled else None


def comparison_url(experiments: Sequence[Mapping[str, Any] | None]) -> str | None:
    """Langfuse's experiment comparison of these dataset runs (metrics files' `langfuse_experiment`),
    the first as the baseline; None when none was recorded."""
    if not (found := [e for e in experiments if e and e.get("url") and e.get("id")]):
        return None
    query = urlencode([("baseline", found[0]["id"])] + [("c", e["id"]) for e in found[1:]])
    return f"{found[0]['url'].split('?', 1)[0]}?{query}"


def open_tracer(settings: Settings, *, flush_timeout_s: float = 10.0) -> Tracer:
    """The tracer for one command: a `LangfuseTracer`, or a `NullTracer` under LANGFUSE_DISABLED=1."""
    check_tracing_settings(settings)
    if settings.langfuse_disabled:
        print("warning: LANGFUSE_DISABLED=1: tracing is off, nothing is sent to Langfuse", file=sys.stderr)
        return NullTracer()
    return LangfuseTracer(settings, flush_timeout_s=flush_timeout_s)


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
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any]) -> Iterator[Run]:
        """One trace; an exception inside marks it as an error and is re-raised."""
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


class _Mask:
    """The client's `mask=` (inputs, outputs, metadata) and `mask_otel_spans=` (every exported
    string attribute): secrets out by key and by value, then capped."""

    secrets: tuple[str, ...] = ()

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def scrub(self, value: Any, depth: int = 0) -> Any:
        if depth > 32 or isinstance(value, (SecretStr, SecretBytes)):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")  # SecretStr fields dump as "**********"
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            return {k: REDACTED if any(p in str(k).lower() for p in SECRET_KEY_PARTS) else self.scrub(v, depth + 1)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub(item, depth + 1) for item in value]
        return value

    def __call__(self, *, data: Any, **_: Any) -> Any:
        data = self.scrub(data)
        return {k: _truncate(v) for k, v in data.items()} if isinstance(data, dict) and _size(data) > VALUE_CAP_BYTES \
            else _truncate(data)

    def spans(self, *, params: Any, **_: Any) -> MaskOtelSpansResult | None:
        patches = {key: {name: self.text(v) for name, v in span.attributes.items() if isinstance(v, str) and self.text(v) != v}
                   for key, span in params.spans.items()}
        patches = {key: OtelSpanPatch(set_attributes=changed) for key, changed in patches.items() if changed}
        return MaskOtelSpansResult(span_patches=patches) if patches else None


def _size(value: Any) -> int:
    return len((value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)).encode())


def _truncate(value: Any) -> Any:
    if _size(value) <= VALUE_CAP_BYTES:
        return value
    encoded = (value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)).encode()
    return f"{encoded[:VALUE_CAP_BYTES].decode(errors='ignore')}... [truncated: {len(encoded)} bytes, first {VALUE_CAP_BYTES} kept]"


class _Problems(logging.Handler):
    """The `langfuse` and `opentelemetry` loggers' records, kept instead of printed (an application
    that configures logging still gets them), by the thread that logged them, so a flush reports its
    own client's threads and worker only. Errors mean something was not delivered; the last warning
    or failed HTTP status explains them. Threads making this module's own calls (they raise, and the
    caller reports) are skipped."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.own = threading.local()
        self._records: list[tuple[int | None, bool, str]] = []  # (thread, is an error, text)

    def _add(self, thread: int | None, error: bool, text: str) -> None:
        self._records = (self._records + [(thread, error, " ".join(text.split())[:300])])[-500:]

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(self.own, "active", False):
            try:
                text = record.getMessage()
            except Exception:  # a malformed record is still a problem
                text = str(record.msg)
            self._add(record.thread, record.levelno >= logging.ERROR, text)

    def response(self, response: httpx.Response) -> None:  # the REST client's response hook
        method = response.request.method
        if response.status_code >= 400 and not (response.status_code == 404 and method == "GET"):
            with self.lock:
                self._add(threading.get_ident(), False, f"HTTP {response.status_code} from {method} {response.request.url.path}")

    def drain(self, threads: set[int]) -> str | None:
        with self.lock:
            mine = [record for record in self._records if record[0] in threads]
            self._records = [record for record in self._records if record[0] not in threads]
        errors = [text for _, error, text in mine if error]
        context = next((text for _, error, text in reversed(mine) if not error), None)
        return f"{len(errors)} SDK error(s), last: {errors[-1]}" + (f" (after: {context})" if context else "") \
            if errors else None


@dataclasses.dataclass
class _Client:
    langfuse: Langfuse
    config: tuple[str, str]  # host, sha256 of the secret key
    threads: set[int]  # the ones it started: span exporter, score sender, media
    last_flush_ok: bool = True


_MASK, _PROBLEMS, _LOCK = _Mask(), _Problems(), threading.Lock()
_CLIENTS: dict[str, _Client] = {}  # by public key, as the SDK keeps them
_DATASETS: dict[tuple[int, str, str | None], Future] = {}  # uploads by client, name and sha256
for _name in ("langfuse", "opentelemetry"):
    logging.getLogger(_name).addHandler(_PROBLEMS)


def _client(settings: Settings, request_timeout_s: int) -> _Client:
    """The process's client for these settings, built on first use."""
    values = _langfuse_settings(settings)
    public_key, host, secret_key = values["LANGFUSE_PUBLIC_KEY"], values["LANGFUSE_HOST"], values["LANGFUSE_SECRET_KEY"]
    config = (host, hashlib.sha256(secret_key.encode()).hexdigest())
    with _LOCK:
        _MASK.secrets = tuple(sorted(set(_MASK.secrets) | set(settings.secret_values()), key=len, reverse=True))
        if (known := _CLIENTS.get(public_key)) is not None:
            if known.config != config:
                raise SlmSwapError(f"this process already traces to {known.config[0]} with LANGFUSE_PUBLIC_KEY {public_key}; "
                                   "the Langfuse SDK keeps one client per public key and process, so another host or "
                                   "secret key for the same public key needs a process of its own")
            return known
        before = {thread.ident for thread in threading.enumerate()}
        client = Langfuse(
            public_key=public_key, secret_key=secret_key, base_url=host, timeout=request_timeout_s,
            httpx_client=httpx.Client(timeout=request_timeout_s, event_hooks={"response": [_PROBLEMS.response]}),
            tracing_enabled=True, sample_rate=1.0, flush_at=512, flush_interval=1.0, media_upload_thread_count=1,
            mask=_MASK, mask_otel_spans=_MASK.spans,
            # A provider of its own: other libraries' spans and OTEL_RESOURCE_ATTRIBUTES stay out.
            tracer_provider=TracerProvider(resource=Resource({"service.name": "slm-swap"}), sampler=ALWAYS_ON,
                                           shutdown_on_exit=False))
        # Under LANGFUSE_TRACING_ENABLED=false or OTEL_SDK_DISABLED=true the SDK's spans have no trace
        # id. The probe is never ended, so never exported.
        if client.start_observation(name="slm-swap-probe").trace_id == "0" * 32:
            raise SlmSwapError("the Langfuse SDK is switched off by the environment (LANGFUSE_TRACING_ENABLED=false or "
                               "OTEL_SDK_DISABLED=true); unset it, or set LANGFUSE_DISABLED=1 to run without tracing")
        entry = _CLIENTS[public_key] = _Client(client, config, {t.ident for t in threading.enumerate()} - before)
        # After the client, so it runs before the SDK's exit hook, which shutdown() removes.
        atexit.register(lambda: _bounded(client.shutdown, EXIT_TIMEOUT_S if entry.last_flush_ok else EXIT_TIMEOUT_S / 4))
        return entry


def _bounded(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, BaseException | None]:
    """(finished, error) of fn on a daemon thread joined for at most timeout_s (the SDK's flush
    waits on queues without a bound); an unfinished thread is left behind, never holding the exit."""
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="slm-swap-langfuse", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive(), outcome.get("error")


def _in_background(fn: Callable[[], Any]) -> Future:
    """fn's result, from a daemon thread (an executor's threads would hold the exit while Langfuse hangs)."""
    future: Future = Future()

    def target() -> None:
        _PROBLEMS.own.active = True  # failures raise into the future; their log records are not news
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name="slm-swap-langfuse-dataset", daemon=True).start()
    return future


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)  # an API error's text carries the response's headers
    return f"{type(exc).__name__} (HTTP {status})" if status else f"{type(exc).__name__}: {exc}"


def _sync_dataset(client: Langfuse, name: str, items: Sequence[Mapping[str, Any]],
                  metadata: dict[str, Any]) -> tuple[str, dict[int, Any]]:
    """(dataset name, item by index), creating what is missing. A dataset of this name holding other
    data (another sha256) is left alone for the version name `name@<sha256[:12]>`: items never mix."""
    sha256 = metadata["sha256"]
    for candidate in (name, f"{name}@{sha256[:12]}"):
        try:
            dataset = client.get_dataset(candidate, fetch_items_page_size=100)
        except NotFoundError:
            client.create_dataset(name=candidate, description="SLM Swap eval split, one item per row", metadata=metadata)
            existing: dict[str, Any] = {}
            break
        if isinstance(dataset.metadata, dict) and dataset.metadata.get("sha256") == sha256:
            existing = {item.id: item for item in dataset.items}
            break
    else:
        raise SlmSwapError(f"Langfuse datasets {name!r} and {candidate!r} hold other data than sha256 {sha256[:12]}")
    ids = [hashlib.sha256(f"{candidate}\n{sha256}\n{index}".encode()).hexdigest()[:32] for index in range(len(items))]
    missing = [index for index, item_id in enumerate(ids) if item_id not in existing]

    def create(indexes: list[int]) -> None:
        for index in indexes:  # scrubbed, not capped: the items are the data
            item = client.create_dataset_item(dataset_name=candidate, id=ids[index], metadata={"index": index},
                                              input=_MASK.scrub(items[index]["input"]),
                                              expected_output=_MASK.scrub(items[index]["expected_output"]))
            existing[item.id] = item

    for writer in [_in_background(lambda part=missing[n::DATASET_WRITERS]: create(part)) for n in range(DATASET_WRITERS)]:
        writer.result()
    return candidate, {index: existing[item_id] for index, item_id in enumerate(ids)}


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
        client, self._experiment_name = self._tracer._client, experiment
        key = (id(client), name, metadata.get("sha256"))
        with _LOCK:  # evals of one split in one process (a pipeline) share one upload
            known = _DATASETS.get(key)
            if known is None or (known.done() and known.exception() is not None):
                known = _DATASETS[key] = _in_background(lambda: _sync_dataset(client, name, list(items), _MASK(data=metadata)))
        self._dataset = known

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
            message = _truncate(_MASK.text(f"{type(error).__name__}: {error}".rstrip(": ")))
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
        _require_langfuse_settings(settings)  # even under LANGFUSE_DISABLED=1: blank keys make the SDK read the env
        self._bound, self._host = float(flush_timeout_s), _langfuse_settings(settings)["LANGFUSE_HOST"]
        try:  # one request with its retries fits in a flush
            self._entry = _client(settings, request_timeout_s=max(1, min(5, int(self._bound / 2))))
        except (SlmSwapError, ValueError):
            raise
        except Exception as exc:
            raise SlmSwapError(f"could not start Langfuse tracing: {_describe(exc)}") from exc
        self._client, self._experiments, self._notes = self._entry.langfuse, [], []

    def _note(self, text: str) -> None:
        self._notes.append(" ".join(_MASK.text(text).split())[:300])

    @contextlib.contextmanager
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any]) -> Iterator[Run]:
        stack = contextlib.ExitStack()
        try:  # from an empty OpenTelemetry context: a trace of its own, even inside another run
            stack.callback(otel_context.detach, otel_context.attach(otel_context.Context()))
            root = stack.enter_context(self._client.start_as_current_observation(name=name, input=input, metadata=metadata))
            short = {k: v for k, v in _MASK(data=metadata).items() if isinstance(v, (str, int, float, bool))
                     and v != REDACTED and len(json.dumps(v)) <= 200}  # the SDK drops longer trace metadata
            stack.enter_context(propagate_attributes(trace_name=name, metadata=short or None))
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
                    late.append(f"{stage[0]} not recorded: {_describe(exc)}")
            stage[0] = "the flush"
            self._client.flush()

        finished, error = _bounded(work, self._bound)
        for text in list(late) + ([f"flush failed: {_describe(error)}"] if error else []) \
                + ([] if finished else [f"{stage[0]} did not finish within {self._bound:g}s"]):
            self._note(text)
        if sdk := _PROBLEMS.drain(self._entry.threads | worker | {threading.get_ident()}):
            self._note(sdk)
        problems, self._notes = self._notes, []
        self._entry.last_flush_ok = not problems
        if problems:
            print(f"warning: traces were not delivered to Langfuse at {self._host}: {'; '.join(problems)}", file=sys.stderr)
        return not problems
