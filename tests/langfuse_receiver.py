"""A real Langfuse stand-in on 127.0.0.1 that records what the Langfuse v5 SDK sends.

The v5 SDK talks to a Langfuse host over OTLP and REST, all served here:

- spans: OTLP/HTTP protobuf, `POST /api/public/otel/v1/traces` (gzip-compressed by default), decoded
  with `opentelemetry.proto`'s `ExportTraceServiceRequest`. Experiment runs arrive this way too:
  5.0.4's `run_experiment` links each item's trace to its dataset item and dataset run through
  `langfuse.experiment.*` span attributes (it makes no dataset-run-items request);
- scores: JSON, `POST /api/public/scores` (a list of score bodies; answered 202 like the real API;
  run-level scores carry `datasetRunId`). The legacy batch endpoint `POST /api/public/ingestion` is
  accepted too;
- datasets: `POST /api/public/v2/datasets` (create or update by name), `GET /api/public/v2/datasets/{name}`
  (404 when there is none); dataset items: `POST /api/public/dataset-items` (upsert by id; 409 for an
  id that belongs to another dataset, as Langfuse refuses it), `GET /api/public/dataset-items?datasetName=`
  (paginated).

`GET /api/public/projects` and `GET /api/public/health` get plausible answers (`run_experiment` asks
for the project id to build the experiment's URL). Anything else is recorded and answered 404, so a
test can assert that the SDK called nothing unexpected.

Everything is recorded: decoded spans (`spans`), score bodies (`scores`), datasets by name
(`datasets`), items by id (`items`) and every raw request (`requests`: method, path, query,
lower-cased headers, the body as received and after gzip decoding), so tests can scan the wire for
secrets. `fail_with=503` answers every request with that status (still recording it), to play a
Langfuse that is down; `hang=True` reads each request and never answers until the receiver closes.
Each receiver has its own `public_key` (the SDK keeps one client per public key and process).

    with LangfuseReceiver() as receiver:
        ... LANGFUSE_HOST=receiver.url LANGFUSE_PUBLIC_KEY=receiver.public_key ...
        receiver.spans, receiver.scores, receiver.datasets, receiver.items, receiver.requests
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler

from loopback_server import LoopbackServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
INGESTION_PATH = "/api/public/ingestion"
PROJECTS_PATH = "/api/public/projects"
HEALTH_PATH = "/api/public/health"
DATASETS_PATH = "/api/public/v2/datasets"
DATASET_ITEMS_PATH = "/api/public/dataset-items"
CREATED_AT = "2026-11-23T00:00:00.000Z"

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
    def __init__(self, fail_with: int | None = None, hang: bool = False):
        self.fail_with = fail_with
        self.hang = hang
        self.closing = threading.Event()
        self.public_key = f"pk-lf-{uuid.uuid4().hex[:12]}"
        self.spans: list[dict[str, Any]] = []
        self.scores: list[dict[str, Any]] = []
        self.datasets: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        super().__init__()

    def __exit__(self, *exc: object) -> None:
        self.closing.set()  # hung handlers return
        super().__exit__(*exc)

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

    def command_trace_ids(self) -> set[str]:
        """Trace ids of the commands' runs: every trace but the experiments' per-item traces."""
        with self.lock:
            items = {s["trace_id"] for s in self.spans if "langfuse.experiment.id" in s["attributes"]}
            return {span["trace_id"] for span in self.spans} - items

    def experiment_runs(self) -> dict[str, dict[str, Any]]:
        """Dataset runs by experiment id, as the item traces' root spans describe them: run name,
        dataset id, item ids and trace ids."""
        runs: dict[str, dict[str, Any]] = {}
        with self.lock:
            for span in self.spans:
                attributes = span["attributes"]
                if span["name"] == "experiment-item-run" and "langfuse.experiment.id" in attributes:
                    run = runs.setdefault(attributes["langfuse.experiment.id"], {
                        "name": attributes.get("langfuse.experiment.name"),
                        "dataset_id": attributes.get("langfuse.experiment.dataset.id"), "item_ids": set(), "trace_ids": set()})
                    run["item_ids"].add(attributes.get("langfuse.experiment.item.id"))
                    run["trace_ids"].add(span["trace_id"])
        return runs

    def posts(self, path: str) -> list[dict[str, Any]]:
        """The JSON bodies POSTed to `path`."""
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests if r["method"] == "POST" and r["path"] == path]

    def dataset_items(self, name: str) -> list[dict[str, Any]]:
        """A dataset's items, in their `metadata.index` order when they have one."""
        with self.lock:
            found = [item for item in self.items.values() if item["datasetName"] == name]
        return sorted(found, key=lambda item: (item.get("metadata") or {}).get("index", 0))

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

    # -- the datasets API ----------------------------------------------------------------------

    def _datasets_api(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any] | None:
        """(status, JSON) for a datasets or dataset-items request, None for any other path."""
        with self.lock:
            if method == "POST" and path == DATASETS_PATH:
                payload = json.loads(body)
                dataset = self.datasets.get(payload["name"]) or {
                    "id": f"ds-{uuid.uuid4().hex[:12]}", "name": payload["name"], "projectId": PROJECT_ID,
                    "createdAt": CREATED_AT}
                dataset.update(description=payload.get("description"), metadata=payload.get("metadata"),
                               updatedAt=CREATED_AT)
                self.datasets[payload["name"]] = dataset
                return 200, dataset
            if method == "GET" and path.startswith(DATASETS_PATH + "/"):
                name = unquote(path[len(DATASETS_PATH) + 1:])
                return (200, self.datasets[name]) if name in self.datasets else (404, {"message": "Dataset not found"})
            if method == "POST" and path == DATASET_ITEMS_PATH:
                payload = json.loads(body)
                dataset = self.datasets.get(payload["datasetName"])
                if dataset is None:
                    return 404, {"message": "Dataset not found"}
                known = self.items.get(payload.get("id") or "")
                if known and known["datasetId"] != dataset["id"]:
                    return 409, {"message": "Dataset item id already used in another dataset"}
                item = {"id": payload.get("id") or uuid.uuid4().hex, "status": payload.get("status") or "ACTIVE",
                        "input": payload.get("input"), "expectedOutput": payload.get("expectedOutput"),
                        "metadata": payload.get("metadata"), "sourceTraceId": payload.get("sourceTraceId"),
                        "sourceObservationId": payload.get("sourceObservationId"), "datasetId": dataset["id"],
                        "datasetName": dataset["name"], "createdAt": CREATED_AT, "updatedAt": CREATED_AT,
                        "mediaReferences": []}
                self.items[item["id"]] = item
                return 200, item
            if method == "GET" and path == DATASET_ITEMS_PATH:
                name = query.get("datasetName", [""])[0]
                page, limit = int(query.get("page", ["1"])[0]), int(query.get("limit", ["50"])[0])
                found = [item for item in self.items.values() if item["datasetName"] == name]
                pages = max(1, -(-len(found) // limit))
                return 200, {"data": found[(page - 1) * limit: page * limit],
                             "meta": {"page": page, "limit": limit, "totalItems": len(found), "totalPages": pages}}
        return None

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
                parts = urlsplit(self.path)
                path = parts.path
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                try:
                    decoded = _decode_body(raw, headers.get("content-encoding", ""))
                except Exception:  # a bad body is still recorded, as received
                    decoded = raw
                known = (self.command, path) in {
                    ("POST", OTEL_TRACES_PATH), ("POST", SCORES_PATH), ("POST", INGESTION_PATH),
                    ("GET", PROJECTS_PATH), ("GET", HEALTH_PATH), ("POST", DATASETS_PATH),
                    ("POST", DATASET_ITEMS_PATH), ("GET", DATASET_ITEMS_PATH),
                } or (self.command == "GET" and path.startswith(DATASETS_PATH + "/"))
                with receiver.lock:
                    receiver.requests.append({
                        "method": self.command, "path": path, "query": parts.query, "headers": headers,
                        "raw_body": raw, "body": decoded, "known": known, "at": time.monotonic(),
                    })

                if receiver.hang:
                    receiver.closing.wait()
                    self.close_connection = True
                    return
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
                elif (answer := receiver._datasets_api(self.command, path, parse_qs(parts.query), decoded)) is not None:
                    self._json(*answer)
                elif self.command == "GET" and path == PROJECTS_PATH:
                    self._json(200, {"data": [{"id": PROJECT_ID, "name": "receiver", "metadata": {},
                                               "organization": {"id": "receiver-org", "name": "receiver"}}]})
                elif self.command == "GET" and path == HEALTH_PATH:
                    self._json(200, {"status": "OK", "version": "receiver"})
                else:
                    self._json(404, {"message": f"the receiver does not serve {self.command} {path}"})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler
