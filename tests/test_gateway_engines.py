"""`slm-swap gateway` as a user runs it: the command in its own process, in front of a real
`slm-swap serve` (a tiny random model with a `toolcall` adapter) as the SLM engine by URL, and a
stub hosted model. The tiny model cannot write a valid call, so every swappable request must come
back from the hosted model as `hosted-fallback`, with the engine's answer and the reason recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import httpx
import openai
import pytest

from openai_stub import OpenAIStub
from slm_swap.data.xlam import load_xlam
from slm_swap.evaluation.calibrate import Point, pick_threshold, policy_document
from slm_swap.infra.fileio import write_json
from test_local_serve import KEY, free_port, start_server

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("loopback_only")]

FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"
HOSTED_KEY = "sk-hosted-engines-0123456789"


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_adapter_dir):
    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny",
                                 "--adapter", f"toolcall={tiny_adapter_dir}", "--api-key", KEY,
                                 "--max-new-tokens", "32"], KEY)
    yield url
    process.terminate()
    output, _ = process.communicate(timeout=30)
    assert "Traceback" not in output, output


def run_gateway_command(tmp_path: Path, env_extra: dict[str, str], args: list[str]):
    """`slm-swap gateway` in its own process over a stub hosted model: one swappable request and one not.
    Returns (both raw responses, the hosted stub's requests, the records, the command's output)."""
    example = load_xlam(FIXTURE)[0][0]
    records = tmp_path / "requests.jsonl"
    port = free_port()
    with OpenAIStub(respond=lambda messages: "the hosted answer") as hosted:
        env = {**os.environ, "LANGFUSE_DISABLED": "1", "HOSTED_BASE_URL": f"{hosted.url}/v1", "HOSTED_MODEL": "hosted-model",
               "HOSTED_API_KEY": HOSTED_KEY, **env_extra}
        for key in ("AZURE_ENDPOINT", "SLM_BASE_URL"):
            if key not in env_extra:
                env.pop(key, None)
        gateway = subprocess.Popen([sys.executable, "-m", "slm_swap.app.cli", "gateway", "--port", str(port),
                                    "--records", str(records), *([] if "--policy" in args else ["--no-policy"]),
                                    "--registry", str(tmp_path / "registry.json"), *args], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{url}/models").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert gateway.poll() is None and time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.2)
            client = openai.OpenAI(base_url=url, api_key="client-key", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": example.request}], max_tokens=16,
                tools=[{"type": "function", "function": function} for function in example.functions])
            plain = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hello"}])
        finally:
            gateway.terminate()
            output, _ = gateway.communicate(timeout=30)
    assert "Traceback" not in output and HOSTED_KEY not in output, output
    assert raw.headers["x-slm-swap-route"] == "hosted-fallback"
    assert raw.headers["x-slm-swap-reason"].startswith("invalid_answer")
    assert raw.parse().choices[0].message.content == "the hosted answer"
    assert plain.headers["x-slm-swap-route"] == "hosted" and plain.headers["x-slm-swap-reason"] == "no_tools"
    # The hosted model got the original request, tools and all, under its own model name.
    assert [r["body"]["model"] for r in hosted.requests] == ["hosted-model", "hosted-model"]
    assert hosted.requests[0]["body"]["tools"][0]["function"]["name"] == example.name
    assert HOSTED_KEY not in records.read_text()
    return [json.loads(line) for line in records.read_text().splitlines()], output


def test_the_gateway_command_in_front_of_slm_swap_serve(engine, tmp_path):
    (first, second), _ = run_gateway_command(tmp_path, {"SLM_BASE_URL": f"{engine}/v1", "SLM_API_KEY": KEY}, [])
    assert (first["route"], first["slm"]["model"]) == ("hosted-fallback", "toolcall")  # the adapter by name
    assert isinstance(first["slm"]["output"], str) and first["slm"]["output"]  # the engine really answered
    assert (second["route"], second["slm"]) == ("hosted", None)  # not swappable: the SLM was not asked


def test_the_gateway_command_loads_the_slm_in_process(tiny_model_dir, tiny_adapter_dir, tmp_path):
    """No SLM_BASE_URL: the gateway loads the model itself, with the adapter of each track that has one
    in --adapters-dir (here toolcall only), as `serve` would."""
    adapters = tmp_path / "ft"
    adapters.mkdir()
    (adapters / "adapter_toolcall").symlink_to(tiny_adapter_dir, target_is_directory=True)
    (first, second), output = run_gateway_command(
        tmp_path, {}, ["--model-path", str(tiny_model_dir), "--adapters-dir", str(adapters)])
    assert "in process" in output and "structured=base" in output and "toolcall=toolcall" in output
    assert (first["route"], first["slm"]["model"]) == ("hosted-fallback", "toolcall")
    assert isinstance(first["slm"]["output"], str) and first["slm"]["output"]  # the in-process model answered
    assert (second["route"], second["slm"]) == ("hosted", None)


def test_a_policy_calibrated_on_another_precision_is_warned_about(tiny_model_dir, tmp_path):
    """The gateway's SLM in bf16 (`--precision`), its gate calibrated on the fp32 model: the threshold
    was chosen on other confidences, and the gateway says so when it starts."""
    policy = tmp_path / "policy_toolcall.json"
    choice = pick_threshold([Point(True, -0.5, True)] * 5, Fraction(1, 2))  # a threshold: the SLM is asked
    write_json(policy, policy_document(track="toolcall", split="val", model={"kind": "slm", "identity": str(tiny_model_dir),
                                                                              "adapter": None},
                                       dataset={}, choice=choice, target=Fraction(1, 2), target_source={"source": "--target"},
                                       created_at="2026-12-07T00:00:00+00:00"))
    _, output = run_gateway_command(
        tmp_path, {}, ["--model-path", str(tiny_model_dir), "--adapters-dir", str(tmp_path / "none"),
                       "--precision", "bf16", "--policy", str(policy)])
    assert f"{tiny_model_dir} (bf16) in process" in output
    warning = [line for line in output.splitlines() if line.startswith(f"warning: {policy} was calibrated on")]
    assert warning and f"the gateway's SLM is {tiny_model_dir} (bf16)" in warning[0]
