"""slm_swap.infra.tracing against a real HTTP receiver speaking the Langfuse v5 wire protocol (OTLP,
scores, datasets and dataset items).

Nothing here leaves 127.0.0.1: proxies are cleared and a socket guard fails any other connection.
The SDK keeps one client per public key and process, so each receiver has a public key of its own.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path

import pytest
from opentelemetry import trace as otel_trace_api
from pydantic import BaseModel, SecretStr

from langfuse_receiver import DATASET_ITEMS_PATH, DATASETS_PATH, OTEL_TRACES_PATH, SCORES_PATH, LangfuseReceiver
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.tracing import (
    REDACTED,
    VALUE_CAP_BYTES,
    LangfuseTracer,
    NullTracer,
    check_tracing_settings,
    comparison_url,
    open_tracer,
    trace_url,
)
from slm_swap.infra.tracing.masking import Mask

SECRET_KEY = "sk-lf-receiver-SECRET-4f1c9a7e"
AZURE_KEY = "azure-FAKE-KEY-0c6b2e91d4a84f37"


pytestmark = pytest.mark.usefixtures("loopback_only")


def make_settings(host: str | LangfuseReceiver | None, **overrides) -> Settings:
    """Settings for a receiver (its URL and public key), or for a bare host with a fresh public key."""
    receiver = host if isinstance(host, LangfuseReceiver) else None
    values = dict(
        _env_file=None,  # neither .env nor the developer's LANGFUSE_* may leak in
        langfuse_public_key=receiver.public_key if receiver else f"pk-lf-{uuid.uuid4().hex[:12]}",
        langfuse_secret_key=SecretStr(SECRET_KEY),
        langfuse_host=receiver.url if receiver else host,
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
        settings = make_settings(receiver)
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
        with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
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
        settings = make_settings(receiver, langfuse_disabled=True, langfuse_public_key=None,
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


@pytest.mark.parametrize("outage", ["503", "hang"])
def test_langfuse_down_or_hanging_never_fails_the_command(capsys, outage):
    """Down (every request answered 503) or hanging (requests read, never answered): the run
    finishes, flush() costs at most the bound, returns False and says so in one line."""
    bound_s = 2.0
    with LangfuseReceiver(**({"fail_with": 503} if outage == "503" else {"hang": True})) as receiver:
        with open_tracer(make_settings(receiver), flush_timeout_s=bound_s) as tracer:
            with tracer.run("eval", input={"n": 2}, metadata={}) as run:
                run.use_dataset("slm-swap/t/toolcall/test", ITEMS, metadata={"sha256": "a" * 64}, experiment="azure m")
                run.example(0, input="q", output="a", metadata={}, scores={"valid_call": True})
                run.score("accuracy", 1.0)
                result = "command finished"
            assert result == "command finished"
            started = time.monotonic()
            delivered = tracer.flush()
            flush_s = time.monotonic() - started
        assert delivered is False and run.experiment is None
        assert flush_s < bound_s + 0.5
        assert OTEL_TRACES_PATH in receiver.paths()  # it did try

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "traces were not delivered" in err and receiver.url in err
    assert "did not finish within 2s" in err or "not recorded" in err
    if outage == "503":
        assert "Service Unavailable" in err or "503" in err


def test_unreachable_host_is_reported_not_raised(capsys):
    with LangfuseReceiver() as receiver:
        url = receiver.url
    # The receiver is closed: nothing listens on its port any more.
    with open_tracer(make_settings(url), flush_timeout_s=2) as tracer:
        with tracer.run("eval", input={}, metadata={}) as run:
            run.score("accuracy", 1.0)
        started = time.monotonic()
        assert tracer.flush() is False
        assert time.monotonic() - started < 2.5
    assert "traces were not delivered" in capsys.readouterr().err


def test_no_secret_on_the_wire():
    with LangfuseReceiver() as receiver:
        settings = make_settings(receiver)
        basic_auth = base64.b64encode(f"{settings.langfuse_public_key}:{SECRET_KEY}".encode()).decode()
        items = [{"input": [{"role": "user", "content": f"call with {AZURE_KEY}"}], "expected_output": f"<{SECRET_KEY}>"}]
        with open_tracer(settings, flush_timeout_s=5) as tracer:
            with tracer.run("eval", input={"endpoint": "https://x.openai.azure.com", "note": f"uses {AZURE_KEY}"},
                            metadata={"azure_api_key": AZURE_KEY, "nested": {"Api_Token": SECRET_KEY}}) as run:
                run.use_dataset("slm-swap/secrets/toolcall/test", items, metadata={"sha256": "c" * 64,
                                "path": f"/data/{AZURE_KEY}"}, experiment=f"azure {AZURE_KEY}")
                run.example(0, input={"langfuse_secret": SECRET_KEY}, output=f"echo {SECRET_KEY}",
                            metadata={"password": "hunter2-hunter2"}, scores={"valid_call": True},
                            generation={"model": f"m-{AZURE_KEY}", "prompt_tokens": 3, "completion_tokens": 1})
                run.event("decision", metadata={"hosted_api_key": AZURE_KEY})
                run.update(output={"log": f"failed with {AZURE_KEY}"})
            with pytest.raises(RuntimeError):
                with tracer.run("compare", input={}, metadata={}):
                    raise RuntimeError(f"auth failed for {SECRET_KEY}")
            assert tracer.flush() is True
        assert run.experiment is not None

    assert {DATASETS_PATH, DATASET_ITEMS_PATH, SCORES_PATH, OTEL_TRACES_PATH} <= set(receiver.paths())
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
    (item,) = receiver.items.values()
    assert item["input"] == [{"role": "user", "content": f"call with {REDACTED}"}] and item["expectedOutput"] == f"<{REDACTED}>"
    assert by_name(receiver)["compare"]["attributes"]["langfuse.observation.status_message"] == f"RuntimeError: auth failed for {REDACTED}"


def test_one_sdk_client_per_public_key_and_process():
    """The SDK keeps one client per public key and process: tracers with the same settings share
    it; the same public key towards another host is refused (it would silently go to the first);
    other keys get clients of their own."""
    with LangfuseReceiver() as first, LangfuseReceiver() as second:
        trace_ids = {}
        for receiver in (first, first, second):
            with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
                with tracer.run("eval", input={}, metadata={}) as run:
                    run.score("accuracy", 1.0)
                assert tracer.flush() is True
                trace_ids.setdefault(receiver.port, set()).add(run.trace_id)
        with pytest.raises(SlmSwapError, match="one client per public key") as raised:
            open_tracer(make_settings(second, langfuse_public_key=first.public_key))
        assert "\n" not in str(raised.value) and first.url in str(raised.value)

    for receiver in (first, second):
        assert receiver.trace_ids() == trace_ids[receiver.port]
        assert {score["traceId"] for score in receiver.scores} == trace_ids[receiver.port]
    assert len(trace_ids[first.port]) == 2 and len(trace_ids[second.port]) == 1


def test_a_run_inside_a_run_is_a_trace_of_its_own():
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
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


def test_mask_scrubs_and_caps():
    class Credentials(BaseModel):
        user: str
        secret: SecretStr

    mask = Mask()
    mask.secrets = tuple(make_settings("http://127.0.0.1:9").secret_values())
    scrubbed = mask(data={
        "AZURE_API_KEY": "x", "max_tokens": 5, "Password": "p", "fine": ["ok", SecretStr("s")],
        "creds": Credentials(user="u", secret=SecretStr("hidden")), "text": f"a {SECRET_KEY} b",
    })
    assert scrubbed == {
        "AZURE_API_KEY": REDACTED, "max_tokens": REDACTED, "Password": REDACTED, "fine": ["ok", REDACTED],
        "creds": {"user": "u", "secret": REDACTED}, "text": f"a {REDACTED} b",
    }
    assert mask(data={"small": 1}) == {"small": 1}
    capped = mask(data={"big": "z" * 10_000, "small": 1})  # a big mapping keeps its keys, each entry capped
    assert capped["small"] == 1 and capped["big"].endswith("[truncated: 10000 bytes, first 4096 kept]")
    assert mask(data="é" * 5000).endswith("first 4096 kept]")
    assert mask(data=[f"{AZURE_KEY}"] * 2000).startswith(f'["{REDACTED}"')  # a big list: one capped string


def test_a_bad_score_is_reported_at_flush_not_raised(capsys):
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
            with tracer.run("eval", input={}, metadata={}) as run:
                run.score("accuracy", float("nan"))
                run.score("valid", True)
            assert tracer.flush() is False
    assert [(score["name"], score["value"]) for score in receiver.scores] == [("valid", 1.0)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'accuracy' is not a finite number" in err


def test_tracing_uses_only_the_public_sdk():
    """No private SDK name, client attribute, copied exporter header or unregistered exit hook."""
    source = "\n".join(path.read_text() for path in (Path(__file__).parents[1] / "slm_swap").rglob("*.py"))
    for private in (r"langfuse\._", r"\._resources", r"\._otel", r"atexit\.unregister", r"x-langfuse-"):
        assert not re.search(private, source), private
    assert not re.search(r"^\s*(from|import) langfuse\.(?!api\b|types\b)", source, re.M)


def test_only_the_tracing_package_imports_langfuse():
    library = Path(__file__).parents[1] / "slm_swap"
    importers = {path.relative_to(library).parts[:2] for path in library.rglob("*.py")
                 if re.search(r"^\s*(from|import) langfuse\b", path.read_text(), re.M)}
    assert importers == {("infra", "tracing")}


# -- evals as dataset experiments ------------------------------------------------------------------

ITEMS = [{"input": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"q{i}"}],
          "expected_output": f"gold {i}"} for i in range(5)]


def eval_run(tracer, *, items=ITEMS, sha256="d" * 64, name="slm-swap/xlam/toolcall/test", experiment="azure gpt-4o",
             outputs=("gold 0", "nope", "gold 2"), rate=None):
    """An eval of the first len(outputs) items, as slm_swap.app.runs does it."""
    with tracer.run("eval", input={}, metadata={"prefect_flow_run_id": "flow-9"}) as run:
        run.use_dataset(name, items, metadata={"sha256": sha256, "rows": len(items)}, experiment=experiment)
        for index, output in enumerate(outputs):
            ok = output == items[index]["expected_output"]
            run.example(index, input=items[index]["input"][-1]["content"], output=output, metadata={"latency_s": 0.25},
                        scores={"valid_call": True, "args_exact": ok},
                        generation={"model": "gpt-4o", "prompt_tokens": 40 + index, "completion_tokens": 7,
                                    "latency_s": 0.25})
        passed = sum(o == items[i]["expected_output"] for i, o in enumerate(outputs))
        run.score("args_exact_rate", rate if rate is not None else passed / len(outputs))
    return run


def test_an_eval_is_a_dataset_run_of_its_split():
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
            hosted = eval_run(tracer)
            slm = eval_run(tracer, experiment="slm SmolLM2", outputs=("nope", "gold 1", "gold 2", "x"))
            assert tracer.flush() is True

    # One dataset, one item per row (all five, though the evals asked about 3 and 4), made once.
    assert list(receiver.datasets) == ["slm-swap/xlam/toolcall/test"]
    dataset = receiver.datasets["slm-swap/xlam/toolcall/test"]
    assert dataset["metadata"] == {"sha256": "d" * 64, "rows": 5}
    items = receiver.dataset_items("slm-swap/xlam/toolcall/test")
    assert [(i["input"], i["expectedOutput"], i["metadata"]) for i in items] == [
        (item["input"], item["expected_output"], {"index": n}) for n, item in enumerate(ITEMS)]
    assert len(receiver.posts(DATASET_ITEMS_PATH)) == 5 and len(receiver.posts(DATASETS_PATH)) == 1

    for run, outputs in ((hosted, ("gold 0", "nope", "gold 2")), (slm, ("nope", "gold 1", "gold 2", "x"))):
        experiment = run.experiment
        assert experiment["dataset"] == "slm-swap/xlam/toolcall/test"
        assert experiment["url"] == f"{receiver.url}/project/receiver-project/experiments/results?baseline={experiment['id']}"
        # One trace per example, linked to its item and to this dataset run.
        roots = [s for s in receiver.spans if s["name"] == "experiment-item-run"
                 and s["attributes"].get("langfuse.experiment.id") == experiment["id"]]
        assert len(roots) == len(outputs) and len({s["trace_id"] for s in roots}) == len(outputs)
        by_item = {s["attributes"]["langfuse.experiment.item.id"]: s for s in roots}
        assert set(by_item) == {items[n]["id"] for n in range(len(outputs))}
        for n, output in enumerate(outputs):
            root = by_item[items[n]["id"]]
            attributes = root["attributes"]
            assert attributes["langfuse.experiment.dataset.id"] == dataset["id"]
            assert attributes["langfuse.experiment.name"] == experiment["run"]
            assert json.loads(attributes["langfuse.experiment.metadata"])["langfuse_trace_id"] == run.trace_id
            assert root["attributes"]["langfuse.observation.output"] == output  # a string is sent as is
            # The generation: model, token usage, and the measured latency as its duration.
            (generation,) = [s for s in receiver.spans if s["trace_id"] == root["trace_id"] and s["name"] == "generation"]
            assert generation["attributes"]["langfuse.observation.type"] == "generation"
            assert generation["attributes"]["langfuse.observation.model.name"] == "gpt-4o"
            assert decoded(generation, "langfuse.observation.usage_details") == {"input": 40 + n, "output": 7}
            assert (generation["end_ns"] - generation["start_ns"]) / 1e9 == pytest.approx(0.25, abs=0.01)
            # Every metric a score on the example's trace.
            scores = {s["name"]: s["value"] for s in receiver.scores if s.get("traceId") == root["trace_id"]}
            assert scores == {"valid_call": 1.0, "args_exact": float(output == ITEMS[n]["expected_output"])}
        # The rates as run-level scores, and on the command's trace.
        run_scores = [(s["name"], s["value"]) for s in receiver.scores if s.get("datasetRunId") == experiment["id"]]
        passed = sum(o == ITEMS[n]["expected_output"] for n, o in enumerate(outputs))
        assert run_scores == [("args_exact_rate", pytest.approx(passed / len(outputs)))]
        assert [s["name"] for s in receiver.scores if s.get("traceId") == run.trace_id] == ["args_exact_rate"]
    assert hosted.experiment["id"] != slm.experiment["id"]
    # The command traces carry no per-example children: the examples are the experiment's traces.
    assert {s["name"] for s in receiver.spans if s["trace_id"] in (hosted.trace_id, slm.trace_id)} == {"eval"}

    url = comparison_url([hosted.experiment, None, slm.experiment])
    assert url == (f"{receiver.url}/project/receiver-project/experiments/results"
                   f"?baseline={hosted.experiment['id']}&c={slm.experiment['id']}")
    assert comparison_url([None, {"id": None}]) is None


def test_a_rerun_adds_no_items_and_changed_data_gets_a_new_dataset_version():
    changed = [dict(item) for item in ITEMS]
    changed[1] = {**changed[1], "expected_output": "gold 1, corrected"}
    name = "slm-swap/xlam/toolcall/test"
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
            first = eval_run(tracer)
            assert tracer.flush() is True
            assert len(receiver.posts(DATASET_ITEMS_PATH)) == 5 and len(receiver.posts(DATASETS_PATH)) == 1
            in_process = eval_run(tracer)  # a pipeline's second eval of the split: the upload is shared
            assert tracer.flush() is True
        # Another process (a client of its own) finds the dataset complete and adds nothing.
        requests_before = len(receiver.requests)
        with open_tracer(make_settings(receiver, langfuse_public_key=f"pk-lf-{uuid.uuid4().hex[:12]}"),
                         flush_timeout_s=5) as tracer:
            rerun = eval_run(tracer)
            assert tracer.flush() is True
            dataset_calls = [(r["method"], r["path"]) for r in receiver.requests[requests_before:]
                             if "dataset" in r["path"]]
            assert dataset_calls and all(method == "GET" for method, _ in dataset_calls)
            assert len(receiver.posts(DATASET_ITEMS_PATH)) == 5 and len(receiver.posts(DATASETS_PATH)) == 1

            # The split changed under the same name: a new dataset version, the old one untouched.
            new = eval_run(tracer, items=changed, sha256="e" * 64)
            assert tracer.flush() is True
        runs = (first, in_process, rerun)
        assert {run.experiment["dataset"] for run in runs} == {name}
        assert len({run.experiment["id"] for run in runs}) == 3  # each eval a dataset run of its own
        assert new.experiment["dataset"] == f"{name}@{'e' * 12}"

    assert [i["expectedOutput"] for i in receiver.dataset_items(name)] == [i["expected_output"] for i in ITEMS]
    assert [i["expectedOutput"] for i in receiver.dataset_items(f"{name}@{'e' * 12}")] == [
        i["expected_output"] for i in changed]
    assert receiver.datasets[f"{name}@{'e' * 12}"]["metadata"]["sha256"] == "e" * 64
    assert len(receiver.posts(DATASET_ITEMS_PATH)) == 10 and len(receiver.posts(DATASETS_PATH)) == 2


def test_a_failed_eval_is_no_dataset_run():
    with LangfuseReceiver() as receiver:
        with open_tracer(make_settings(receiver), flush_timeout_s=5) as tracer:
            with pytest.raises(SlmSwapError):
                with tracer.run("eval", input={}, metadata={}) as run:
                    run.use_dataset("slm-swap/x/toolcall/test", ITEMS, metadata={"sha256": "f" * 64}, experiment="m")
                    run.example(0, input="q", output="a", metadata={}, scores={"valid_call": True})
                    raise SlmSwapError("error budget exceeded")
            assert tracer.flush() is True
    assert run.experiment is None
    assert not [s for s in receiver.spans if s["name"] == "experiment-item-run"]
