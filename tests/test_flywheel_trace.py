"""The flow `slm-swap-flywheel` traces its round as the pipeline traces its steps: one Langfuse trace
(a real stand-in on 127.0.0.1) with the round's counts and decision as its output, never a prompt, and
its id as a `langfuse:<id>` tag on the flow run. Rounds that end "nothing to do" keep these fast; the
deployment itself runs on a real server and worker in tests/test_deployment.py."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

# Prefect keeps its home (profiles, local result storage) here, never in the developer's ~/.prefect.
if "PREFECT_HOME" not in os.environ:
    import atexit

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="slm-swap-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import pytest  # noqa: E402

from langfuse_receiver import LangfuseReceiver  # noqa: E402
from prefect_api import prefect_api  # noqa: E402,F401  (a fixture)
from test_traffic import append, record  # noqa: E402
from slm_swap.app.requests import FlywheelRequest  # noqa: E402
from slm_swap.data.traffic import watermark_path  # noqa: E402
from slm_swap.infra.errors import SlmSwapError  # noqa: E402

CITIES = ("Oslo", "Lima", "Rome")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def prefect_console_on_open_stderr(prefect_api):
    """Prefect's console log handler keeps the stderr it saw when logging was last set up; an earlier
    module's test may have done that under `capsys`, whose stream is closed by now (then every flow log
    line fails). Set it up again here, on the session's stderr."""
    from prefect.logging.configuration import setup_logging

    setup_logging(incremental=False)


@pytest.fixture
def round_request(tmp_path, xlam_data_dir, tiny_model_dir, monkeypatch) -> FlywheelRequest:
    """Three fallbacks in the gateway's records, but a round that needs more: "nothing to do"."""
    records = tmp_path / "gateway" / "requests.jsonl"
    records.parent.mkdir()
    append(records, *(record(f"What is the weather in {city}?", rid=f"req-{city}") for city in CITIES))
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_API_KEY", "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOSTED_BASE_URL", "http://127.0.0.1:9/v1")  # checked, never asked: no round gets that far
    monkeypatch.setenv("HOSTED_MODEL", "hosted-stub")
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    return FlywheelRequest(track="toolcall", records=records, registry=tmp_path / "gateway" / "registry.json",
                           data_dir=xlam_data_dir, flywheel_dir=tmp_path / "rounds", min_new_rows=50)


def test_the_round_is_one_trace_tagged_on_its_flow_run(prefect_api, round_request, monkeypatch):
    from prefect.client.orchestration import get_client

    from flows.flywheel import slm_swap_flywheel
    from flows.runtime import run_in_process

    with LangfuseReceiver() as receiver:
        monkeypatch.delenv("LANGFUSE_DISABLED", raising=False)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", receiver.public_key)  # one SDK client per key and process
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-flywheel-SECRET-0b7d")
        monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        run_id, line = run_in_process(slm_swap_flywheel, round_request)
        assert receiver.wait_until(lambda r: any(s["name"] == "flywheel toolcall" for s in r.spans), timeout_s=15)
        requests = list(receiver.requests)
        (root,) = [s for s in receiver.spans if s["name"] == "flywheel toolcall" and s["parent_span_id"] is None]

    assert line == "flywheel toolcall round 1: nothing to do: 3 new toolcall rows (at least 50 needed)"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert run.state.is_completed()
    assert f"langfuse:{root['trace_id']}" in run.tags
    attributes = root["attributes"]
    output = json.loads(attributes["langfuse.observation.output"])
    assert output["status"] == "nothing to do" and output["decision"] is None and output["round"] == 1
    assert output["counts"]["new_rows"] == 3 and output["counts"]["sources"]["fallback"]["rows"] == 3
    assert json.loads(attributes["langfuse.observation.input"])["min_new_rows"] == 50
    assert json.loads(attributes["langfuse.observation.metadata.prefect_flow_run_id"]) == run_id
    # The traffic's text never reaches Langfuse: counts only.
    assert not [r["path"] for r in requests if any(city.encode() in r["body"] for city in CITIES)]
    # "Nothing to do" leaves no round folder and the watermark where it was.
    assert not (round_request.flywheel_dir / "toolcall" / "round-1").exists()
    assert not watermark_path(round_request.records, "toolcall").exists()


def test_the_command_traces_its_round_too(round_request, monkeypatch, capsys):
    from slm_swap.app.cli import main

    with LangfuseReceiver() as receiver:
        monkeypatch.delenv("LANGFUSE_DISABLED", raising=False)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", receiver.public_key)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-flywheel-SECRET-0b7d")
        monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        assert main(["flywheel", "--track", "toolcall", "--records", str(round_request.records), "--registry",
                     str(round_request.registry), "--data-dir", str(round_request.data_dir), "--flywheel-dir",
                     str(round_request.flywheel_dir), "--min-new-rows", "50"]) == 0
        assert receiver.wait_until(lambda r: any(s["name"] == "flywheel toolcall" for s in r.spans), timeout_s=15)
        (root,) = [s for s in receiver.spans if s["name"] == "flywheel toolcall" and s["parent_span_id"] is None]
    output = json.loads(root["attributes"]["langfuse.observation.output"])
    assert output["status"] == "nothing to do" and output["counts"]["new_rows"] == 3
    captured = capsys.readouterr()
    assert "flywheel toolcall round 1: nothing to do" in captured.out
    assert f"langfuse trace (flywheel): {root['trace_id']}" in captured.err


def test_a_round_without_langfuse_settings_is_refused_in_one_line(prefect_api, round_request, monkeypatch):
    from flows.flywheel import slm_swap_flywheel
    from flows.runtime import run_in_process

    for key in ("LANGFUSE_DISABLED", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SlmSwapError, match="LANGFUSE") as refused:
        run_in_process(slm_swap_flywheel, round_request)
    assert "\n" not in str(refused.value)
    assert not (round_request.flywheel_dir / "toolcall").exists()  # refused before any round folder
