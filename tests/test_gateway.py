"""`slm-swap gateway` in route mode, over real HTTP with the real `openai` SDK: the gateway runs under
uvicorn on 127.0.0.1, the hosted side is `OpenAIStub`, the SLM engine the scripted teacher, whose
answer per xLAM row is scripted (correct, wrong, broken, down). No model is loaded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import openai
import pytest
import uvicorn
from loopback_server import LoopbackServer
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai_stub import OpenAIStub

from slm_swap.app.cli import main
from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app
from slm_swap.app.http_server import listening_socket
from slm_swap.core.prompts import build_messages, build_prompt
from slm_swap.data.xlam import load_xlam
from slm_swap.infra.config import scrub_secrets
from slm_swap.trajectories.teacher import ScriptedTeacher

pytestmark = pytest.mark.usefixtures("loopback_only")

HOSTED_KEY = "sk-hosted-secret-0123456789"
HOSTED_TEXT = "the hosted model's answer"
FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"
SCRIPT = ("correct", "broken", "down", "wrong", "correct", "broken")  # the SLM's behaviour on rows 0..5


@pytest.fixture(scope="module")
def examples():
    return load_xlam(FIXTURE)[0][: len(SCRIPT)]


class Gateway:
    """The gateway app under uvicorn on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, app):
        sock = listening_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.01)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="client-key", max_retries=0)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start(tmp_path: Path, examples, hosted, teacher: ScriptedTeacher, api_key: str | None = None,
          log_content: bool = True, modes: dict[str, str] | None = None) -> tuple[Gateway, Path]:
    records = tmp_path / "06_gateway" / "requests.jsonl"  # the folder does not exist yet: the gateway makes it
    hosted_client = openai.OpenAI(base_url=f"{hosted.url}/v1", api_key=HOSTED_KEY, max_retries=1)
    slm_client = openai.OpenAI(base_url=teacher.url, api_key="engine-key", max_retries=0)
    app = create_gateway_app(Upstream(hosted_client, "hosted-deployment"),
                             SlmEngine(slm_client, {"structured": "structured", "toolcall": "toolcall"}),
                             records, lambda text: scrub_secrets(text, [HOSTED_KEY]), api_key=api_key,
                             log_content=log_content, modes=modes)
    return Gateway(app), records


@pytest.fixture
def world(tmp_path, examples):
    """(gateway, records path, hosted stub, teacher) with a healthy hosted side."""
    behaviours = {example.id: behaviour for example, behaviour in zip(examples, SCRIPT)}
    with OpenAIStub(respond=lambda messages: HOSTED_TEXT) as hosted, ScriptedTeacher(examples, behaviours) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher)
        try:
            yield gateway, records, hosted, teacher
        finally:
            gateway.close()


def tools_of(example) -> list[dict]:
    return [{"type": "function", "function": function} for function in example.functions]


def ask_tools(gateway: Gateway, example, **extra):
    """An agent framework's tool-calling request for the row, read back raw (headers) and parsed."""
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": example.request}], tools=tools_of(example), **extra)
    return raw.headers, raw.parse()


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_correct_slm_call_is_served_as_tool_calls(world, examples):
    gateway, records, hosted, _ = world
    headers, answer = ask_tools(gateway, examples[0])
    assert headers["x-slm-swap-route"] == "slm"
    call = answer.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (examples[0].name, examples[0].arguments)
    assert answer.choices[0].finish_reason == "tool_calls" and answer.model == "gpt-4o"
    assert hosted.requests == []  # the hosted model was not called
    [record] = read_records(records)
    assert (record["track"], record["route"], record["verdict"], record["slm"]["model"]) == ("toolcall", "slm", "valid", "toolcall")
    # What the SLM was asked, for the flywheel's rows: the user's text and the request's tools.
    assert record["request"]["user_text"] == examples[0].request and record["request"]["answer_as"] == "tool_calls"
    assert [f["name"] for f in record["request"]["functions"]] == [f["name"] for f in examples[0].functions]


def test_a_valid_but_wrong_call_is_served(world, examples):
    # The validators check the call against the request's schema, not against the truth.
    gateway, _, hosted, _ = world
    headers, answer = ask_tools(gateway, examples[3])
    assert headers["x-slm-swap-route"] == "slm"
    assert json.loads(answer.choices[0].message.tool_calls[0].function.arguments) != examples[3].arguments
    assert hosted.requests == []


def test_a_malformed_slm_answer_falls_back_to_the_hosted_model(world, examples):
    gateway, records, hosted, _ = world
    headers, answer = ask_tools(gateway, examples[1], tool_choice="required")
    assert headers["x-slm-swap-route"] == "hosted-fallback"
    assert headers["x-slm-swap-reason"].startswith("invalid_answer: ")
    assert answer.choices[0].message.content == HOSTED_TEXT
    [forwarded] = hosted.requests  # the original request, with the hosted model's name
    assert forwarded["body"]["model"] == "hosted-deployment"
    assert forwarded["body"]["tools"] == tools_of(examples[1]) and forwarded["body"]["tool_choice"] == "required"
    [record] = read_records(records)
    assert record["verdict"] == "invalid" and record["slm"]["output"] and record["hosted"]["output"]


def test_a_call_to_another_function_than_tool_choice_names_falls_back(world, examples):
    gateway, _, _, _ = world
    decoy = {"type": "function", "function": {"name": "decoy", "description": "", "parameters": {"type": "object"}}}
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": examples[4].request}], tools=tools_of(examples[4]) + [decoy],
        tool_choice={"type": "function", "function": {"name": "decoy"}})
    # The SLM sees only the named function, and the teacher knows no such prompt: it answers no call.
    assert raw.headers["x-slm-swap-route"] == "hosted-fallback"
    assert raw.headers["x-slm-swap-reason"].startswith("invalid_answer: ")


def test_the_slm_engine_down_falls_back_as_slm_unavailable(world, examples):
    gateway, records, _, _ = world
    headers, answer = ask_tools(gateway, examples[2])
    assert headers["x-slm-swap-route"] == "hosted-fallback"
    assert headers["x-slm-swap-reason"].startswith("slm_unavailable")
    assert answer.choices[0].message.content == HOSTED_TEXT
    assert read_records(records)[0]["slm"]["error"]


def test_a_tool_result_in_the_conversation_goes_to_the_hosted_model(world, examples):
    gateway, records, hosted, teacher = world
    messages = [{"role": "user", "content": examples[0].request},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": examples[0].name, "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    raw = gateway.client().chat.completions.with_raw_response.create(model="gpt-4o", messages=messages,
                                                                    tools=tools_of(examples[0]))
    assert raw.headers["x-slm-swap-route"] == "hosted"
    tool_loop = ("assistant_tool_calls_in_conversation", "tool_result_in_conversation")  # a later turn of a tool loop
    assert raw.headers["x-slm-swap-reason"] in tool_loop
    assert raw.parse().choices[0].message.content == HOSTED_TEXT
    assert teacher.requests == 0 and hosted.requests[0]["body"]["messages"] == messages
    assert read_records(records)[0]["not_swappable"]["reason"] == raw.headers["x-slm-swap-reason"]


def test_a_track_addressed_request_gets_the_slm_text(world, examples):
    gateway, _, _, _ = world
    messages = build_messages(build_prompt("structured", examples[0].request, examples[0].functions))
    raw = gateway.client().chat.completions.with_raw_response.create(model="structured", messages=messages)
    assert raw.headers["x-slm-swap-route"] == "slm"
    assert json.loads(raw.parse().choices[0].message.content) == {"name": examples[0].name, "arguments": examples[0].arguments}


def test_the_hosted_model_down_after_an_invalid_answer_is_a_502_without_the_key(tmp_path, examples):
    behaviours = {example.id: behaviour for example, behaviour in zip(examples, SCRIPT)}
    # Every request fails, quoting the key it was given, as some real endpoints do.
    with OpenAIStub(failures=[500] * 10, echo_key=True) as hosted, ScriptedTeacher(examples, behaviours) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher)
        try:
            with pytest.raises(openai.APIStatusError) as raised:
                ask_tools(gateway, examples[5])
            served, _ = ask_tools(gateway, examples[0])  # a valid SLM answer needs no hosted model
        finally:
            gateway.close()
    assert raised.value.status_code == 502
    message = raised.value.body["message"]
    assert "hosted" in message and "\n" not in message and HOSTED_KEY not in message
    assert len(hosted.requests) == 2  # tried, and retried once
    assert served["x-slm-swap-route"] == "slm"
    text = records.read_text(encoding="utf-8")
    assert HOSTED_KEY not in text and "[redacted]" in text
    assert [record["status"] for record in read_records(records)] == [502, 200]


def test_records_hold_one_line_per_request_readable_after_each(world, examples):
    gateway, records, _, _ = world
    for count, example in enumerate(examples[:3], start=1):
        ask_tools(gateway, example)
        lines = read_records(records)  # whole lines as soon as the response is out
        assert len(lines) == count and len({line["id"] for line in lines}) == count
    assert [line["route"] for line in lines] == ["slm", "hosted-fallback", "hosted-fallback"]
    assert all(line["latency_s"] >= 0 and line["time"] for line in lines)
    assert HOSTED_KEY not in records.read_text(encoding="utf-8")


def test_bad_bodies_get_openai_shaped_errors(world):
    gateway, records, _, _ = world
    client = gateway.client()
    with pytest.raises(openai.BadRequestError) as raised:
        client.post("/chat/completions", body={"messages": "not a list"}, cast_to=object)
    assert raised.value.body["type"] == "invalid_request_error"
    assert not records.exists() or records.read_text() == ""  # refused before any backend: nothing to record


def test_the_command_refuses_bad_settings_in_one_line(monkeypatch, tmp_path, capsys):
    """Each refused before the port is served or any model loads: one line naming the setting."""
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("SLM_BASE_URL", "HOSTED_BASE_URL", "AZURE_ENDPOINT", "AZURE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOSTED_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HOSTED_MODEL", "m")
    cases = [({"SLM_BASE_URL": "127.0.0.1:8000"}, [], "SLM_BASE_URL"),
             ({}, ["--adapters-dir", str(tmp_path / "r.jsonl")], "--adapters-dir"),
             ({}, ["--model-path", str(tmp_path / "nothing")], "no checkpoint there")]
    (tmp_path / "r.jsonl").write_text("", encoding="utf-8")
    for env, args, named in cases:
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            assert main(["gateway", "--port", "0", "--records", str(tmp_path / "r.jsonl"), *args]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slm-swap: error")]
        assert len(errors) == 1 and named in errors[0], (args, errors)
    monkeypatch.delenv("HOSTED_BASE_URL")
    assert main(["gateway", "--port", "0"]) == 2
    assert "hosted model not configured" in capsys.readouterr().err


class StreamingStub(LoopbackServer):
    """A hosted model that streams its answer as OpenAI's SSE chunks, one word each."""

    def _handler(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for word in HOSTED_TEXT.split(" "):
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "hosted-deployment",
                             "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler


def stream_tools(gateway: Gateway, example, **extra):
    """A streamed tool-calling request for the row: its headers and every chunk, read with the SDK."""
    raw = gateway.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": example.request}], tools=tools_of(example), stream=True,
        **extra)
    return raw.headers, list(raw.parse())


def test_a_streamed_request_gets_the_slm_call_as_tool_call_chunks(world, examples):
    gateway, records, hosted, teacher = world
    headers, chunks = stream_tools(gateway, examples[0], stream_options={"include_usage": True})
    assert headers["x-slm-swap-route"] == "slm"
    state = ChatCompletionStreamState()  # the SDK's own accumulator of create(stream=True) chunks
    for chunk in chunks:
        state.handle_chunk(chunk)
    choice = state.get_final_completion().choices[0]
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (examples[0].name, examples[0].arguments)
    assert call.id.startswith("call_") and choice.finish_reason == "tool_calls"
    # As a hand-rolled client reads them: the arguments joined from the deltas of the call's index.
    joined = "".join(delta.function.arguments or "" for chunk in chunks for choice in chunk.choices
                     for delta in choice.delta.tool_calls or [] if delta.index == 0)
    assert json.loads(joined) == examples[0].arguments
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1].usage  # include_usage: a last chunk with no choices, as OpenAI sends it
    assert chunks[-1].choices == [] and usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert hosted.requests == [] and teacher.requests == 1  # the SLM was asked once, without streaming
    [record] = read_records(records)
    assert (record["route"], record["verdict"]) == ("slm", "valid")


def test_without_include_usage_a_streamed_answer_has_no_usage_chunk(world, examples):
    gateway, _, _, _ = world
    _, chunks = stream_tools(gateway, examples[0])
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_sdk_stream_helper_reads_a_track_addressed_answer(world, examples):
    gateway, _, _, _ = world
    messages = build_messages(build_prompt("structured", examples[0].request, examples[0].functions))
    with gateway.client().chat.completions.stream(model="structured", messages=messages) as stream:
        text = "".join(event.delta for event in stream if event.type == "content.delta")
        final = stream.get_final_completion()
    assert json.loads(text) == {"name": examples[0].name, "arguments": examples[0].arguments}
    assert final.choices[0].message.content == text and final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("row", "reason", "verdict"), [(1, "invalid_answer: ", "invalid"),  # broken answer
                                                      (2, "slm_unavailable", "unavailable")])  # engine down
def test_a_streamed_request_the_slm_fails_streams_the_hosted_answer(tmp_path, examples, row, reason, verdict):
    behaviours = {example.id: behaviour for example, behaviour in zip(examples, SCRIPT)}
    with StreamingStub() as hosted, ScriptedTeacher(examples, behaviours) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher)
        try:
            headers, chunks = stream_tools(gateway, examples[row], stream_options={"include_usage": True})
        finally:
            gateway.close()
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks).strip() == HOSTED_TEXT
    assert headers["x-slm-swap-route"] == "hosted-fallback" and headers["x-slm-swap-reason"].startswith(reason)
    assert teacher.requests >= 1
    [record] = read_records(records)
    assert (record["route"], record["verdict"], record["status"]) == ("hosted-fallback", verdict, 200)


def test_a_streamed_request_the_slm_may_not_take_streams_from_the_hosted_model(tmp_path, examples):
    with StreamingStub() as hosted, ScriptedTeacher(examples) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher)
        try:
            raw = gateway.client().chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": examples[0].request}], stream=True)  # no tools
            text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse())
        finally:
            gateway.close()
    assert text.strip() == HOSTED_TEXT
    assert (raw.headers["x-slm-swap-route"], raw.headers["x-slm-swap-reason"]) == ("hosted", "no_tools")
    assert teacher.requests == 0
    assert read_records(records)[0]["not_swappable"]["reason"] == "no_tools"


def test_with_a_key_the_gateway_refuses_clients_without_it(tmp_path, examples):
    with OpenAIStub() as hosted, ScriptedTeacher(examples) as teacher:
        gateway, _ = start(tmp_path, examples, hosted, teacher, api_key="gateway-key-123456")
        try:
            with pytest.raises(openai.AuthenticationError):
                ask_tools(gateway, examples[0])  # the client's key is "client-key"
            keyed = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="gateway-key-123456")
            assert keyed.models.list().data
        finally:
            gateway.close()
    assert hosted.requests == [] and teacher.requests == 0


def test_no_log_content_keeps_only_the_metadata(tmp_path, examples):
    """`--no-log-content`: the route, verdict, models, latency and usage are recorded; no answer, no
    argument value quoted in a reason, no request detail."""
    behaviours = {example.id: behaviour for example, behaviour in zip(examples, SCRIPT)}
    with OpenAIStub(respond=lambda messages: HOSTED_TEXT) as hosted, ScriptedTeacher(examples, behaviours) as teacher:
        gateway, records = start(tmp_path, examples, hosted, teacher, log_content=False)
        try:
            for row in (0, 1, 3):  # served by the SLM; broken: falls back; wrong but valid: served
                ask_tools(gateway, examples[row])
            gateway.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        finally:
            gateway.close()
    served, fallback, wrong, plain = read_records(records)
    assert [r["route"] for r in (served, fallback, wrong, plain)] == ["slm", "hosted-fallback", "slm", "hosted"]
    assert fallback["reason"] == "invalid_answer" and plain["reason"] == "no_tools"
    assert served["slm"]["usage"] and not served["slm"]["failed"] and "output" not in served["slm"]
    text = records.read_text()
    assert HOSTED_TEXT not in text and examples[0].name not in text and "tool_call" not in text
    assert examples[0].request not in text and "request" not in served


def test_an_azure_hosted_model_gets_its_deployment_route(tmp_path, examples):
    """The hosted side as `eval` builds it for Azure (`AzureOpenAI` with a deployment): a fallback goes to
    the deployment's route with the api-version, keyed with `api-key`."""
    with OpenAIStub(respond=lambda messages: HOSTED_TEXT) as hosted, ScriptedTeacher(examples, {examples[1].id: "broken"}) as teacher:
        azure = openai.AzureOpenAI(azure_endpoint=hosted.url, azure_deployment="gpt-dep", api_key=HOSTED_KEY,
                                   api_version="2024-02-15-preview", max_retries=0)
        app = create_gateway_app(Upstream(azure, "gpt-dep"),
                                 SlmEngine(openai.OpenAI(base_url=teacher.url, api_key="k", max_retries=0),
                                           {"structured": "structured", "toolcall": "toolcall"}),
                                 tmp_path / "r.jsonl", lambda text: scrub_secrets(text, [HOSTED_KEY]))
        gateway = Gateway(app)
        try:
            headers, answer = ask_tools(gateway, examples[1])
        finally:
            gateway.close()
    assert headers["x-slm-swap-route"] == "hosted-fallback" and answer.choices[0].message.content == HOSTED_TEXT
    [request] = hosted.requests
    assert request["path"] == "/openai/deployments/gpt-dep/chat/completions"
    assert request["query"]["api-version"] == ["2024-02-15-preview"] and request["headers"]["api-key"] == HOSTED_KEY
    assert request["body"]["tools"] == tools_of(examples[1])
