"""The scripted teacher as a hosted model that does OpenAI tool calling: the hosted side the gateway's
demo and replay bench run against (`bench/gateway_replay.py`, `scripts/gateway.sh`). NOT A MODEL.

    with ToolCallingTeacher(examples, {"row-7": "wrong"}) as hosted:
        openai.OpenAI(base_url=hosted.url, api_key="any").chat.completions.create(
            model="any", messages=[{"role": "user", "content": example.request}],
            tools=[{"type": "function", "function": f} for f in example.functions])   # -> tool_calls: the gold call

The scripted teacher (`trajectories.teacher`) answers a v0 row's evaluation messages; an application
sends its user's request with OpenAI `tools` instead. This stand-in answers such a request as the
teacher answers the toolcall row made of the same request and functions (read as the gateway reads
it, `gateway_requests.classify`), with the teacher's scripted faults, and sends the call back as
OpenAI `tool_calls` (`tool_calls_response`, as the gateway sends the SLM's). An answer that is not one
call (the `broken` fault) comes back as text; `down` is a 500, `busy` a first 429. Any other request
goes to the teacher as it is (a track's evaluation messages: the gold completion as text). Usage
counts words: there is no tokenizer.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from pydantic import ValidationError

from slm_swap.app.gateway_requests import Swappable, Usage, classify, slm_messages, text_response, tool_calls_response
from slm_swap.core.tracks import parse_toolcall
from slm_swap.data.examples import Example
from slm_swap.infra import json_input
from slm_swap.infra.json_input import BODY_MAX_BYTES
from slm_swap.llm.chat_api import ChatRequest, invalid_request
from slm_swap.trajectories.teacher import DEFAULT_MODEL, LoopbackHTTPServer, ScriptedTeacher


def _error(status: int, message: str, kind: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": status}}


def stand_in_reply(teacher: ScriptedTeacher, body: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of the stand-in's answer to one chat-completions request body."""
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object", "invalid_request_error")
    try:
        chat = ChatRequest.model_validate(body)
    except ValidationError as exc:
        where, why = invalid_request(exc)
        return _error(400, f"Invalid request: {where}: {why}", "invalid_request_error")
    if not chat.messages:
        return _error(400, "'messages' must not be empty", "invalid_request_error")
    decision = classify(chat, set()) if body.get("tools") else None
    calling = isinstance(decision, Swappable)
    status, text = teacher.answer({"model": teacher.model, "messages": slm_messages(decision)} if calling else body)
    if status != 200:
        return _error(status, text, "server_error")
    words = sum(len(message.text().split()) for message in chat.messages) + len(json.dumps(body.get("tools") or []).split())
    usage = Usage(words, len(text.split()))
    if calling and parse_toolcall(text) is not None:
        return 200, tool_calls_response(text, model=teacher.model, usage=usage)
    return 200, text_response(text, model=teacher.model, usage=usage)


class ToolCallingTeacher:
    """The stand-in on a free 127.0.0.1 port (`url`, OpenAI's `/v1` base), served on a thread inside a
    `with` block. `behaviours` maps a row id to a `trajectories.teacher.BEHAVIOURS` fault."""

    def __init__(self, examples: list[Example], behaviours: dict[str, str] | None = None, *, model: str = DEFAULT_MODEL):
        self.teacher = ScriptedTeacher(examples, behaviours, model=model)
        self._server = LoopbackHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def model(self) -> str:
        return self.teacher.model

    def __enter__(self) -> ToolCallingTeacher:
        self.teacher.start()  # its own port stays unused: its answers are asked in process
        # A short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="tool-calling-teacher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.teacher.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        teacher = self.teacher

        class Handler(BaseHTTPRequestHandler):
            timeout = 60  # seconds a client may stall mid-request before its connection is dropped

            def log_message(self, *args: Any) -> None:  # quiet, and never the Authorization header
                pass

            def do_POST(self) -> None:
                length = (self.headers.get("Content-Length") or "0").strip()
                if not (length.isascii() and length.isdigit()) or len(length) > 12 or int(length) > BODY_MAX_BYTES:
                    status, answer = _error(413, f"Content-Length must be a number of bytes up to {BODY_MAX_BYTES}",
                                            "invalid_request_error")
                elif not self.path.split("?", 1)[0].endswith("/chat/completions"):
                    status, answer = _error(404, "not found", "not_found")
                else:
                    try:
                        body = json_input.loads(self.rfile.read(int(length)), max_bytes=BODY_MAX_BYTES)
                        status, answer = stand_in_reply(teacher, body)
                    except json_input.JsonInputError as exc:
                        status, answer = _error(400, f"the body is not JSON this server accepts: {exc}", "invalid_request_error")
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        return Handler
