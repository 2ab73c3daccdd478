"""`slm-swap gateway`: an OpenAI-compatible server an application calls instead of its hosted model.

    slm-swap gateway --port 8100            # hosted settings as `eval`, SLM_BASE_URL: the SLM engine
    openai.OpenAI(base_url="http://127.0.0.1:8100/v1").chat.completions.create(model=..., tools=[...], ...)

Route mode, per request (the decision is in the `x-slm-swap-route` and `x-slm-swap-reason` headers):
- not swappable (`gateway_requests.classify`): the hosted model answers the original request (`hosted`);
- swappable: the SLM engine gets the track's evaluation prompt; its answer is checked against the
  request's own tools (`core.tool_schema`). Valid: it is served (`slm`). Invalid, or the engine
  failing: the hosted model answers the original request (`hosted-fallback`).
The SLM is `serve`'s engine loaded in the gateway's process (`gateway_engine`, with the main job's
adapters), or any OpenAI-compatible engine by URL (SLM_BASE_URL: `slm-swap serve --adapters-dir`,
vLLM with `--enable-lora --lora-modules toolcall=DIR`), the adapter chosen by model name per track.
`stream: true` routes the same way: the SLM engine is asked without streaming (its answer is validated
whole before anything is sent), a valid answer goes out as OpenAI's SSE chunks, and hosted answers
stream through from the hosted model.
Modes per track (`gateway_shadow`): route (above), shadow (the hosted model answers; the SLM's answer is
recorded off the response path with its verdict and whether it agrees), hosted (pass-through).
Every request appends one JSON line to the records file (`gateway_records`); the command: `gateway_command`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import openai
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from slm_swap.app.gateway_requests import (
    NotSwappable,
    Swappable,
    Usage,
    classify,
    completion_chunks,
    server_sent_events,
    slm_messages,
    text_response,
    tool_calls_response,
)
from slm_swap.app.gateway_records import RecordsFile, metadata_only
from slm_swap.app.gateway_shadow import agrees, hosted_answer
from slm_swap.app.gateway_tracing import trace_request
from slm_swap.app.http_server import RequireApiKey, openai_error
from slm_swap.app.request_body import BodyTooLarge, read_body
from slm_swap.core.tool_schema import check_call, check_structured
from slm_swap.evaluation.calibrate import Policy, openai_confidence
from slm_swap.core.tracks import parse_structured, parse_toolcall
from slm_swap.infra import json_input
from slm_swap.infra.json_input import BODY_MAX_BYTES, JsonInputError
from slm_swap.infra.recordable import recordable
from slm_swap.infra.tracing import NullTracer, Tracer
from slm_swap.llm.chat_api import ChatRequest, invalid_request
from slm_swap.llm.hosted import describe_api_error

SLM_DEFAULT_MAX_TOKENS = 256
# Shadow answers run on their own threads, so they never hold up the response path; past this many
# waiting, a request gets no shadow answer (recorded as `shadow_busy`) rather than an unbounded queue.
SHADOW_THREADS = 4
SHADOW_QUEUE = 64
_HEADER_MAX_CHARS = 200
# The hosted model's own refusals of the client's request: the client's error, passed on as such.
# Anything else (auth, rate limit or 5xx after the retries, no connection) is the upstream failing: 502.
_CLIENT_ERRORS = (400, 404, 413, 422)


@dataclass(frozen=True)
class Upstream:
    """An OpenAI-compatible backend: its SDK client (retries and timeouts are the client's) and model."""

    client: openai.OpenAI
    model: str


@dataclass(frozen=True)
class SlmOutcome:
    """What the SLM said to one request and what the request's validators made of it."""

    text: str | None  # None: the engine failed
    usage: Usage
    part: dict[str, Any]  # the record's `slm` entry (its `confidence`: the weakest token's log-probability)
    verdict: str  # valid | invalid | low_confidence | unavailable
    reason: str | None  # why not valid, starting with its code: slm_unavailable, invalid_answer, low_confidence


@dataclass(frozen=True)
class SlmEngine:
    """The SLM engine, the model name that serves each track (an adapter's name on the engine), and the
    confidence gate of each served model name. A hot reload (`gateway_reload`) adds a name's gate before
    it points a track at that name, so `serving` never pairs a model with another model's gate."""

    client: openai.OpenAI
    models: Mapping[str, str]
    gates: MutableMapping[str, Policy] = field(default_factory=dict)

    def serving(self, track: str) -> tuple[str, Policy | None]:
        name = self.models[track]  # read once per request: a hot reload may switch the track meanwhile
        return name, self.gates.get(name)


def answer_problem(decision: Swappable, text: str) -> str | None:
    """Why the SLM's answer may not be served, or None when it passes the request's own validators.
    ValueError: the request's schema itself cannot be checked (the caller falls back)."""
    if decision.track == "structured":
        return check_structured(parse_structured(text), decision.functions)
    call = parse_toolcall(text)
    if call is None:
        return 'the answer is not exactly one <tool_call name="...">{json object}</tool_call>'
    name, arguments = call
    if decision.forced_name is not None and name != decision.forced_name:
        return f"tool_choice names {decision.forced_name!r}, the answer calls {name!r}"
    return check_call(name, arguments, decision.functions)


def header_text(text: str) -> str:
    """One short line an HTTP header can carry (latin-1 only: anything else escaped)."""
    line = " ".join(text.split())[:_HEADER_MAX_CHARS]
    return line.encode("ascii", "backslashreplace").decode("ascii")


def create_gateway_app(hosted: Upstream, slm: SlmEngine, records_path: Path, scrub: Callable[[str], str],
                       api_key: str | None = None, log_content: bool = True,
                       modes: Mapping[str, str] | None = None, tracer: Tracer | None = None,
                       policies: Mapping[str, Policy] | None = None) -> FastAPI:
    """The gateway. `scrub` (a `Settings.scrub`) cleans every error line, header and record; `api_key`:
    what clients must send (Authorization: Bearer, or Azure's api-key), none when None; `modes`: each
    track's mode (`gateway_shadow.MODES`), route where not given; `tracer`: one trace per request
    (`gateway_tracing`), none when None; `policies`: a track's confidence gate (`gateway calibrate`): a valid
    answer is served only when its confidence reaches the policy's threshold."""
    records = RecordsFile(records_path, log_content)
    tracer = tracer or NullTracer()
    modes = dict(modes or {})
    for track, policy in (policies or {}).items():  # the gates given apply to what each track serves now
        slm.gates[slm.models[track]] = policy
    shadow_threads = ThreadPoolExecutor(SHADOW_THREADS, thread_name_prefix="gateway-shadow")
    shadow_slots = threading.BoundedSemaphore(SHADOW_QUEUE)
    app = FastAPI(title="slm-swap gateway", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def _openai_shaped(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405, ...
        return openai_error(exc.status_code, str(exc.detail), "invalid_request_error")

    if api_key:
        app.add_middleware(RequireApiKey, api_key=api_key)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        names = [hosted.model, *slm.models]
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "slm-swap"}
                                           for name in dict.fromkeys(names)]}

    # Non-streamed calls go through the SDK's `post` (its documented way to send a body as it is), with
    # the same client, so the same retries, timeouts, auth and Azure deployment routes, and the answer
    # parsed into the SDK's `ChatCompletion`. `chat.completions.create` would first walk every message
    # of the body through its typed-dict transform: measured as the largest cost per gateway request.
    def hosted_call(body: dict[str, Any]) -> ChatCompletion:
        # The client's own fields go through untouched; only the model is the hosted one.
        sent = {key: value for key, value in body.items() if key != "stream"}
        return hosted.client.post("/chat/completions", body={**sent, "model": hosted.model}, cast_to=ChatCompletion)

    def hosted_chunks(body: dict[str, Any]) -> Any:
        rest = {key: value for key, value in body.items() if key not in ("model", "messages", "stream")}
        return hosted.client.chat.completions.create(model=hosted.model, messages=body["messages"], stream=True,
                                                     extra_body=rest)

    def slm_call(decision: Swappable, model_name: str, max_tokens: int) -> ChatCompletion:
        # logprobs: the answer's confidence, for the gate and the records (`serve` and vLLM return them).
        sent = {"model": model_name, "messages": slm_messages(decision), "temperature": 0,
                "max_tokens": max_tokens, "logprobs": True}
        return slm.client.post("/chat/completions", body=sent, cast_to=ChatCompletion)

    def ask_slm(decision: Swappable, max_tokens: int, served: tuple[str, Policy | None]) -> SlmOutcome:
        """The SLM's answer from `served` (model name, its gate), checked by the request's own validators
        and the gate (blocking: run it off the event loop)."""
        model_name, policy = served
        began = time.perf_counter()
        try:
            completion = slm_call(decision, model_name, max_tokens)
        except openai.OpenAIError as exc:  # the engine down, refusing or timing out
            error = scrub(describe_api_error(exc))
            part = {"model": model_name, "error": error, "latency_s": round(time.perf_counter() - began, 4)}
            return SlmOutcome(None, Usage(0, 0), part, "unavailable", f"slm_unavailable: {error}")
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "") if choice else ""
        usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens) if completion.usage else Usage(0, 0)
        logprobs = choice.logprobs.content if choice and choice.logprobs else None
        confidence = openai_confidence(logprobs) if logprobs else None
        if confidence is not None and not math.isfinite(confidence):
            confidence = None  # None: the engine sent no usable log-probabilities (no gate accepts that)
        part = {"model": model_name, "output": text, "latency_s": round(time.perf_counter() - began, 4),
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
                "confidence": confidence}
        try:
            problem = answer_problem(decision, text)
        except ValueError as exc:  # the request's own schema is unusable: nothing can vouch for the SLM
            problem = f"the request's tool schema cannot be checked: {exc}"
        if problem is not None:
            return SlmOutcome(text, usage, part, "invalid", f"invalid_answer: {problem}")
        if policy is not None and not policy.accepts(True, confidence if confidence is not None else float("-inf")):
            why = ("its calibration reached the target at no threshold" if policy.threshold is None
                   else f"{confidence if confidence is not None else 'none'} < threshold {policy.threshold}")
            return SlmOutcome(text, usage, part, "low_confidence", f"low_confidence: {why}")
        return SlmOutcome(text, usage, part, "valid", None)

    def start_shadow(decision: Swappable, max_tokens: int) -> Future | None:
        if not shadow_slots.acquire(blocking=False):
            return None
        future = shadow_threads.submit(ask_slm, decision, max_tokens, slm.serving(decision.track))
        future.add_done_callback(lambda _: shadow_slots.release())
        return future

    def append_traced(record: dict[str, Any]) -> None:
        """The record, scrubbed, traced (no more than the file keeps) and appended with its trace id."""
        recorded = recordable(record, scrub)
        try:
            recorded["trace_id"] = trace_request(tracer, recorded if log_content else metadata_only(recorded))
        except Exception as exc:  # noqa: BLE001 - a tracing fault must not lose the record or the answer
            recorded["trace_id"], recorded["trace_error"] = None, f"{type(exc).__name__}: {exc}"
        records.append(recorded)

    def write_record(record: dict[str, Any], shadow: tuple[Swappable, Future] | None = None) -> None:
        """Append the record now, or, in shadow mode, once the SLM's shadow answer is in too."""
        if shadow is None:
            append_traced(record)
            return
        decision, future = shadow

        def with_shadow(done: Future) -> None:
            try:
                outcome: SlmOutcome = done.result()
                record["slm"], record["verdict"] = outcome.part, outcome.verdict
                hosted_message = hosted_answer((record.get("hosted") or {}).get("output"))
                record["shadow"] = {"verdict": outcome.verdict, "reason": outcome.reason,
                                    "agrees": outcome.text is not None and agrees(decision, outcome.text, hosted_message)}
            except Exception as exc:  # noqa: BLE001 - a shadow's own fault must not lose the hosted record
                record["shadow"] = {"verdict": "failed", "reason": f"shadow_failed: {type(exc).__name__}: {exc}", "agrees": False}
            append_traced(record)

        future.add_done_callback(with_shadow)

    def route_headers(record: dict[str, Any]) -> dict[str, str]:
        headers = {"x-slm-swap-route": record["route"], "x-slm-swap-request-id": record["id"]}  # the record's id
        if record.get("reason"):
            headers["x-slm-swap-reason"] = header_text(scrub(record["reason"]))
        return headers

    def finish(record: dict[str, Any], started: float, response: Response,
               shadow: tuple[Swappable, Future] | None = None) -> Response:
        record["latency_s"] = round(time.perf_counter() - started, 4)
        record["status"] = response.status_code
        write_record(record, shadow)
        response.headers.update(route_headers(record))
        return response

    async def respond_hosted(body: dict[str, Any], record: dict[str, Any], started: float, stream: bool,
                             shadow: tuple[Swappable, Future] | None = None) -> Response:
        if stream:  # recorded when the stream ends
            return StreamingResponse(hosted_stream(body, record, started, shadow), media_type="text/event-stream",
                                     headers=route_headers(record))
        return await answer_hosted(body, record, started, shadow)

    async def answer_hosted(body: dict[str, Any], record: dict[str, Any], started: float,
                            shadow: tuple[Swappable, Future] | None = None) -> Response:
        began = time.perf_counter()
        try:
            completion = await asyncio.to_thread(hosted_call, body)
        except openai.OpenAIError as exc:
            error = scrub(describe_api_error(exc))
            record["hosted"] = {"model": hosted.model, "error": error, "latency_s": round(time.perf_counter() - began, 4)}
            status = getattr(exc, "status_code", None)
            if status in _CLIENT_ERRORS:
                return finish(record, started, openai_error(status, f"hosted model: {error}", "invalid_request_error"), shadow)
            return finish(record, started, openai_error(502, f"upstream hosted model {hosted.model!r} failed: {error}",
                                                        "upstream_error"), shadow)
        answer = completion.model_dump(mode="json", exclude_unset=True)
        record["hosted"] = {"model": answer.get("model") or hosted.model, "output": answer.get("choices"),
                            "usage": answer.get("usage"), "latency_s": round(time.perf_counter() - began, 4)}
        return finish(record, started, JSONResponse(answer), shadow)

    def hosted_stream(body: dict[str, Any], record: dict[str, Any], started: float,
                      shadow: tuple[Swappable, Future] | None) -> Iterator[str]:
        """The hosted model's chunks passed on as OpenAI's SSE; the whole answer, put together by the
        SDK's own accumulator, is recorded when the stream ends."""
        began = time.perf_counter()
        state = ChatCompletionStreamState()
        try:
            for chunk in hosted_chunks(body):
                state.handle_chunk(chunk)
                yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
            yield "data: [DONE]\n\n"
            answer = state.get_final_completion().model_dump(mode="json", exclude_unset=True)
            record["hosted"] = {"model": answer.get("model") or hosted.model, "output": answer.get("choices"),
                                "usage": answer.get("usage"), "latency_s": round(time.perf_counter() - began, 4)}
        except openai.OpenAIError as exc:  # the status line is gone: the stream just stops, the record says why
            record["hosted"] = {"model": hosted.model, "error": scrub(describe_api_error(exc))}
        finally:
            record.update(latency_s=round(time.perf_counter() - started, 4), status=200)
            write_record(record, shadow)

    async def chat(request: Request, deployment: str | None) -> Response:
        started = time.perf_counter()
        try:
            body = json_input.loads(await read_body(request), max_bytes=BODY_MAX_BYTES)
        except BodyTooLarge:
            return openai_error(413, f"Request body is larger than {BODY_MAX_BYTES} bytes.", "invalid_request_error")
        except JsonInputError as exc:
            return openai_error(400, f"Request body is not valid JSON: {exc}.", "invalid_request_error")
        if not isinstance(body, dict):
            return openai_error(400, "Request body must be a JSON object.", "invalid_request_error")
        try:
            chat_request = ChatRequest.model_validate(body)
        except ValidationError as exc:
            where, why = invalid_request(exc)
            return openai_error(400, f"Invalid request: {where}: {why}", "invalid_request_error", param=where)
        if deployment:  # Azure names the model in the path
            chat_request.model = deployment
        record: dict[str, Any] = {"id": f"req-{uuid.uuid4().hex}", "time": datetime.now(timezone.utc).isoformat(),
                                  "requested_model": chat_request.model, "track": None, "mode": None, "not_swappable": None,
                                  "route": "hosted", "verdict": None, "reason": None, "slm": None, "hosted": None}
        stream = bool(chat_request.stream)
        decision = classify(chat_request, set(slm.models))
        if isinstance(decision, NotSwappable):
            record["not_swappable"] = {"reason": decision.reason, "detail": decision.detail}
            record["reason"] = decision.reason
            return await respond_hosted(body, record, started, stream)

        mode = modes.get(decision.track, "route")
        # What the SLM is asked (the capture shim's input): with the hosted answer, a training row.
        record.update(track=decision.track, mode=mode, request={
            "user_text": decision.user_text, "functions": list(decision.functions), "answer_as": decision.answer_as,
            "forced_name": decision.forced_name})
        max_tokens = chat_request.max_completion_tokens or chat_request.max_tokens or SLM_DEFAULT_MAX_TOKENS
        if mode == "hosted":
            record["reason"] = "mode_hosted"
            return await respond_hosted(body, record, started, stream)
        if mode == "shadow":  # the hosted model answers; the SLM's answer is only recorded, off the response path
            record["reason"] = "mode_shadow"
            future = start_shadow(decision, max_tokens)
            if future is None:
                record["shadow"] = {"verdict": "skipped", "reason": f"shadow_busy: {SHADOW_QUEUE} shadow answers waiting",
                                    "agrees": False}
            return await respond_hosted(body, record, started, stream, (decision, future) if future else None)
        served = slm.serving(decision.track)
        policy = served[1]
        if policy is not None and policy.threshold is None:  # calibration: no SLM answer may be served on this track
            record.update(route="hosted", reason=f"policy_accepts_nothing: {policy.path} reached its target at no threshold")
            return await respond_hosted(body, record, started, stream)
        outcome = await asyncio.to_thread(ask_slm, decision, max_tokens, served)
        record["slm"] = outcome.part
        if outcome.verdict != "valid":  # the engine failing or the answer invalid: the hosted model answers
            record.update(route="hosted-fallback", verdict=outcome.verdict, reason=outcome.reason)
            return await respond_hosted(body, record, started, stream)
        record.update(route="slm", verdict="valid")
        text, usage = outcome.text or "", outcome.usage
        model = chat_request.model or outcome.part["model"]
        if decision.answer_as == "tool_calls":
            answer = tool_calls_response(text, model=model, usage=usage)
        else:
            answer = text_response(text, model=model, usage=usage)
        if stream:  # validated whole above; sent as the chunks OpenAI would have streamed
            options = (chat_request.model_extra or {}).get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = server_sent_events(completion_chunks(answer, include_usage))
            return finish(record, started, StreamingResponse(iter(events), media_type="text/event-stream"))
        return finish(record, started, JSONResponse(answer))

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> Response:
        return await chat(request, None)

    @app.post("/openai/deployments/{deployment}/chat/completions")
    async def azure_chat(deployment: str, request: Request) -> Response:
        return await chat(request, deployment)

    return app
