"""The process's Langfuse clients (one per public key, as the SDK keeps them) and the bounded
threads their calls run on, so a Langfuse that is down or hanging never holds a command or its exit."""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import httpx
from langfuse import Langfuse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.tracing.masking import MASK
from slm_swap.infra.tracing.problems import PROBLEMS
from slm_swap.infra.tracing.settings import langfuse_settings

EXIT_TIMEOUT_S = 1.0


@dataclasses.dataclass
class Client:
    langfuse: Langfuse
    config: tuple[str, str]  # host, sha256 of the secret key
    threads: set[int]  # the ones it started: span exporter, score sender, media
    last_flush_ok: bool = True


_LOCK = threading.Lock()
_CLIENTS: dict[str, Client] = {}  # by public key, as the SDK keeps them


def langfuse_client(settings: Settings, request_timeout_s: int) -> Client:
    """The process's client for these settings, built on first use."""
    values = langfuse_settings(settings)
    public_key, host, secret_key = values["LANGFUSE_PUBLIC_KEY"], values["LANGFUSE_HOST"], values["LANGFUSE_SECRET_KEY"]
    config = (host, hashlib.sha256(secret_key.encode()).hexdigest())
    with _LOCK:
        MASK.secrets = tuple(sorted(set(MASK.secrets) | set(settings.secret_values()), key=len, reverse=True))
        if (known := _CLIENTS.get(public_key)) is not None:
            if known.config != config:
                raise SlmSwapError(f"this process already traces to {known.config[0]} with LANGFUSE_PUBLIC_KEY {public_key}; "
                                   "the Langfuse SDK keeps one client per public key and process, so another host or "
                                   "secret key for the same public key needs a process of its own")
            return known
        before = {thread.ident for thread in threading.enumerate()}
        client = Langfuse(
            public_key=public_key, secret_key=secret_key, base_url=host, timeout=request_timeout_s,
            httpx_client=httpx.Client(timeout=request_timeout_s, event_hooks={"response": [PROBLEMS.response]}),
            tracing_enabled=True, sample_rate=1.0, flush_at=512, flush_interval=1.0, media_upload_thread_count=1,
            mask=MASK, mask_otel_spans=MASK.spans,
            # A provider of its own: other libraries' spans and OTEL_RESOURCE_ATTRIBUTES stay out.
            tracer_provider=TracerProvider(resource=Resource({"service.name": "slm-swap"}), sampler=ALWAYS_ON,
                                           shutdown_on_exit=False))
        # Under LANGFUSE_TRACING_ENABLED=false or OTEL_SDK_DISABLED=true the SDK's spans have no trace
        # id. The probe is never ended, so never exported.
        if client.start_observation(name="slm-swap-probe").trace_id == "0" * 32:
            raise SlmSwapError("the Langfuse SDK is switched off by the environment (LANGFUSE_TRACING_ENABLED=false or "
                               "OTEL_SDK_DISABLED=true); unset it, or set LANGFUSE_DISABLED=1 to run without tracing")
        entry = _CLIENTS[public_key] = Client(client, config, {t.ident for t in threading.enumerate()} - before)
        # After the client, so it runs before the SDK's exit hook, which shutdown() removes.
        atexit.register(lambda: bounded(client.shutdown, EXIT_TIMEOUT_S if entry.last_flush_ok else EXIT_TIMEOUT_S / 4))
        return entry


def bounded(fn: Callable[[], Any], timeout_s: float) -> tuple[bool, BaseException | None]:
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


def in_background(fn: Callable[[], Any]) -> Future:
    """fn's result, from a daemon thread (an executor's threads would hold the exit while Langfuse hangs)."""
    future: Future = Future()

    def target() -> None:
        PROBLEMS.own.active = True  # failures raise into the future; their log records are not news
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, name="slm-swap-langfuse-dataset", daemon=True).start()
    return future


def describe(exc: BaseException) -> str:
    """An SDK error on one line, without the response headers an API error's text carries."""
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__} (HTTP {status})" if status else f"{type(exc).__name__}: {exc}"
