"""A real Langfuse stand-in on 127.0.0.1 that records what the Langfuse v5 SDK sends.

The v5 SDK talks to a Langfuse host over two channels, both served here:

- spans: OTLP/HTTP protobuf, `POST /api/public/otel/v1/traces` (gzip-compressed by default), decoded
  with `opentelemetry.proto`'s `ExportTraceServiceRequest`;
- scores: JSON, `POST /api/public/scores` (a list of score bodies; answered 202 like the real API).
  The legacy batch endpoint `POST /api/public/ingestion` (`{"batch": [{"type": "score-create",
  "body": {...}}, ...]}`) is accepted too, in case an SDK version falls back to it.

`GET /api/public/projects` and `GET /api/public/health` get plausible answers (the SDK calls the
former only for `get_trace_url`). Anything else is recorded and answered 404, so a test can assert
that the SDK called nothing unexpected.

Everything is recorded: decoded spans (`spans`), score bodies (`scores`) and every raw request
(`requests`: method, path, lower-cased headers, the body as received and the body after gzip
decoding), so tests can scan the wire for secrets. `fail_with=503` answers every request with that
status (still recording it), to play a Langfuse that is down.

    with LangfuseReceiver() as receiver:
        ... LANGFUSE_HOST=receiver.url ...
        receiver.spans, receiver.scores, receiver.requests
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from http.server import BaseHTTPRequestHandler

from loopback_server import LoopbackServer
from typing import Any, Callable
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
INGESTION_PATH = "/api/public/ingestion"
PROJECTS_PATH = "/api/public/projects"
HEALTH_PATH = "/api/public/health"

PROJECT_ID = "receiver-project"


def _any_value(value: Any) -> Any:
    """An OTLP AnyValue as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _any_value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(key_values: Any) -> dict[str, Any]:
    return {item.key: _any_value(item.value) for item in key_values}


def _decode_body(raw: bytes, content_encoding: str) -> bytes:
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    return raw


class LangfuseReceiver(LoopbackServer):
    def __init__(self, fail_with: int | None = None):
        self.fail_with = fail_with
        self.spans: list[dict[str, Any]] = []
        self.scores: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        super().__init__()

    # -- queries for tests -------------------------------------------------------------------

    def paths(self) -> list[str]:
        with self.lock:
            return [request["path"] for request in self.requests]

    def unexpected_requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [request for request in self.requests if not request["known"]]

    def trace_ids(self) -> set[str]:
        with self.lock:
            return {span["trace_id"] for span in self.spans}

    def wait_until(self, predicate: Callable[["LangfuseReceiver"], bool], timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    # -- recording -----------------------------------------------------------------------------

    def _record_spans(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        decoded = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                scope = {
                    "name": scope_spans.scope.name,
                    "version": scope_spans.scope.version,
                    "attributes": _attributes(scope_spans.scope.attributes),
                }
                for span in scope_spans.spans:
                    decoded.append({
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "attributes": _attributes(span.attributes),
                        "status_code": span.status.code,
                        "status_message": span.status.message,
                        "events": [{"name": event.name, "attributes": _attributes(event.attributes)} for event in span.events],
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "scope": scope,
                        "resource": resource,
                    })
        with self.lock:
            self.spans.extend(decoded)

    def _record_scores(self, path: str, body: bytes) -> None:
        payload = json.loads(body or b"null")
        if path == SCORES_PATH:
            items = payload if isinstance(payload, list) else [payload]
        else:  # legacy ingestion batch: only score events are scores
            items = [event.get("body", {}) for event in payload.get("batch", []) if event.get("type") == "score-create"]
        with self.lock:
            self.scores.extend(item for item in items if isinstance(item, dict))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pooled clients expect

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, payload: Any) -> None:
                self._reply(status, json.dumps(payload).encode(), "application/json")

            def _handle(self) -> None:
                path = urlsplit(self.path).path
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    decoded = _decode_body(raw, headers.get("content-encoding", ""))
                except Exception:  # a bad body is still recorded, as received
                    decoded = raw
                known = (self.command, path) in {
                    ("POST", OTEL_TRACES_PATH), ("POST", SCORES_PATH), ("POST", INGESTION_PATH),
                    ("GET", PROJECTS_PATH), ("GET", HEALTH_PATH),
                }
                with receiver.lock:
                    receiver.requests.append({
                        "method": self.command, "path": path, "headers": headers, "raw_body": raw,
                        "body": decoded, "known": known, "at": time.monotonic(),
                    })

                if receiver.fail_with is not None:
                    self._json(receiver.fail_with, {"message": f"receiver answers {receiver.fail_with}"})
                    return

                if self.command == "POST" and path == OTEL_TRACES_PATH:
                    try:
                        receiver._record_spans(decoded)
                    except Exception as exc:
                        self._json(400, {"message": f"undecodable OTLP request: {exc}"})
                        return
                    self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")
                elif self.command == "POST" and path in (SCORES_PATH, INGESTION_PATH):
                    try:
                        receiver._record_scores(path, decoded)
                    except Exception as exc:
                        self._json(400, {"message": f"undecodable score request: {exc}"})
                        return
                    if path == SCORES_PATH:
                        self._json(202, {"message": "Accepted"})
                    else:
                        self._json(207, {"successes": [], "errors": []})
                elif self.command == "GET" and path == PROJECTS_PATH:
                    self._json(200, {"data": [{"id": PROJECT_ID, "name": "receiver", "metadata": {},
                                               "organization": {"id": "receiver-org", "name": "receiver"}}]})
                elif self.command == "GET" and path == HEALTH_PATH:
                    self._json(200, {"status": "OK", "version": "receiver"})
                else:
                    self._json(404, {"message": f"the receiver does not serve {self.command} {path}"})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler
