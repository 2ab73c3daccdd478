"""One Langfuse trace per gateway request, through the real Langfuse SDK to a local receiver: the
record names its trace; the trace holds a generation per model call with its usage, the route and
acceptance scores, and the track and mode tags; the hosted key is nowhere on the wire."""

from __future__ import annotations

import json

import pytest
from langfuse_receiver import LangfuseReceiver
from openai_stub import OpenAIStub
from test_gateway import FIXTURE, HOSTED_KEY, Gateway, ask_tools, read_records

import openai
from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app
from slm_swap.data.xlam import load_xlam
from slm_swap.infra.config import load_settings, scrub_secrets
from slm_swap.infra.tracing import LangfuseTracer
from slm_swap.trajectories.teacher import ScriptedTeacher

pytestmark = pytest.mark.usefixtures("loopback_only")
LANGFUSE_SECRET = "sk-lf-gateway-SECRET-5c1f"


def test_each_request_is_one_trace_with_its_model_calls_and_scores(tmp_path, monkeypatch):
    examples = load_xlam(FIXTURE)[0][:2]
    behaviours = {examples[0].id: "correct", examples[1].id: "broken"}
    with LangfuseReceiver() as receiver, OpenAIStub(respond=lambda messages: "the hosted answer") as hosted, \
            ScriptedTeacher(examples, behaviours) as teacher:
        monkeypatch.delenv("LANGFUSE_DISABLED", raising=False)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", receiver.public_key)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", LANGFUSE_SECRET)
        monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        tracer = LangfuseTracer(load_settings())
        records = tmp_path / "requests.jsonl"
        app = create_gateway_app(
            Upstream(openai.OpenAI(base_url=f"{hosted.url}/v1", api_key=HOSTED_KEY, max_retries=0), "hosted-deployment"),
            SlmEngine(openai.OpenAI(base_url=teacher.url, api_key="engine-key", max_retries=0),
                      {"structured": "structured", "toolcall": "toolcall"}),
            records, lambda text: scrub_secrets(text, [HOSTED_KEY]), modes={"toolcall": "route"}, tracer=tracer)
        gateway = Gateway(app)
        try:
            ask_tools(gateway, examples[0])  # served by the SLM
            ask_tools(gateway, examples[1])  # invalid: the hosted model answers
        finally:
            gateway.close()
        assert tracer.flush()
        served, fallback = read_records(records)
        assert served["trace_id"] and fallback["trace_id"] and served["trace_id"] != fallback["trace_id"]
        assert receiver.wait_until(lambda r: {served["trace_id"], fallback["trace_id"]} <= r.trace_ids())
        spans = {trace: [s for s in receiver.spans if s["trace_id"] == trace] for trace in (served["trace_id"], fallback["trace_id"])}
        scores = {(s["traceId"], s["name"]): s["value"] for s in receiver.scores}
        wire = json.dumps([r["body"].decode("latin-1") if isinstance(r["body"], bytes) else r["body"] for r in receiver.requests])

    for record, generations in ((served, ["slm-model"]), (fallback, ["slm-model", "hosted-model"])):
        trace_spans = spans[record["trace_id"]]
        root = next(s for s in trace_spans if s["parent_span_id"] is None)
        assert root["attributes"]["langfuse.trace.name"] == "gateway-request"
        tags = root["attributes"]["langfuse.trace.tags"]
        assert "track:toolcall" in tags and "mode:route" in tags
        found = [s for s in trace_spans if s["attributes"].get("langfuse.observation.type") == "generation"]
        assert sorted(s["name"] for s in found) == sorted(generations)
        for span in found:  # usage as recorded
            side = span["name"].removesuffix("-model")
            usage = json.loads(span["attributes"]["langfuse.observation.usage_details"])
            assert usage == {"input": record[side]["usage"]["prompt_tokens"], "output": record[side]["usage"]["completion_tokens"]}
    assert scores[(served["trace_id"], "route_slm")] == 1 and scores[(served["trace_id"], "slm_accepted")] == 1
    assert scores[(fallback["trace_id"], "route_slm")] == 0 and scores[(fallback["trace_id"], "slm_accepted")] == 0
    assert HOSTED_KEY not in wire and LANGFUSE_SECRET not in wire
