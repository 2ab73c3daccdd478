"""The SLM on an engine by URL (SLM_BASE_URL), with a real `slm-swap serve` process as the engine:
`eval --model-kind slm` asks it over HTTP through the openai SDK, the adapter chosen by model name
(loaded there through vLLM's `POST /v1/load_lora_adapter` when given as a folder), and answers
exactly as the SLM evaluated in process (fp32, greedy). The pipeline's re-eval step takes the same path."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.llm.engine import served_name
from test_agent_eval import bfcl_rows, built  # noqa: F401  (fixtures)
from test_local_serve import start_server

KEY = "engine-key-51c0e2"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """`slm-swap serve` with runtime adapter loading on, its key from the environment."""
    env = {**os.environ, "SLM_SWAP_SERVE_API_KEY": KEY}
    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny",
                                 "--allow-adapter-loading"], KEY, env)
    yield f"{url}/v1"
    process.terminate()
    output, _ = process.communicate(timeout=30)
    assert "Traceback" not in output and KEY not in output, output


def outputs(path) -> list[str]:
    return [json.loads(line)["output"] for line in path.with_name(path.stem + ".records.jsonl").read_text().splitlines()]


def run_eval(tmp_path, name: str, data_dir, *extra: str) -> tuple[int, dict]:
    out = tmp_path / f"{name}.json"
    code = main(["eval", "--track", "toolcall", "--model-kind", "slm", "--data-dir", str(data_dir), "--limit", "4",
                 "--out", str(out), *extra])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_eval_by_url_answers_as_the_slm_in_process(engine, tmp_path, monkeypatch, xlam_data_dir, tiny_model_dir,
                                                   tiny_adapter_dir, capsys):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.delenv("SLM_BASE_URL", raising=False)
    assert run_eval(tmp_path, "in-process", xlam_data_dir, "--adapter", str(tiny_adapter_dir))[0] == 0
    assert run_eval(tmp_path, "in-process-base", xlam_data_dir)[0] == 0

    monkeypatch.setenv("SLM_BASE_URL", engine)
    monkeypatch.setenv("SLM_API_KEY", KEY)
    code, by_url = run_eval(tmp_path, "by-url", xlam_data_dir, "--adapter", str(tiny_adapter_dir))
    assert code == 0
    name = served_name(tiny_adapter_dir)
    assert re.fullmatch(r"adapter_toolcall-[0-9a-f]{12}", name)
    assert by_url["model"]["kind"] == "slm" and by_url["model"]["identity"] == f"engine:{name}@{engine.split('/')[2]}"
    assert by_url["model"]["adapter"] == str(tiny_adapter_dir)
    assert outputs(tmp_path / "by-url.json") == outputs(tmp_path / "in-process.json")  # the same answers, over HTTP
    models = httpx.get(f"{engine}/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert [m["id"] for m in models] == ["tiny", name]

    # Again: the engine already serves it under that name; no second load. The base model by default.
    assert run_eval(tmp_path, "by-url-again", xlam_data_dir, "--adapter", str(tiny_adapter_dir))[0] == 0
    code, base = run_eval(tmp_path, "by-url-base", xlam_data_dir)
    assert code == 0 and base["model"]["identity"].startswith("engine:tiny@")
    assert outputs(tmp_path / "by-url-base.json") == outputs(tmp_path / "in-process-base.json")
    code, by_name = run_eval(tmp_path, "by-name", xlam_data_dir, "--slm-model", name)
    assert code == 0 and outputs(tmp_path / "by-name.json") == outputs(tmp_path / "in-process.json")
    assert KEY not in capsys.readouterr().err


def test_what_the_engine_cannot_do_is_one_line_saying_how(engine, tmp_path, monkeypatch, xlam_data_dir, tiny_model_dir,
                                                          tiny_adapter_dir, capsys):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("SLM_BASE_URL", engine)
    monkeypatch.setenv("SLM_API_KEY", KEY)
    cases = [
        (("--slm-model", "nope"), "--slm-model 'nope': not served by the engine at"),
        (("--slm-model", "tiny", "--adapter", str(tiny_adapter_dir)), "give one"),
        (("--load-in-4bit",), "the engine there decides how it loads the model"),
    ]
    for extra, why in cases:
        assert run_eval(tmp_path, "refused", xlam_data_dir, *extra)[0] == 2, why
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and why in err[0], (why, err)
    monkeypatch.setenv("SLM_API_KEY", "wrong-key")
    assert run_eval(tmp_path, "refused", xlam_data_dir)[0] == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"SLM_BASE_URL {engine}" in err[0] and "wrong-key" not in err[0]


def test_an_engine_that_does_not_load_adapters_says_how_to_serve_one(tmp_path, monkeypatch, xlam_data_dir,
                                                                     tiny_model_dir, tiny_adapter_dir, capsys):
    env = {**os.environ, "SLM_SWAP_SERVE_API_KEY": KEY}
    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny"], KEY, env)
    try:
        monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
        monkeypatch.setenv("SLM_BASE_URL", f"{url}/v1")
        monkeypatch.setenv("SLM_API_KEY", KEY)
        assert run_eval(tmp_path, "refused", xlam_data_dir, "--adapter", str(tiny_adapter_dir))[0] == 2
    finally:
        process.terminate()
        process.communicate(timeout=30)
    (line,) = error_lines(capsys.readouterr().err)
    assert "does not load adapters at runtime" in line and "--lora-modules NAME=" in line
    assert "--allow-adapter-loading" in line and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in line
    assert not (tmp_path / "refused.json").exists()


def test_the_pipelines_re_eval_step_evaluates_the_new_adapter_on_the_engine(engine, tmp_path, monkeypatch,
                                                                            xlam_data_dir, tiny_model_dir,
                                                                            tiny_adapter_dir):
    """What the pipeline runs after a fine-tune (`run_eval_step` with the adapter): by URL, the engine
    loads the new adapter and the metrics name the engine and the adapter."""
    from slm_swap.app.flow_configs import PipelineConfig
    from slm_swap.app.pipeline import run_eval_step
    from slm_swap.infra.config import load_settings

    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("SLM_BASE_URL", engine)
    monkeypatch.setenv("SLM_API_KEY", KEY)
    config = PipelineConfig(tracks=["toolcall"], data_dir=xlam_data_dir, eval_dir=tmp_path / "eval", limit=4,
                            reuse_max_age_hours=0)
    outcome = run_eval_step(load_settings(), config, track="toolcall", kind="slm", adapter=tiny_adapter_dir,
                            progress="off")
    model = outcome.metrics["model"]
    assert model["identity"] == f"engine:{served_name(tiny_adapter_dir)}@{engine.split('/')[2]}"
    assert model["adapter"] == str(tiny_adapter_dir) and outcome.metrics["n"] == 4


def test_the_agent_eval_runs_the_student_on_the_engine(engine, built, tmp_path, monkeypatch, tiny_model_dir):
    """The distill flow's agent eval (`eval --track agent`): the student's every turn goes to the engine
    through smolagents' OpenAIModel with the same openai client."""
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("SLM_BASE_URL", engine)
    monkeypatch.setenv("SLM_API_KEY", KEY)
    out = tmp_path / "agent.json"
    assert main(["eval", "--track", "agent", "--model-kind", "slm", "--data-dir", str(built), "--out", str(out),
                 "--limit", "2"]) == 0
    document = json.loads(out.read_text())
    assert document["n"] == 2 and document["model"]["identity"].startswith("engine:tiny@")
    records = [json.loads(line) for line in out.with_name("agent.records.jsonl").read_text().splitlines()]
    # Every turn was answered (the random tiny model writes no working code, but no request failed).
    assert all(record["turns"] >= 1 and record["error"] is None and record["steps"][0]["thought"] for record in records)
