"""slm_swap.tracing against a real HTTP receiver speaking the Langfuse v5 wire protocol (OTLP + scores).

Nothing here leaves 127.0.0.1: proxies are cleared and a socket guard fails any other connection.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time

import pytest
from opentelemetry import trace as otel_trace_api
from pydantic import BaseModel, SecretStr

from langfuse_receiver import OTEL_TRACES_PATH, SCORES_PATH, LangfuseReceiver
from slm_swap.config import Settings
from slm_swap.errors import SlmSwapError
from slm_swap.tracing import (
    REDACTED,
    VALUE_CAP_BYTES,
    LangfuseTracer,
    NullTracer,
    _Payloads,
    check_tracing_settings,
    open_tracer,
    trace_url,
)

PUBLIC_KEY = "pk-lf-receiver-public"
SECRET_KEY = "sk-lf-receiver-SECRET-4f1c9a7e"
AZURE_KEY = "azure-FAKE-KEY-0c6b2e91d4a84f37"


pytestmark = pytest.mark.usefixtures("loopback_only")


def make_settings(host: str | None, **overrides) -> Settings:
    values = dict(
        _env_file=None,  # neither .env nor the developer's LANGFUSE_* may leak in
        langfuse_public_key=PUBLIC_KEY,
        langfuse_secret_key=SecretStr(SECRET_KEY),
        langfuse_host=host,
        langfuse_disabled=False,
        azure_api_key=SecretStr(AZURE_KEY),
        hosted_api_key=None,
    )
    values.update(overrides)
    return Settings(**values)


def by_name(receiver: LangfuseReceiver) -> dict[str, dict]:
    return {span["name"]: span for span in receiver.spans}


def decoded(span: dict, attribute: str):
    return json.loads(span["attributes"][attribute])


def test_run_reaches_langfuse_as_one_trace(capsys):
    big_output = "y" * (3 * VALUE_CAP_BYTES)
    with LangfuseReceiver() as receiver:
        settings = make_settings(receiver.url)
        with open_tracer(settings, flush_timeout_s=5) as tracer:
            assert isinstance(tracer, LangfuseTracer)
            with tracer.run("eval", input={"track": "toolcall", "limit": 3},
                            metadata={"prefect_flow_run_id": "flow-run-42", "model": "smollm2"}) as run:
                for index in range(3):
                    output = big_output if index == 2 else {"answer": f"a{index}"}
                    run.example(index, input={"prompt": f"q{index}"}, output=output, metadata={"correct": index != 1})
                run.event("decision", metadata={"fine_tune": True, "gap": 0.12})
                run.score("accuracy", 2 / 3)
                run.score("valid_json", 1)
                run.update(output={"accuracy": 2 / 3})
            assert tracer.flush() is True

        assert re.fullmatch(r"[0-9a-f]{32}", run.trace_id)
        assert receiver.trace_ids() == {run.trace_id}
        assert receiver.unexpected_requests() == []
        assert set(receiver.paths()) == {OTEL_TRACES_PATH, SCORES_PATH}

        spans = by_name(receiver)
        assert set(spans) == {"eval", "example-0", "example-1", "example-2", "decision"}
        root = spans["eval"]
        assert root["parent_span_id"] is None
        assert root["scope"]["name"] == "langfuse-sdk"
        assert root["resource"] == {"service.name": "slm-swap"}
        attributes = root["attributes"]
        assert attributes["langfuse.trace.name"] == "eval"
        assert attributes["langfuse.observation.type"] == "span"
        assert decoded(root, "langfuse.observation.input") == {"track": "toolcall", "limit": 3}
        assert decoded(root, "langfuse.observation.output") == {"accuracy": 2 / 3}
        # Metadata is one attribute per key, each value JSON-encoded, on the observation and
        # (short scalars, propagated to every observation) on the trace.
        assert decoded(root, "langfuse.observation.metadata.prefect_flow_run_id") == "flow-run-42"
        assert decoded(root, "langfuse.observation.metadata.model") == "smollm2"
        assert decoded(root, "langfuse.trace.metadata.prefect_flow_run_id") == "flow-run-42"

        for index in range(3):
            example = spans[f"example-{index}"]
            assert example["parent_span_id"] == root["span_id"]
            assert example["trace_id"] == run.trace_id
            assert example["attributes"]["langfuse.observation.type"] == "span"
            assert decoded(example, "langfuse.observation.input") == {"prompt": f"q{index}"}
            assert decoded(example, "langfuse.observation.metadata.example_index") == index
            assert decoded(example, "langfuse.observation.metadata.correct") == (index != 1)
            assert decoded(example, "langfuse.trace.metadata.prefect_flow_run_id") == "flow-run-42"
        assert decoded(spans["example-0"], "langfuse.observation.output") == {"answer": "a0"}
        capped = spans["example-2"]["attributes"]["langfuse.observation.output"]  # a string stays a string
        assert capped.startswith("y" * 100) and "[truncated: 12288 bytes, first 4096 kept]" in capped
        assert len(capped.encode()) < VALUE_CAP_BYTES + 100

        event = spans["decision"]
        assert event["parent_span_id"] == root["span_id"]
        assert event["attributes"]["langfuse.observation.type"] == "event"
        assert decoded(event, "langfuse.observation.metadata.fine_tune") is True
        assert decoded(event, "langfuse.observation.metadata.gap") == 0.12

        scores = {score["name"]: score for score in receiver.scores}
        assert set(scores) == {"accuracy", "valid_json"}
        for score in scores.values():
            assert score["traceId"] == run.trace_id
            assert score["dataType"] == "NUMERIC"
            assert "observationId" not in score  # on the trace, not on an observation
        assert scores["accuracy"]["value"] == pytest.approx(2 / 3)
        assert scores["valid_json"]["value"] == 1.0

    assert trace_url(settings, run.trace_id) == f"{receiver.url}/trace/{run.trace_id}"
    assert capsys.readouterr().err == ""
    # The tracer never installs itself as the process-wide OpenTelemetry provider.
    assert isinstance(otel_trace_api.get_tracer_provider(), otel_trace_api.ProxyTracerProvider)


def test_exception_in_run_marks_the_trace_and_is_reraised():
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver.url), flush_timeout_s=5) as tracer:
            with pytest.raises(ValueError, match="boom"):
                with tracer.run("train", input={}, metadata={}) as run:
                    run.example(0, input="x", output="y", metadata={})
                    raise ValueError(f"boom (key {AZURE_KEY})")
            assert tracer.flush() is True

    root = by_name(receiver)["train"]
    assert root["trace_id"] == run.trace_id
    assert root["status_code"] == 2  # STATUS_CODE_ERROR
    assert root["attributes"]["langfuse.observation.level"] == "ERROR"
    assert root["attributes"]["langfuse.observation.status_message"] == f"ValueError: boom (key {REDACTED})"
    assert root["events"] == []  # no raw exception event with an unscrubbed message and stack trace


@pytest.mark.parametrize("missing", [
    ("LANGFUSE_PUBLIC_KEY",),
    ("LANGFUSE_SECRET_KEY",),
    ("LANGFUSE_HOST",),
    ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_HOST"),
    ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST"),
])
def test_missing_settings_name_exactly_the_missing_variables(missing):
    settings = make_settings("http://127.0.0.1:9", **{name.lower(): None for name in missing})
    for check in (check_tracing_settings, open_tracer):
        with pytest.raises(SlmSwapError) as raised:
            check(settings)
        message = str(raised.value)
        assert "\n" not in message
        assert "LANGFUSE_DISABLED=1" in message
        named = set(re.findall(r"LANGFUSE_(?:PUBLIC_KEY|SECRET_KEY|HOST)", message))
        assert named == set(missing)


def test_blank_values_count_as_missing_and_host_must_be_a_url():
    with pytest.raises(SlmSwapError, match="LANGFUSE_SECRET_KEY is not set"):
        check_tracing_settings(make_settings("http://127.0.0.1:9", langfuse_secret_key=SecretStr("  ")))
    with pytest.raises(SlmSwapError, match="LANGFUSE_HOST must be an http"):
        check_tracing_settings(make_settings("cloud.langfuse.com"))


def test_bypass_returns_the_null_tracer_and_sends_nothing(capsys):
    with LangfuseReceiver() as receiver:
        # Keys may be absent under the bypass; the host points at the receiver to prove silence.
        settings = make_settings(receiver.url, langfuse_disabled=True, langfuse_public_key=None,
                                 langfuse_secret_key=None)
        check_tracing_settings(settings)
        tracer = open_tracer(settings)
        assert isinstance(tracer, NullTracer)
        with tracer.run("compare", input={"a": 1}, metadata={"prefect_flow_run_id": "x"}) as run:
            assert run.trace_id is None
            run.example(0, input="i", output="o", metadata={})
            run.event("decision", metadata={"fine_tune": False})
            run.score("accuracy", 0.5)
            run.update(output={"done": True}, metadata={"more": 1})
        with pytest.raises(RuntimeError):
            with tracer.run("compare", input={}, metadata={}):
                raise RuntimeError("still raised")
        assert tracer.flush() is True
        tracer.close()
        time.sleep(0.2)
        assert receiver.requests == []

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LANGFUSE_DISABLED=1" in err and "tracing is off" in err
    assert trace_url(settings, run.trace_id) is None


def test_langfuse_down_never_fails_the_command(capsys):
    bound_s = 2.0
    with LangfuseReceiver(fail_with=503) as receiver:
        tracer = open_tracer(make_settings(receiver.url), flush_timeout_s=bound_s)
        with tracer.run("eval", input={"n": 2}, metadata={}) as run:
            run.example(0, input="q", output="a", metadata={})
            run.score("accuracy", 1.0)
            result = "command finished"
        assert result == "command finished"

        started = time.monotonic()
        delivered = tracer.flush()
        flush_s = time.monotonic() - started
        started = time.monotonic()
        tracer.close()
        close_s = time.monotonic() - started

        assert delivered is False
        assert flush_s < bound_s + 0.75
        assert close_s < bound_s + 0.75
        assert OTEL_TRACES_PATH in receiver.paths()  # it did try

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "traces were not delivered" in err and receiver.url in err and "503" in err


def test_unreachable_host_is_reported_not_raised(capsys):
    with LangfuseReceiver() as receiver:
        url = receiver.url
    # The receiver is closed: nothing listens on its port any more.
    with open_tracer(make_settings(url), flush_timeout_s=2) as tracer:
        with tracer.run("eval", input={}, metadata={}) as run:
            run.score("accuracy", 1.0)
        started = time.monotonic()
        assert tracer.flush() is False
        assert time.monotonic() - started < 2.75
    assert "traces were not delivered" in capsys.readouterr().err


def test_no_secret_on_the_wire():
    basic_auth = base64.b64encode(f"{PUBLIC_KEY}:{SECRET_KEY}".encode()).decode()
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver.url), flush_timeout_s=5) as tracer:
            with pytest.raises(RuntimeError):
                with tracer.run("eval", input={"endpoint": "https://x.openai.azure.com", "note": f"uses {AZURE_KEY}"},
                                metadata={"azure_api_key": AZURE_KEY, "nested": {"Api_Token": SECRET_KEY}}) as run:
                    run.example(0, input={"langfuse_secret": SECRET_KEY}, output=f"echo {SECRET_KEY}",
                                metadata={"password": "hunter2-hunter2"})
                    run.event("decision", metadata={"hosted_api_key": AZURE_KEY})
                    run.update(output={"log": f"failed with {AZURE_KEY}"})
                    raise RuntimeError(f"auth failed for {SECRET_KEY}")
            assert tracer.flush() is True

    assert receiver.requests, "nothing was sent"
    for request in receiver.requests:
        for body in (request["raw_body"], request["body"]):
            for secret in (SECRET_KEY, AZURE_KEY, "hunter2", basic_auth):
                assert secret.encode() not in body, f"{secret!r} in the body of {request['path']}"
        for header, value in request["headers"].items():
            if header == "authorization":  # Basic auth legitimately carries the Langfuse keys
                assert value == f"Basic {basic_auth}"
                continue
            for secret in (SECRET_KEY, AZURE_KEY, basic_auth):
                assert secret not in value, f"{secret!r} in header {header}"

    # The redaction really happened (the test is not vacuous).
    root = by_name(receiver)["eval"]
    assert decoded(root, "langfuse.observation.metadata.azure_api_key") == REDACTED
    assert decoded(root, "langfuse.observation.metadata.nested") == {"Api_Token": REDACTED}
    assert decoded(root, "langfuse.observation.input")["note"] == f"uses {REDACTED}"
    assert root["trace_id"] == run.trace_id


def test_each_tracer_owns_its_sdk_client():
    """v5 keeps one client per public key process-wide; a second tracer must not reuse the first's host."""
    with LangfuseReceiver() as first, LangfuseReceiver() as second:
        trace_ids = {}
        for receiver in (first, second):
            with open_tracer(make_settings(receiver.url), flush_timeout_s=5) as tracer:
                with tracer.run("eval", input={}, metadata={}) as run:
                    run.score("accuracy", 1.0)
                assert tracer.flush() is True
                trace_ids[receiver.port] = run.trace_id

        for receiver in (first, second):
            assert receiver.trace_ids() == {trace_ids[receiver.port]}
            assert [score["traceId"] for score in receiver.scores] == [trace_ids[receiver.port]]
        assert trace_ids[first.port] != trace_ids[second.port]


def test_a_run_inside_a_run_is_a_trace_of_its_own():
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver.url), flush_timeout_s=5) as tracer:
            with tracer.run("compare", input={}, metadata={}) as outer:
                with tracer.run("eval", input={}, metadata={}) as inner:
                    inner.example(0, input="q", output="a", metadata={})
                outer.example(0, input="q", output="a", metadata={})
            assert tracer.flush() is True

    assert outer.trace_id != inner.trace_id
    assert receiver.trace_ids() == {outer.trace_id, inner.trace_id}
    roots = {span["name"]: span for span in receiver.spans if span["parent_span_id"] is None}
    assert roots["compare"]["trace_id"] == outer.trace_id and roots["eval"]["trace_id"] == inner.trace_id


@pytest.mark.parametrize("switch", ["LANGFUSE_TRACING_ENABLED=false", "OTEL_SDK_DISABLED=true"])
def test_sdk_switched_off_by_the_environment_is_an_error(monkeypatch, switch):
    name, value = switch.split("=")
    monkeypatch.setenv(name, value)
    with pytest.raises(SlmSwapError, match="LANGFUSE_DISABLED=1"):
        open_tracer(make_settings("http://127.0.0.1:9"))


def test_payload_scrub_and_cap():
    class Credentials(BaseModel):
        user: str
        secret: SecretStr

    payloads = _Payloads(make_settings("http://127.0.0.1:9"))
    scrubbed = payloads.scrub({
        "AZURE_API_KEY": "x", "max_tokens": 5, "Password": "p", "fine": ["ok", SecretStr("s")],
        "creds": Credentials(user="u", secret=SecretStr("hidden")), "text": f"a {SECRET_KEY} b",
    })
    assert scrubbed == {
        "AZURE_API_KEY": REDACTED, "max_tokens": REDACTED, "Password": REDACTED, "fine": ["ok", REDACTED],
        "creds": {"user": "u", "secret": REDACTED}, "text": f"a {REDACTED} b",
    }
    assert payloads.value({"small": 1}) == {"small": 1}
    capped = payloads.value({"big": "z" * 10_000})
    assert isinstance(capped, str) and "[truncated:" in capped
    assert payloads.metadata({"a": "é" * 5000})["a"].endswith("first 4096 kept]")


def test_a_bad_score_is_reported_at_flush_not_raised(capsys):
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver.url), flush_timeout_s=5) as tracer:
            with tracer.run("eval", input={}, metadata={}) as run:
                run.score("accuracy", float("nan"))
                run.score("valid", True)
            assert tracer.flush() is False
    assert [(score["name"], score["value"]) for score in receiver.scores] == [("valid", 1.0)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'accuracy' is not a finite number" in err
