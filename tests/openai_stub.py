"""A scriptable OpenAI-compatible HTTP server on 127.0.0.1, standing in for a hosted model.

Speaks the chat-completions wire format on both the OpenAI route (`/v1/chat/completions`) and
Azure's (`/openai/deployments/{name}/chat/completions`), so the real `openai` SDK can be tested
over real HTTP. Behaviour is scripted: `respond(messages) -> text`, an optional queue of failure
statuses to answer first (with `Retry-After`), and a fixed latency per request. Every request is
recorded (path, query, lower-cased headers, body) for assertions.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from loopback_server import LoopbackServer


class OpenAIStub(LoopbackServer):
    def __init__(
        self,
        respond: Callable[[list[dict[str, Any]]], str] = lambda messages: "ok",
        failures: list[int] | None = None,
        retry_after: str | None = None,
        latency_s: float = 0.0,
        echo_key: bool = False,
        fail_fast: bool = False,
    ):
        self.respond = respond
        self.echo_key = echo_key  # failures quote the API key received, as some real endpoints do
        self.fail_fast = fail_fast  # failures answer at once; only successes take latency_s
        self.failures = list(failures or [])
        self.retry_after = retry_after
        self.latency_s = latency_s
        self.requests: list[dict[str, Any]] = []
        super().__init__()

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                parts = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:  # a client that gave up mid-body (a timeout test): answered, never printed
                    body = None
                with stub.lock:
                    stub.requests.append(
                        {"path": parts.path, "query": parse_qs(parts.query), "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                         "at": time.monotonic()}
                    )
                    failure = stub.failures.pop(0) if stub.failures else None
                if stub.latency_s and not (failure and stub.fail_fast):
                    time.sleep(stub.latency_s)
                if failure:
                    headers = {"Retry-After": stub.retry_after} if stub.retry_after else {}
                    message = f"scripted {failure}"
                    if stub.echo_key:
                        given = self.headers.get("api-key") or self.headers.get("authorization", "")
                        message = f"Incorrect API key provided: {given}. You can find your API key at https://example"
                    self._send(failure, {"error": {"message": message, "type": "stub", "code": str(failure)}}, headers)
                    return
                if not (parts.path == "/v1/chat/completions" or parts.path.endswith("/chat/completions")):
                    self._send(404, {"error": {"message": "no such route", "type": "invalid_request_error"}})
                    return
                if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                    # What OpenAI answers. Raising instead would make socketserver print a traceback from
                    # this thread into whatever command a later test is capturing (a CI failure once).
                    self._send(400, {"error": {"message": "'messages' is a required property", "type": "invalid_request_error"}})
                    return
                text = stub.respond(body["messages"])
                self._send(200, {
                    "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "deployment"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        return Handler
