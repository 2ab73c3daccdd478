"""A scripted teacher: an OpenAI-compatible server on 127.0.0.1 that answers from the gold answers.

It is not a model. It answers two kinds of request, finding the source row by its text:

- a CodeAct agent turn (the task text the agent sends): the turns a good teacher would write, i.e.
  call the gold function with the gold arguments and print the result, then `final_answer(result)`;
- a v0 row of either track (the eval's [system, user] messages, the user's the row's prompt): the
  row's gold completion. As the main job's hosted stand-in it lets the demo show a hosted side that
  scores high, so the gate decides to fine-tune by itself.

Faults can be scripted per row, so tests, the capture benchmark and the demos know exactly which
answers are wrong (agent verdict, then the v0 answer):

    correct   the gold call, then final_answer                         -> accepted;  the gold completion
    wrong     the gold function with its first argument changed       -> wrong_call; that call (valid, not exact)
    broken    code that does not parse, every step                     -> unresolved_code_error; the gold
                                                                          completion without its last character
    fixed     broken code first, then the gold call, then final_answer -> accepted;  the gold completion (one turn)
    endless   prints a note every step, never calls a tool or finishes -> no_final_answer; a sentence, no call
    busy      the first request answers 429 (Retry-After: 0), then as `correct`
    down      every request answers 500                                -> request_failed; a failed request

    python -m slm_swap.trajectories.teacher --port 8011 --source bfcl --fault wrong=5 --fault broken=7

Both the OpenAI route (`/v1/chat/completions`) and Azure's (`/openai/deployments/NAME/chat/completions`)
are served, and `/v1/models`; any API key is accepted and none is logged. `stop` sequences are
honoured as OpenAI does (the text ends before the first one).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from slm_swap.core.prompts import build_prompt
from slm_swap.core.tracks import ROW_TRACKS, get_row_track
from slm_swap.data.examples import Example
from slm_swap.infra import json_input
from slm_swap.infra.json_input import BODY_MAX_BYTES
from slm_swap.llm.chat_api import ChatRequest, invalid_request
from slm_swap.trajectories.codeact import python_name

BEHAVIOURS = ("correct", "wrong", "broken", "fixed", "endless", "busy", "down")
TASK_PREFIX = "New task:\n"
# In every model name this server is given to answer as: the metrics files, traces and the report
# then say, in the model's identity, that the "hosted" answers came from no model.
NOT_A_MODEL = "not-a-model"
DEFAULT_MODEL = f"scripted-teacher-{NOT_A_MODEL}"


def is_scripted(identity: str | None) -> bool:
    """Whether a model identity (a metrics file's `model.identity`) names this server, not a model."""
    return bool(identity) and NOT_A_MODEL in identity


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server for many clients at once (this teacher's, and the tests' stub servers)."""

    request_queue_size = 128  # not the default 5: concurrent clients must not wait on SYN retries
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (a run stopping at its error budget, a closed keep-alive
        # connection) or stalls past the handler's timeout is not the server's error: socketserver
        # would print a traceback to stderr, in the middle of the command's own output. Anything
        # else is still printed.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def python_call(example: Example, arguments: dict[str, Any]) -> str:
    rendered = ", ".join(f"{name}={value!r}" for name, value in arguments.items())
    return f"{python_name(example.name)}({rendered})"


def wrong_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The gold arguments with the first one's value changed to one no answer key accepts."""
    changed = dict(arguments)
    if not changed:
        return {"unexpected": "WRONG"}
    first = next(iter(changed))
    value = changed[first]
    if isinstance(value, bool):
        changed[first] = not value
    elif isinstance(value, (int, float)):
        changed[first] = value + 1000
    else:
        changed[first] = "WRONG"
    return changed


def codeact_turn(example: Example, behaviour: str, step: int) -> str:
    """The teacher's output for step `step` (1-based) of a task."""
    call_step = 2 if behaviour == "fixed" else 1
    if behaviour == "broken" or (behaviour == "fixed" and step == 1):
        return f"Thought: I call {python_name(example.name)}.\n<code>\nresult = {python_name(example.name)}(\n</code>"
    if behaviour == "endless":
        return f"Thought: I am still thinking about step {step}.\n<code>\nprint('thinking')\n</code>"
    arguments = wrong_arguments(example.arguments) if behaviour == "wrong" else example.arguments
    if step <= call_step:
        return (f"Thought: I call {python_name(example.name)} with the arguments the task gives.\n"
                f"<code>\nresult = {python_call(example, arguments)}\nprint(result)\n</code>")
    return "Thought: I have the tool's result.\n<code>\nfinal_answer(result)\n</code>"


def row_answer(example: Example, track: str, behaviour: str) -> str:
    """The answer to the v0 row of `track` made from `example` (one turn, so `fixed` is `correct`)."""
    row_track = get_row_track(track)
    if behaviour == "endless":
        return "I am still thinking about this request."
    arguments = wrong_arguments(example.arguments) if behaviour == "wrong" else example.arguments
    completion = row_track.completion(example.name, arguments)
    # Every v0 completion ends in a closing delimiter (`}` or `>`): cut off, it parses as neither track.
    return completion[:-1] if behaviour == "broken" else completion


class ScriptedTeacher:
    """The server. `behaviours` maps a row id to one of BEHAVIOURS (default `correct`);
    `step_delay_s` is added to every answer (the capture benchmark's 200 ms per step); `model` is
    the name it answers as (keep `NOT_A_MODEL` in it)."""

    def __init__(self, examples: list[Example], behaviours: dict[str, str] | None = None, *,
                 step_delay_s: float = 0.0, port: int = 0, model: str = DEFAULT_MODEL):
        self.by_task = {example.request: example for example in examples}
        # A v0 row's prompt is built from its example, so the exact prompt names the row and its track.
        self.by_prompt = {build_prompt(track, example.request, example.functions): (example, track)
                          for example in examples for track in ROW_TRACKS}
        self.behaviours = dict(behaviours or {})
        unknown = sorted(set(self.behaviours.values()) - set(BEHAVIOURS))
        if unknown:
            raise ValueError(f"unknown teacher behaviour {unknown[0]!r}: expected one of {', '.join(BEHAVIOURS)}")
        self.step_delay_s, self.model = step_delay_s, model
        self.requests = 0  # chat completions answered or refused, all tasks
        self.max_tokens_asked: set[Any] = set()  # the `max_tokens` of every request (the turn budget it was given)
        self.asked: dict[str, int] = {}  # requests per row id (agent tasks), per "track:row id" (v0 rows)
        self._lock = threading.Lock()
        self._server = LoopbackHTTPServer(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ScriptedTeacher:
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-teacher", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (the command-line teacher)."""
        self._server.serve_forever()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, body: dict[str, Any]) -> tuple[int, str]:
        """(HTTP status, text) for one chat-completions request body (checked: `chat_api.ChatRequest`)."""
        chat = ChatRequest.model_validate(body)
        self.max_tokens_asked.add(chat.max_tokens if chat.max_tokens is not None else chat.max_completion_tokens)
        texts = [(m.role, m.text()) for m in chat.messages]
        task = next((t[len(TASK_PREFIX):] for role, t in texts if role == "user" and t.startswith(TASK_PREFIX)), None)
        example = self.by_task.get(task) if task is not None else None
        row = next((self.by_prompt[t] for role, t in texts if role == "user" and t in self.by_prompt), None)
        if example is None and row is None:  # smolagents' "give your best answer" request past the step limit, or a stranger
            return 200, "I could not complete the task."
        # An agent task and a v0 row of each track are asked apart: each has its own first request (`busy`).
        row_id, key = (example.id, example.id) if example is not None else (row[0].id, f"{row[1]}:{row[0].id}")
        behaviour = self.behaviours.get(row_id, "correct")
        with self._lock:
            self.asked[key] = self.asked.get(key, 0) + 1
            first = self.asked[key] == 1
        if behaviour == "down" or (behaviour == "busy" and first):
            return (500 if behaviour == "down" else 429), f"scripted {behaviour}"
        if example is None:
            text = row_answer(row[0], row[1], behaviour)
        else:
            step = 1 + sum(1 for role, _ in texts if role == "assistant")
            text = codeact_turn(example, behaviour, step)
        for stop in chat.stop_sequences():
            if stop in text:
                text = text[: text.index(stop)]
        return 200, text

    def _handler(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 60  # seconds a client may stall mid-request before its connection is dropped

            def log_message(self, *args: Any) -> None:  # quiet, and never the Authorization header
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if not self.path.split("?", 1)[0].endswith("/models"):
                    return self._send(404, {"error": {"message": "not found", "type": "not_found"}})
                self._send(200, {"object": "list", "data": [{"id": teacher.model, "object": "model", "owned_by": "slm-swap"}]})

            def _refuse(self, status: int, message: str) -> None:
                """An error as OpenAI words one; the connection closes after it (HTTP/1.0)."""
                self._send(status, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                              "code": None}})

            def do_POST(self) -> None:
                length_text = (self.headers.get("Content-Length") or "0").strip()
                if not (length_text.isascii() and length_text.isdigit()):
                    return self._refuse(400, "Content-Length must be a whole number of bytes")
                if len(length_text) > 12 or int(length_text) > BODY_MAX_BYTES:  # refused unread
                    return self._refuse(413, f"the body is larger than {BODY_MAX_BYTES} bytes")
                try:
                    body = json_input.loads(self.rfile.read(int(length_text)), max_bytes=BODY_MAX_BYTES)
                except json_input.JsonInputError as exc:
                    return self._refuse(400, f"the body is not JSON this server accepts: {exc}")
                if not self.path.split("?", 1)[0].endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found", "type": "not_found"}})
                try:  # the types and roles OpenAI's API gives, as `slm-swap serve` checks them
                    chat = ChatRequest.model_validate(body)
                except ValidationError as exc:
                    where, why = invalid_request(exc)
                    return self._refuse(400, f"Invalid request: {where}: {why}")
                if not chat.messages:
                    return self._refuse(400, "'messages' must not be empty")
                if any(value is not None and value < 1 for value in (chat.max_tokens, chat.max_completion_tokens)):
                    return self._refuse(400, "'max_tokens' must be a whole number >= 1")
                if teacher.step_delay_s:
                    time.sleep(teacher.step_delay_s)
                status, text = teacher.answer(body)
                with teacher._lock:
                    teacher.requests += 1
                if status != 200:
                    return self._send(status, {"error": {"message": text, "type": "server_error", "code": status}},
                                      {"Retry-After": "0"} if status == 429 else None)
                prompt_words = sum(len(m.text().split()) for m in chat.messages)
                self._send(200, {
                    "id": f"chatcmpl-{teacher.requests}", "object": "chat.completion", "created": int(time.time()),
                    "model": teacher.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    # Words, not tokens: the teacher has no tokenizer; enough for usage to be recorded.
                    "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(text.split()),
                              "total_tokens": prompt_words + len(text.split())},
                })

        return Handler


def parse_faults(specs: list[str], examples: list[Example]) -> dict[str, str]:
    """`NAME=K` (repeatable): every K-th row in source order (1-based) behaves as NAME; first match wins."""
    rules: list[tuple[str, int]] = []
    for spec in specs:
        name, _, every = spec.partition("=")
        if name not in BEHAVIOURS or not every.isdigit() or int(every) < 1:
            raise ValueError(f"--fault {spec!r}: expected NAME=K with NAME one of {', '.join(BEHAVIOURS)} and K >= 1")
        rules.append((name, int(every)))
    behaviours = {}
    for number, example in enumerate(examples, start=1):
        for name, every in rules:
            if number % every == 0:
                behaviours[example.id] = name
                break
    return behaviours


def main(argv: list[str] | None = None) -> None:
    from slm_swap.data.prepare import load_source

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8011, help="(default: %(default)s)")
    parser.add_argument("--source", choices=("bfcl", "xlam"), default="bfcl", help="(default: %(default)s)")
    parser.add_argument("--dataset-path", help="--source xlam: the xLAM file")
    parser.add_argument("--category", action="append", help="--source bfcl: BFCL category, repeatable (default: simple_python)")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=K", help="every K-th row behaves as NAME (repeatable)")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds added to every answer (default: %(default)s)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL,
                        help=f"the name it answers as; must contain {NOT_A_MODEL!r} (default: %(default)s)")
    args = parser.parse_args(argv)
    examples, _, _ = load_source(args.source, args.dataset_path, tuple(args.category or ()))
    if NOT_A_MODEL not in args.model_name:
        parser.error(f"--model-name {args.model_name!r}: must contain {NOT_A_MODEL!r}, so no record mistakes it for a model")
    try:
        behaviours = parse_faults(args.fault, examples)
    except ValueError as exc:
        parser.error(str(exc))
    teacher = ScriptedTeacher(examples, behaviours, step_delay_s=args.step_delay, port=args.port, model=args.model_name)
    faults = ", ".join(args.fault) or "none"
    print(f"scripted teacher on {teacher.url} as {args.model_name!r}: NOT A MODEL; it answers agent tasks and v0 rows "
          f"of {len(examples)} {args.source} source rows from their gold answers, with scripted faults ({faults})", flush=True)
    try:
        teacher.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
