"""Langfuse tracing for `eval`, `train` and `compare`. The only module that imports `langfuse`.

Tracing is mandatory: `open_tracer` raises `SlmSwapError` unless LANGFUSE_PUBLIC_KEY,
LANGFUSE_SECRET_KEY and LANGFUSE_HOST are set, or LANGFUSE_DISABLED=1 is (local dry runs), in which
case it warns once and returns a `NullTracer` with the same interface, so callers never ask whether
tracing is on::

    from slm_swap.tracing import open_tracer, trace_url

    with open_tracer(settings) as tracer:          # close() on exit, bounded
        with tracer.run("eval", input={"track": "toolcall"},
                        metadata={"prefect_flow_run_id": flow_run_id}) as run:
            for index, record in enumerate(records):
                run.example(index, input=record.prompt, output=record.answer, metadata={"ok": record.ok})
            run.event("decision", metadata={"fine_tune": True})
            run.score("accuracy", 0.82)
            run.update(output={"accuracy": 0.82})
        if url := trace_url(settings, run.trace_id):
            print(f"trace: {url}")
        tracer.flush()                              # False, plus one stderr line, if not delivered

One `run` is one Langfuse trace: its root observation carries the input, output and metadata (the
v5 data model keeps a trace's input/output on its root observation), every `example` is a child
observation, `event` is an event observation and `score` is a numeric score on the trace.

Tracing never fails a command. A Langfuse that is down or answers errors costs at most
`flush_timeout_s` in `flush()`, which then returns False and prints one line saying the traces were
not delivered; `close()` is bounded by `flush_timeout_s` too (by 1 s once a flush has failed). An exception inside `run` marks the trace as an error
and is re-raised unchanged.

What goes on the wire is scrubbed first: any key containing "key", "secret", "token" or "password"
(case-insensitive) has its value replaced by "[redacted]", the secret values found in `Settings`
are replaced wherever they appear in a string, and every value is capped at 4 KB.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
import requests
from langfuse import Langfuse, propagate_attributes
from langfuse import __version__ as langfuse_version
from opentelemetry import context as otel_context_api
from opentelemetry import trace as otel_trace_api
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from pydantic import BaseModel, SecretBytes, SecretStr

from slm_swap.config import REDACTED, Settings
from slm_swap.errors import SlmSwapError

__all__ = [
    "LangfuseTracer",
    "NullRun",
    "NullTracer",
    "REDACTED",
    "Run",
    "Tracer",
    "VALUE_CAP_BYTES",
    "check_tracing_settings",
    "open_tracer",
    "trace_url",
]

# Substrings of a key name whose value is never sent. Deliberately broad (it also hides e.g.
# "max_tokens"); a hidden harmless value is cheaper than a leaked credential.
SECRET_KEY_PARTS = ("key", "secret", "token", "password")
# Each input, output and metadata value is capped, so one huge example cannot blow the OTLP request
# or the span attribute limits.
VALUE_CAP_BYTES = 4096
# Trace-level metadata (propagated to every observation, filterable in the UI) must be short: the
# SDK drops values longer than 200 characters with a warning, so only short scalars are propagated.
_TRACE_METADATA_MAX_CHARS = 200
_MAX_DEPTH = 32

OTEL_TRACES_PATH = "/api/public/otel/v1/traces"


# -- settings ------------------------------------------------------------------------------------


def _text(value: SecretStr | str | None) -> str:
    """A setting's plain value, blank when unset; a blank value counts as missing."""
    if isinstance(value, SecretStr):
        return value.get_secret_value().strip()
    return (value or "").strip()


def _langfuse_settings(settings: Settings) -> dict[str, str]:
    return {
        "LANGFUSE_PUBLIC_KEY": _text(settings.langfuse_public_key),
        "LANGFUSE_SECRET_KEY": _text(settings.langfuse_secret_key),
        "LANGFUSE_HOST": _text(settings.langfuse_host),
    }


def check_tracing_settings(settings: Settings) -> None:
    """Raise `SlmSwapError` (one line) unless tracing is configured or explicitly disabled."""
    if not settings.langfuse_disabled:
        _require_langfuse_settings(settings)


def _require_langfuse_settings(settings: Settings) -> None:
    required = _langfuse_settings(settings)
    missing = [name for name, value in required.items() if not value]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise SlmSwapError(
            f"Langfuse tracing is required but {', '.join(missing)} {verb} not set; set "
            f"{'it' if len(missing) == 1 else 'them'} (environment or .env), or set LANGFUSE_DISABLED=1 "
            "to run without tracing (local dry runs only)"
        )
    host = required["LANGFUSE_HOST"]
    if not host.startswith(("http://", "https://")):
        raise SlmSwapError(f"LANGFUSE_HOST must be an http(s) URL such as https://cloud.langfuse.com, got {host!r}")


def trace_url(settings: Settings, trace_id: str | None) -> str | None:
    """Where to open a trace in the Langfuse UI, or None when there is no trace.

    The v5 SDK's `get_trace_url` needs the project id, which costs a `GET /api/public/projects`
    round trip. Langfuse's web app serves `{host}/trace/{id}` and redirects it to the project's
    trace page, so the link is built offline instead.
    """
    host = _text(settings.langfuse_host).rstrip("/")
    if settings.langfuse_disabled or not trace_id or not host:
        return None
    return f"{host}/trace/{trace_id}"


def open_tracer(settings: Settings, *, flush_timeout_s: float = 10.0) -> Tracer:
    """The tracer for one command: a `LangfuseTracer`, or a `NullTracer` under LANGFUSE_DISABLED=1."""
    check_tracing_settings(settings)
    if settings.langfuse_disabled:
        print("warning: LANGFUSE_DISABLED=1: tracing is off, nothing is sent to Langfuse", file=sys.stderr)
        return NullTracer()
    return LangfuseTracer(settings, flush_timeout_s=flush_timeout_s)


# -- the interface -------------------------------------------------------------------------------


class Run(ABC):
    """One command run: one Langfuse trace. Every method is safe to call; none raises."""

    trace_id: str | None

    @abstractmethod
    def example(self, index: int, *, input: Any, output: Any, metadata: dict[str, Any]) -> None:
        """One child observation for one example (values capped at VALUE_CAP_BYTES)."""

    @abstractmethod
    def event(self, name: str, *, metadata: dict[str, Any]) -> None:
        """A point-in-time event in the trace, e.g. compare's decision."""

    @abstractmethod
    def score(self, name: str, value: float) -> None:
        """A numeric Langfuse score on the trace."""

    @abstractmethod
    def update(self, output: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        """Set the trace's output and/or add metadata."""


class Tracer(ABC):
    @abstractmethod
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any]) -> contextlib.AbstractContextManager[Run]:
        """A context manager around one trace; an exception inside marks it as an error and re-raises."""

    @abstractmethod
    def flush(self) -> bool:
        """Deliver what is buffered; True if everything so far reached Langfuse. Never raises."""

    @abstractmethod
    def close(self) -> None:
        """Release threads and connections (bounded). Call `flush()` first to learn about delivery."""

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullRun(Run):
    trace_id = None

    def example(self, index: int, *, input: Any, output: Any, metadata: dict[str, Any]) -> None:
        pass

    def event(self, name: str, *, metadata: dict[str, Any]) -> None:
        pass

    def score(self, name: str, value: float) -> None:
        pass

    def update(self, output: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        pass


class NullTracer(Tracer):
    """Tracing off (LANGFUSE_DISABLED=1): same interface, sends nothing, `trace_id` is None."""

    @contextlib.contextmanager
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any]) -> Iterator[Run]:
        yield NullRun()

    def flush(self) -> bool:
        return True

    def close(self) -> None:
        pass


# -- payloads: scrub, then cap -------------------------------------------------------------------


class _Payloads:
    """Makes caller values safe to send: secrets redacted by key and by value, sizes capped."""

    def __init__(self, settings: Settings):
        # Every secret the settings hold (Langfuse, Azure, hosted keys), to scrub wherever it
        # appears in a string, e.g. in an exception message.
        self._secrets = settings.secret_values()

    def scrub(self, value: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            return "[too deep]"
        if isinstance(value, (SecretStr, SecretBytes)):
            return REDACTED
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")  # SecretStr fields dump as "**********"
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            return {
                key: REDACTED if _is_secret_key(key) else self.scrub(item, depth + 1) for key, item in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub(item, depth + 1) for item in value]
        return value

    def value(self, value: Any) -> Any:
        """One input/output value: scrubbed, then capped as a whole."""
        return None if value is None else _cap(self.scrub(value))

    def metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Metadata: scrubbed, then each value capped on its own."""
        if not metadata:
            return None
        scrubbed = self.scrub(dict(metadata))
        return {str(key): _cap(item) for key, item in scrubbed.items()}

    def message(self, text: str) -> str:
        return str(_cap(self.scrub(text)))


def _is_secret_key(key: Any) -> bool:
    lowered = str(key).lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def _cap(value: Any) -> Any:
    """The value itself if its JSON form fits VALUE_CAP_BYTES, else a truncated string with a marker."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    encoded = text.encode("utf-8")
    if len(encoded) <= VALUE_CAP_BYTES:
        return value
    head = encoded[:VALUE_CAP_BYTES].decode("utf-8", errors="ignore")
    return f"{head}... [truncated: {len(encoded)} bytes, first {VALUE_CAP_BYTES} kept]"


def _trace_metadata(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The short scalar entries of a run's metadata (e.g. prefect_flow_run_id), for the trace level."""
    short = {
        key: value
        for key, value in (metadata or {}).items()
        if key.isascii()
        and value != REDACTED
        and isinstance(value, (str, int, float, bool))
        and len(json.dumps(value, ensure_ascii=False)) <= _TRACE_METADATA_MAX_CHARS
    }
    return short or None


# -- delivery bookkeeping ------------------------------------------------------------------------


class _Delivery:
    """What reached Langfuse. The SDK swallows export failures (it only logs them), so the tracer
    watches its own exporter and HTTP client to be able to tell the caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: list[str] = []
        self.spans_ended = 0
        self.spans_exported = 0
        self.span_batches_failed = 0
        self.last_span_failure: str | None = None
        # Score requests by (method, path, body hash): a retried batch has the same key, so only
        # its last outcome counts.
        self._api_outcomes: dict[tuple[str, str, str], str | None] = {}

    def problem(self, text: str) -> None:
        with self._lock:
            if len(self._problems) < 20:
                self._problems.append(" ".join(text.split()))

    def span_ended(self) -> None:
        with self._lock:
            self.spans_ended += 1

    def spans_sent(self, count: int) -> None:
        with self._lock:
            self.spans_exported += count

    def span_batch_failed(self, reason: str | None) -> None:
        with self._lock:
            self.span_batches_failed += 1
            self.last_span_failure = reason

    def api_outcome(self, key: tuple[str, str, str], failure: str | None) -> None:
        with self._lock:
            self._api_outcomes[key] = failure

    def problems(self) -> list[str]:
        with self._lock:
            found = list(self._problems)
            if self.span_batches_failed:
                found.append(
                    f"{self.span_batches_failed} span batch(es) failed ({self.last_span_failure or 'export failed'})"
                )
            elif self.spans_ended > self.spans_exported:
                found.append(f"{self.spans_ended - self.spans_exported} span(s) were not exported")
            failed = [failure for failure in self._api_outcomes.values() if failure]
            if failed:
                found.append(f"{len(failed)} score request(s) failed ({failed[-1]})")
            return found


class _NotingSession(requests.Session):
    """The OTLP exporter's HTTP session: remembers why the last request failed (the exporter only
    reports FAILURE). Subclassing keeps requests' proxy and CA handling."""

    def __init__(self) -> None:
        super().__init__()
        self.last_failure: str | None = None

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            response = super().request(method, url, *args, **kwargs)
        except Exception as exc:
            self.last_failure = type(exc).__name__
            raise
        if response.status_code >= 300:
            self.last_failure = f"HTTP {response.status_code}"
        return response


class _CountingExporter(SpanExporter):
    """Wraps the OTLP exporter to count spans delivered and batches lost."""

    def __init__(self, inner: OTLPSpanExporter, session: _NotingSession, delivery: _Delivery):
        self._inner = inner
        self._session = session
        self._delivery = delivery
        self._shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:
            self._session.last_failure = type(exc).__name__
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._delivery.spans_sent(len(spans))
        else:
            self._delivery.span_batch_failed(self._session.last_failure)
        return result

    def shutdown(self) -> None:
        if not self._shut_down:  # close() may shut it down before the provider does
            self._shut_down = True
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _EndedSpanCounter(SpanProcessor):
    """Counts spans ended, so spans dropped before export (a full queue) do not go unnoticed."""

    def __init__(self, delivery: _Delivery):
        self._delivery = delivery

    def on_end(self, span: ReadableSpan) -> None:
        self._delivery.span_ended()


class _NotingHttpxClient(httpx.Client):
    """The SDK's REST client (scores): records each POST's final outcome. Overriding `send` keeps
    httpx's proxy and environment handling, which a custom transport would switch off."""

    def __init__(self, delivery: _Delivery, **kwargs: Any):
        super().__init__(**kwargs)
        self._delivery = delivery

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        key = None
        if request.method != "GET":  # reads (projects, health) do not count as delivery
            try:
                body_hash = hashlib.sha256(request.content).hexdigest()
            except httpx.RequestNotRead:
                body_hash = str(id(request))
            key = (request.method, request.url.path, body_hash)
        try:
            response = super().send(request, **kwargs)
        except Exception as exc:
            if key:
                self._delivery.api_outcome(key, type(exc).__name__)
            raise
        if key:
            # 207 is the scores API's "some scores were rejected".
            ok = 200 <= response.status_code < 300 and response.status_code != 207
            self._delivery.api_outcome(key, None if ok else f"HTTP {response.status_code}")
        return response


def _run_bounded(fn: Any, timeout_s: float, name: str) -> tuple[bool, BaseException | None]:
    """Run fn in a daemon thread for at most timeout_s: the SDK's own flush and shutdown wait on
    queues without a bound. Returns (finished, error); an unfinished thread is left behind."""
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported to the caller, never raised in the thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive(), outcome.get("error")


def _forget_sdk_client(public_key: str, resources: Any = None) -> None:
    """Drop the SDK's process-wide client for `public_key`.

    v5 keeps one `LangfuseResourceManager` (exporter, threads, host) per public key in a class-level
    dict, and a later `Langfuse(...)` with the same key silently reuses it, host included. Each
    tracer must own its resources, so the entry is removed before a tracer is built and when it
    closes. `resources` restricts removal to that instance.
    """
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager
    except ImportError:  # a future SDK without the registry: nothing to forget
        return
    instances = getattr(LangfuseResourceManager, "_instances", None)
    lock = getattr(LangfuseResourceManager, "_lock", None)
    if not isinstance(instances, dict) or lock is None:
        return
    with lock:
        current = instances.get(public_key)
        if current is not None and (resources is None or current is resources):
            del instances[public_key]


def _quiet_sdk_loggers() -> None:
    # With no logging configured, Python prints SDK warnings (retries, failed exports) through its
    # last-resort handler: many lines per outage. flush() reports non-delivery in one line instead.
    # A NullHandler only replaces that fallback; an application that configures logging still sees
    # these records.
    for name in ("langfuse", "opentelemetry"):
        logger = logging.getLogger(name)
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())


# -- the Langfuse tracer -------------------------------------------------------------------------


class _LangfuseRun(Run):
    def __init__(self, tracer: LangfuseTracer, root: Any, stack: contextlib.ExitStack):
        self._tracer = tracer
        self._root = root
        self._stack = stack
        self.trace_id = root.trace_id

    def _guard(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # a tracing bug must not fail the command
            self._tracer._delivery.problem(f"could not record {what}: {type(exc).__name__}: {exc}")

    def example(self, index: int, *, input: Any, output: Any, metadata: dict[str, Any]) -> None:
        payloads = self._tracer._payloads

        def record() -> None:
            child = self._root.start_observation(
                name=f"example-{index}",
                as_type="span",
                input=payloads.value(input),
                output=payloads.value(output),
                metadata={"example_index": index, **(payloads.metadata(metadata) or {})},
            )
            child.end()

        self._guard(f"example {index}", record)

    def event(self, name: str, *, metadata: dict[str, Any]) -> None:
        self._guard(
            f"event {name!r}",
            lambda: self._root.create_event(name=name, metadata=self._tracer._payloads.metadata(metadata)),
        )

    def score(self, name: str, value: float) -> None:
        if not isinstance(value, (int, float)) or not math.isfinite(value):  # bools count as 1.0/0.0
            self._tracer._delivery.problem(f"score {name!r} is not a finite number ({value!r}); not sent")
            return
        self._guard(
            f"score {name!r}",
            lambda: self._root.score_trace(name=name, value=float(value), data_type="NUMERIC"),
        )

    def update(self, output: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> None:
        if output is None and not metadata:
            return
        payloads = self._tracer._payloads
        self._guard(
            "the run's output",
            lambda: self._root.update(output=payloads.value(output), metadata=payloads.metadata(metadata)),
        )

    def _end(self, error: BaseException | None) -> None:
        if error is not None:
            # Set the error ourselves and leave the span's context without the exception: OTel
            # would otherwise attach the raw message and stack trace, past the secret scrub.
            message = self._tracer._payloads.message(f"{type(error).__name__}: {error}".rstrip(": "))
            self._guard("the error", lambda: self._root.update(level="ERROR", status_message=message))
        self._guard("the end of the run", self._stack.close)


class LangfuseTracer(Tracer):
    """Langfuse v5 SDK client, built explicitly from `Settings` and isolated from any other client."""

    def __init__(self, settings: Settings, *, flush_timeout_s: float = 10.0):
        if not flush_timeout_s > 0:
            raise ValueError("flush_timeout_s must be positive")
        # Checked even under LANGFUSE_DISABLED=1: a blank key would make the SDK read the environment.
        _require_langfuse_settings(settings)
        self._flush_timeout_s = float(flush_timeout_s)
        required = _langfuse_settings(settings)
        self._host = required["LANGFUSE_HOST"].rstrip("/")
        public_key = required["LANGFUSE_PUBLIC_KEY"]
        secret_key = required["LANGFUSE_SECRET_KEY"]
        self._payloads = _Payloads(settings)
        self._delivery = _Delivery()
        self._closed = False
        self._last_flush_ok: bool | None = None
        _quiet_sdk_loggers()

        # One request (with the exporter's retries) must fit in one flush.
        request_timeout_s = max(0.5, min(self._flush_timeout_s, 10.0))

        # Our own TracerProvider, never the global one: the SDK would otherwise install its provider
        # globally (and pick up whatever another library registered), which leaks between tracers.
        # The resource is built by hand, not Resource.create(), so nothing from OTEL_RESOURCE_ATTRIBUTES
        # or resource detectors goes on the wire; ALWAYS_ON ignores OTEL_TRACES_SAMPLER.
        self._provider = TracerProvider(
            resource=Resource({"service.name": "slm-swap"}),
            sampler=ALWAYS_ON,
            shutdown_on_exit=False,  # close() shuts it down, with a bound
        )
        self._provider.add_span_processor(_EndedSpanCounter(self._delivery))

        # The exporter is built here rather than by the SDK so its outcome can be observed; the
        # endpoint and headers are the SDK's defaults (5.0.4 LangfuseSpanProcessor).
        session = _NotingSession()
        basic_auth = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        otlp = OTLPSpanExporter(
            endpoint=f"{self._host}{OTEL_TRACES_PATH}",
            headers={
                "Authorization": f"Basic {basic_auth}",
                "x-langfuse-sdk-name": "python",
                "x-langfuse-sdk-version": langfuse_version,
                "x-langfuse-public-key": public_key,
                "x-langfuse-ingestion-version": "4",
            },
            timeout=request_timeout_s,
            compression=Compression.Gzip,  # what the SDK sends by default; Langfuse decodes gzip
            session=session,
        )
        self._exporter = _CountingExporter(otlp, session, self._delivery)
        self._http = _NotingHttpxClient(self._delivery, timeout=request_timeout_s)

        _forget_sdk_client(public_key)  # never reuse another tracer's client (and host)
        try:
            # Every setting is passed explicitly: base_url (not the deprecated host, which
            # LANGFUSE_BASE_URL in the environment would override), sampling, batching, timeouts.
            self._client = Langfuse(
                public_key=public_key,
                secret_key=secret_key,
                base_url=self._host,
                timeout=max(1, round(request_timeout_s)),
                httpx_client=self._http,
                tracing_enabled=True,
                sample_rate=1.0,
                flush_at=512,
                flush_interval=5.0,
                media_upload_thread_count=1,
                tracer_provider=self._provider,
                span_exporter=self._exporter,
            )
        except Exception as exc:
            raise SlmSwapError(f"could not start Langfuse tracing: {type(exc).__name__}: {exc}") from exc

        self._resources = getattr(self._client, "_resources", None)
        if self._resources is None or isinstance(getattr(self._client, "_otel_tracer", None), otel_trace_api.NoOpTracer):
            self.close()
            raise SlmSwapError(
                "the Langfuse SDK is switched off by the environment (LANGFUSE_TRACING_ENABLED=false or "
                "OTEL_SDK_DISABLED=true); unset it, or set LANGFUSE_DISABLED=1 to run without tracing"
            )
        # The SDK registers an unbounded flush-and-join at interpreter exit; ours is bounded.
        atexit.unregister(self._resources.shutdown)
        atexit.register(self.close)

    @contextlib.contextmanager
    def run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any]) -> Iterator[Run]:
        run = self._start_run(name, input=input, metadata=metadata)
        try:
            yield run
        except BaseException as exc:
            if isinstance(run, _LangfuseRun):
                run._end(error=exc)
            raise
        else:
            if isinstance(run, _LangfuseRun):
                run._end(error=None)

    def _start_run(self, name: str, *, input: dict[str, Any], metadata: dict[str, Any]) -> Run:
        if self._closed:
            self._delivery.problem(f"run {name!r} started after the tracer was closed")
            return NullRun()
        stack = contextlib.ExitStack()
        try:
            scrubbed_metadata = self._payloads.metadata(metadata)
            # Start from an empty OpenTelemetry context, so a run is always a new trace of its own,
            # even when started inside another run (compare calling eval, say).
            stack.callback(otel_context_api.detach, otel_context_api.attach(otel_context_api.Context()))
            root = stack.enter_context(
                self._client.start_as_current_observation(
                    name=name, as_type="span", input=self._payloads.value(input), metadata=scrubbed_metadata
                )
            )
            # Trace name and short metadata (e.g. prefect_flow_run_id) at the trace level: set on the
            # root and propagated to every observation created inside the run.
            stack.enter_context(propagate_attributes(trace_name=name, metadata=_trace_metadata(scrubbed_metadata)))
        except Exception as exc:
            with contextlib.suppress(Exception):
                stack.close()
            self._delivery.problem(f"could not start run {name!r}: {type(exc).__name__}: {exc}")
            return NullRun()
        return _LangfuseRun(self, root, stack)

    def flush(self) -> bool:
        notes = []  # about this flush only; lost spans and scores stay in self._delivery for good
        if not self._closed:
            finished, error = _run_bounded(self._client.flush, self._flush_timeout_s, "slm-swap-trace-flush")
            if error is not None:
                notes.append(f"flush failed: {type(error).__name__}: {error}")
            if not finished:
                notes.append(f"flush did not finish within {self._flush_timeout_s:g}s")
        problems = self._delivery.problems() + [" ".join(note.split()) for note in notes]
        self._last_flush_ok = not problems
        if problems:
            print(f"warning: traces were not delivered to Langfuse at {self._host}: {'; '.join(problems)}", file=sys.stderr)
            return False
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        resources = getattr(self, "_resources", None)
        client = getattr(self, "_client", None)

        def shutdown() -> None:
            if client is not None:
                client.shutdown()  # flushes, then stops the score and media threads
            self._provider.shutdown()  # stops the span batch thread and the exporter
            self._http.close()

        if resources is not None:
            atexit.unregister(resources.shutdown)
            _forget_sdk_client(resources.public_key, resources)
        bound_s = self._flush_timeout_s
        if self._last_flush_ok is False:
            # flush() already told the user Langfuse is unreachable: stop retrying (shutting the
            # exporter down aborts its backoff) rather than spend the whole bound again.
            with contextlib.suppress(Exception):
                self._exporter.shutdown()
            bound_s = min(bound_s, 1.0)
        _run_bounded(shutdown, bound_s, "slm-swap-trace-close")
