"""The gateway's confidence gate: a policy from `gateway calibrate` lets a valid SLM answer through only
when its weakest token's log-probability reaches the threshold; otherwise the hosted model answers
(`low_confidence`). The SLM engine here returns OpenAI `logprobs` of a chosen confidence."""

from __future__ import annotations

import json
from fractions import Fraction
from http.server import BaseHTTPRequestHandler

import openai
import pytest
from loopback_server import LoopbackServer
from openai_stub import OpenAIStub
from test_gateway import FIXTURE, HOSTED_KEY, HOSTED_TEXT, Gateway, ask_tools, read_records

from slm_swap.app.cli import main
from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app
from slm_swap.app.gateway_command import load_policies
from slm_swap.core.tracks import get_track
from slm_swap.data.xlam import load_xlam
from slm_swap.evaluation.calibrate import ThresholdChoice, policy_document
from slm_swap.infra.config import scrub_secrets
from slm_swap.infra.errors import SlmSwapError

pytestmark = pytest.mark.usefixtures("loopback_only")


class ConfidentEngine(LoopbackServer):
    """An OpenAI-compatible SLM engine that always answers `text`, its weakest token at `weakest`."""

    def __init__(self, text: str, weakest: float):
        self.text, self.weakest = text, weakest
        super().__init__()

    def _handler(self):
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                logprobs = None
                if body.get("logprobs"):
                    half = len(engine.text) // 2
                    logprobs = {"content": [{"token": part, "logprob": value, "bytes": list(part.encode()), "top_logprobs": []}
                                            for part, value in ((engine.text[:half], -0.01), (engine.text[half:], engine.weakest))]}
                answer = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": engine.text},
                                       "finish_reason": "stop", "logprobs": logprobs}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def write_policy(path, track: str, threshold: float | None):
    choice = ThresholdChoice(threshold, 0, 0, 1, 1, ())
    document = policy_document(track=track, split="val", model={"identity": "test-slm", "adapter": None}, dataset={},
                               choice=choice, target=Fraction(9, 10), target_source={"from": "--target"},
                               created_at="2026-12-06T00:00:00+00:00")
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize(("weakest", "threshold", "route", "reason"), [
    (-0.2, -0.5, "slm", None),                        # confident enough: served
    (-0.9, -0.5, "hosted-fallback", "low_confidence"),  # valid, but below the threshold
    (-0.2, None, "hosted", "policy_accepts_nothing"),  # calibration reached the target at no threshold: SLM not asked
])
def test_the_gate_serves_only_confident_valid_answers(tmp_path, weakest, threshold, route, reason):
    example = load_xlam(FIXTURE)[0][0]
    answer = get_track("toolcall").completion(example.name, example.arguments)
    policies = load_policies([write_policy(tmp_path / "policy.json", "toolcall", threshold)], ["structured", "toolcall"])
    with OpenAIStub(respond=lambda messages: HOSTED_TEXT) as hosted, ConfidentEngine(answer, weakest) as engine:
        records = tmp_path / "requests.jsonl"
        app = create_gateway_app(
            Upstream(openai.OpenAI(base_url=f"{hosted.url}/v1", api_key=HOSTED_KEY, max_retries=0), "hosted-deployment"),
            SlmEngine(openai.OpenAI(base_url=f"{engine.url}/v1", api_key="k", max_retries=0), {"structured": "s", "toolcall": "t"}),
            records, lambda text: scrub_secrets(text, [HOSTED_KEY]), policies=policies)
        gateway = Gateway(app)
        try:
            headers, _ = ask_tools(gateway, example)
        finally:
            gateway.close()
    [record] = read_records(records)
    assert headers["x-slm-swap-route"] == route == record["route"] and headers["x-slm-swap-request-id"] == record["id"]
    if threshold is None:
        assert headers["x-slm-swap-reason"].startswith(reason) and record["slm"] is None and len(hosted.requests) == 1
        return
    assert record["slm"]["confidence"] == weakest  # the weakest token's log-probability, recorded either way
    if reason:
        assert headers["x-slm-swap-reason"].startswith(reason) and record["verdict"] == "low_confidence"
        assert len(hosted.requests) == 1
    else:
        assert record["verdict"] == "valid" and hosted.requests == []


def test_policies_are_checked_before_the_gateway_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOSTED_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HOSTED_MODEL", "m")
    monkeypatch.setenv("HOSTED_API_KEY", HOSTED_KEY)
    structured = write_policy(tmp_path / "a.json", "structured", -1.0)
    with pytest.raises(SlmSwapError, match="second policy"):
        load_policies([structured, write_policy(tmp_path / "b.json", "structured", -2.0)], ["structured", "toolcall"])
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    assert main(["gateway", "--port", "0", "--policy", str(broken)]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slm-swap: error")]
    assert str(broken) in line


def test_no_policy_and_a_policy_contradict(capsys):
    assert main(["gateway", "--port", "0", "--no-policy", "--policy", "p.json"]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slm-swap: error")]
    assert "--no-policy and --policy" in line
