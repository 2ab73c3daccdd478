"""Test helper for the Mastra gateway test: `slm-swap gateway` (the real command, its own process) in
front of two local servers, both driven by the same scripted rows.

    python test/gateway_helper.py SPEC.json

SPEC.json: {"records": PATH, "api_key": KEY, "rows": [{"id", "request", "functions", "name",
"arguments", "slm": BEHAVIOUR}, ...]}. `functions` are the signatures exactly as the agent sends its
tools (`{"name", "description", "parameters"}`), so the gateway's prompt for a row is the row's.

- The SLM engine is the project's scripted teacher (`ScriptedTeacher`): for a row's toolcall prompt
  it answers the gold call, or the scripted fault (`wrong`: an argument replaced by "WRONG").
- The hosted stand-in answers like an OpenAI model doing tool calling: the row's gold call as
  `tool_calls`, and once a tool result is in the conversation, a final text that quotes it.

Prints one JSON line, {"gateway": URL, "hosted": URL, "slm": URL}, once the gateway answers; stops
everything when stdin closes (the test ends, or dies).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from slm_swap.data.examples import Example  # noqa: E402
from slm_swap.infra import json_input  # noqa: E402
from slm_swap.trajectories.teacher import LoopbackHTTPServer, ScriptedTeacher  # noqa: E402

HOSTED_MODEL = "hosted-stand-in"
HOSTED_KEY = "sk-hosted-stand-in-0123456789"
GATEWAY_LINE = re.compile(r"gateway on (http://\S+/v1)")


def hosted_reply(body: dict[str, Any], by_request: dict[str, Example], counter: list[int]) -> tuple[int, dict[str, Any]]:
    """(status, chat.completion) for one request: the row's gold call, or text quoting the tool's result."""
    if body.get("stream"):
        return 400, {"error": {"message": "the stand-in does not stream", "type": "invalid_request_error"}}
    messages = body.get("messages") or []
    results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
    if results:
        message = {"role": "assistant", "content": f"convert_length says: {results[-1].get('content')}"}
        finish = "stop"
    else:
        users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        example = by_request.get(users[-1]) if users and isinstance(users[-1], str) else None
        if example is None or not body.get("tools"):
            return 400, {"error": {"message": "the stand-in knows no such request", "type": "invalid_request_error"}}
        counter[0] += 1
        call = {"id": f"call_hosted_{counter[0]}", "type": "function",
                "function": {"name": example.name, "arguments": json.dumps(example.arguments)}}
        message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return 200, {"id": f"chatcmpl-hosted-{counter[0]}", "object": "chat.completion", "created": int(time.time()),
                 "model": body.get("model", HOSTED_MODEL), "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def hosted_stand_in(examples: list[Example]) -> LoopbackHTTPServer:
    by_request = {example.request: example for example in examples}
    counter = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json_input.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            status, answer = hosted_reply(body if isinstance(body, dict) else {}, by_request, counter)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_gateway(records: Path, slm_url: str, hosted_url: str, api_key: str) -> tuple[subprocess.Popen, str, list[str]]:
    """`slm-swap gateway --port 0`; returns the process, its URL once it answers, and its output so far."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AZURE_")}
    env.update(LANGFUSE_DISABLED="1", SLM_BASE_URL=slm_url, HOSTED_BASE_URL=hosted_url, HOSTED_MODEL=HOSTED_MODEL,
               HOSTED_API_KEY=HOSTED_KEY, SLM_SWAP_GATEWAY_API_KEY=api_key)
    process = subprocess.Popen([sys.executable, "-m", "slm_swap.app.cli", "gateway", "--port", "0", "--records", str(records),
                                # this test's gateway only: no policy or registry a dev tree may hold
                                "--no-policy", "--registry", str(Path(records).with_name("registry.json"))],
                               cwd=records.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    url = None
    for line in process.stdout:  # the first line names the bound port
        output.append(line)
        match = GATEWAY_LINE.search(line)
        if match:
            url = match.group(1)
            break
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    if url is None:
        process.wait()
        sys.exit(f"slm-swap gateway did not start:\n{''.join(output)}")
    deadline = time.monotonic() + 30
    while True:
        try:
            request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {api_key}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return process, url, output
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit(f"slm-swap gateway did not answer:\n{''.join(output)}")
            time.sleep(0.1)


def main(spec_path: Path) -> None:
    spec = json_input.loads(spec_path.read_bytes())
    rows = spec["rows"]
    examples = [Example(row["id"], row["request"], row["functions"], row["name"], row["arguments"]) for row in rows]
    records = Path(spec["records"])
    hosted = hosted_stand_in(examples)
    with ScriptedTeacher(examples, {row["id"]: row["slm"] for row in rows}) as teacher:
        hosted_url = f"http://127.0.0.1:{hosted.server_address[1]}/v1"
        gateway, url, output = start_gateway(records, teacher.url, hosted_url, spec["api_key"])
        try:
            print(json.dumps({"gateway": url, "hosted": hosted_url, "slm": teacher.url}), flush=True)
            sys.stdin.read()  # until the test closes stdin, or dies
        finally:
            gateway.terminate()
            try:
                gateway.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gateway.kill()
            hosted.shutdown()
    if any("Traceback" in line or HOSTED_KEY in line for line in output):
        sys.exit("the gateway printed a traceback or the hosted key:\n" + "".join(output))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
