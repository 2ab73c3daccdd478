"""The hosted client over real HTTP (the real openai SDK against a stub server on 127.0.0.1),
and `slm-swap eval` around it: URL shapes, retries, error budget, resume, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openai_stub import OpenAIStub
from slm_swap.app.cli import main
from slm_swap.data.examples import load_rows
from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.hosted import split_azure_endpoint

SECRET = "sk-test-SECRET-do-not-leak-4242"


def gold_responder(data_dir: Path, track: str, wrong_every: int | None = 3):
    """Answers the gold completion, except for every `wrong_every`-th row (by test-split order)."""
    rows = load_rows(data_dir / track / "test.jsonl")
    wrong = lambda i: wrong_every is not None and i % wrong_every == 0
    answers = {row["prompt"]: ("not a call" if wrong(i) else row["completion"]) for i, row in enumerate(rows)}
    return lambda messages: answers[messages[-1]["content"]]


@pytest.fixture
def azure_env(monkeypatch):
    def configure(stub: OpenAIStub, deployment="gpt-stub", in_endpoint=True):
        for key in ("HOSTED_BASE_URL", "HOSTED_MODEL", "HOSTED_API_KEY", "AZURE_DEPLOYMENT"):
            monkeypatch.delenv(key, raising=False)
        endpoint = f"{stub.url}/openai/deployments/{deployment}" if in_endpoint else stub.url
        monkeypatch.setenv("AZURE_ENDPOINT", endpoint)
        if not in_endpoint:
            monkeypatch.setenv("AZURE_DEPLOYMENT", deployment)
        monkeypatch.setenv("AZURE_API_KEY", SECRET)
        monkeypatch.setenv("AZURE_API_VERSION", "2024-02-15-preview")

    return configure


def eval_args(data_dir, out, track="toolcall", *extra):
    return ["eval", "--track", track, "--model-kind", "azure", "--split", "test", "--data-dir", str(data_dir),
            "--out", str(out), *extra]


@pytest.mark.parametrize("in_endpoint", [True, False])
def test_azure_url_shape_and_scores(xlam_data_dir, tmp_path, azure_env, in_endpoint):
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall")) as stub:
        azure_env(stub, in_endpoint=in_endpoint)
        out = tmp_path / "toolcall_azure_test.json"
        assert main(eval_args(xlam_data_dir, out)) == 0
    assert len(stub.requests) == 12
    request = stub.requests[0]
    assert request["path"] == "/openai/deployments/gpt-stub/chat/completions"
    assert request["query"]["api-version"] == ["2024-02-15-preview"]
    assert request["headers"]["api-key"] == SECRET
    assert request["body"]["temperature"] == 0
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 12 and metrics["errors"] == 0
    assert metrics["valid_call_rate"] == pytest.approx(8 / 12)  # rows 0, 3, 6, 9 answered wrongly
    assert metrics["args_exact_rate"] == pytest.approx(8 / 12)
    assert metrics["model"] == {"kind": "azure", "identity": f"azure:gpt-stub@127.0.0.1:{stub.port}", "adapter": None}
    records = [json.loads(line) for line in (tmp_path / "toolcall_azure_test.records.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(12))
    assert [r["valid_call"] for r in records] == [i % 3 != 0 for i in range(12)]


def test_openai_compatible_base_url(xlam_data_dir, tmp_path, monkeypatch):
    with OpenAIStub(gold_responder(xlam_data_dir, "structured", wrong_every=None)) as stub:
        monkeypatch.setenv("HOSTED_BASE_URL", f"{stub.url}/v1")
        monkeypatch.setenv("HOSTED_MODEL", "qwen-stub")
        monkeypatch.setenv("HOSTED_API_KEY", SECRET)
        out = tmp_path / "s.json"
        assert main(eval_args(xlam_data_dir, out, "structured")) == 0
    assert stub.requests[0]["path"] == "/v1/chat/completions"
    assert stub.requests[0]["body"]["model"] == "qwen-stub"
    assert stub.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    metrics = json.loads(out.read_text())
    assert metrics["exact_match_rate"] == 1.0 and metrics["json_valid_rate"] == 1.0


def test_429_with_retry_after_is_retried_then_succeeds(xlam_data_dir, tmp_path, azure_env):
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall"), failures=[429, 503], retry_after="1") as stub:
        azure_env(stub)
        out = tmp_path / "t.json"
        assert main(eval_args(xlam_data_dir, out, "toolcall", "--concurrency", "1", "--limit", "2")) == 0
    assert len(stub.requests) == 4  # 429, 503, then the two examples
    waits = [b["at"] - a["at"] for a, b in zip(stub.requests, stub.requests[1:])]
    assert waits[0] >= 0.95 and waits[1] >= 0.95  # Retry-After: 1 honoured both times
    assert json.loads(out.read_text())["errors"] == 0


def test_failed_examples_are_invalid_and_the_budget_stops_the_run(xlam_data_dir, tmp_path, azure_env, capsys):
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall", wrong_every=None), failures=[500, 500]) as stub:
        azure_env(stub)
        out = tmp_path / "t.json"
        # Two failures within a budget of 2: the run completes, those examples score as invalid.
        assert main(eval_args(xlam_data_dir, out, "toolcall", "--concurrency", "1", "--max-retries", "0", "--max-errors", "2")) == 0
    metrics = json.loads(out.read_text())
    assert metrics["errors"] == 2 and metrics["valid_call_rate"] == pytest.approx(10 / 12)
    capsys.readouterr()
    with OpenAIStub(failures=[500] * 50) as stub:
        azure_env(stub)
        out = tmp_path / "budget.json"
        assert main(eval_args(xlam_data_dir, out, "toolcall", "--concurrency", "1", "--max-retries", "0", "--max-errors", "1")) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("slm-swap: error: 2 requests failed (budget 1") and "--resume" in last
    assert "Traceback" not in err
    assert not out.exists()  # no metrics file for an unfinished run


def test_missing_settings_and_mismatched_deployment(xlam_data_dir, tmp_path, monkeypatch, capsys):
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    assert main(eval_args(xlam_data_dir, tmp_path / "x.json")) == 2
    assert "set AZURE_ENDPOINT, AZURE_API_KEY" in capsys.readouterr().err
    with pytest.raises(SlmSwapError, match="AZURE_DEPLOYMENT is 'b'"):
        split_azure_endpoint("https://x.openai.azure.com/openai/deployments/a", "b")
    assert split_azure_endpoint("https://x.openai.azure.com/openai/deployments/a/", None) == ("https://x.openai.azure.com", "a")


def test_secrets_never_reach_written_files(xlam_data_dir, tmp_path, azure_env):
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall"), failures=[401]) as stub:
        azure_env(stub)
        assert main(eval_args(xlam_data_dir, tmp_path / "t.json", "toolcall", "--max-retries", "0", "--max-errors", "5")) == 0
    written = list(tmp_path.iterdir())
    assert len(written) == 3  # metrics, records, run
    for path in written:
        assert SECRET not in path.read_text(), path


def test_a_server_that_echoes_the_key_cannot_put_it_anywhere(xlam_data_dir, tmp_path, azure_env, capsys):
    # The first failures quote the key (as some endpoints' 401s do); then the error budget is spent,
    # so the key would reach records, the run's stderr line and (in a flow) Prefect's database.
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall"), failures=[401] * 12, echo_key=True) as stub:
        azure_env(stub)
        assert main(eval_args(xlam_data_dir, tmp_path / "t.json", "toolcall", "--max-retries", "0", "--max-errors", "2")) == 2
    err = capsys.readouterr().err
    assert "Incorrect API key provided: [redacted]" in err and SECRET not in err
    records = (tmp_path / "t.records.jsonl").read_text()
    assert "Incorrect API key provided: [redacted]" in records
    for path in tmp_path.iterdir():
        assert SECRET not in path.read_text(), path


def test_a_failed_rerun_leaves_no_older_metrics_file_for_compare(xlam_data_dir, tmp_path, azure_env, capsys):
    out = tmp_path / "t.json"
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall")) as stub:
        azure_env(stub)
        assert main(eval_args(xlam_data_dir, out)) == 0
    assert out.exists()
    with OpenAIStub(failures=[500] * 50) as stub:
        azure_env(stub)
        assert main(eval_args(xlam_data_dir, out, "toolcall", "--max-retries", "0", "--max-errors", "0")) == 2
    assert not out.exists()  # the new records are partial: no metrics file may sit beside them
    assert main(["compare", "--track", "toolcall", "--azure", str(out), "--slm", str(out)]) == 2
    assert f"{out}: no such metrics file" in capsys.readouterr().err


def test_resume_removes_temporary_files_a_kill_left(xlam_data_dir, tmp_path, azure_env):
    out = tmp_path / "t.json"
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall")) as stub:
        azure_env(stub)
        assert main(eval_args(xlam_data_dir, out, "toolcall", "--limit", "4")) == 0
        stale = [tmp_path / ".t.json.k1ll3d.tmp", tmp_path / ".t.records.jsonl.x9.tmp"]
        for path in stale:
            path.write_text('{"half": ')
        assert main(eval_args(xlam_data_dir, out, "toolcall", "--limit", "4", "--resume")) == 0
    assert not any(path.exists() for path in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "t.records.jsonl", "t.run.json"]


def test_the_error_budget_does_not_wait_for_requests_in_flight(xlam_data_dir, tmp_path, azure_env, capsys):
    # Four at a time: three fail at once, the fourth hangs for 20 s. The budget (1) is spent by the
    # second failure; the command must end then, not when the hanging request gives up.
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall"), failures=[500] * 3, latency_s=20, fail_fast=True) as stub:
        azure_env(stub)
        started = time.monotonic()
        assert main(eval_args(xlam_data_dir, tmp_path / "t.json", "toolcall", "--concurrency", "4", "--max-retries", "0",
                              "--max-errors", "1", "--timeout", "30")) == 2
        elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert "requests failed (budget 1" in capsys.readouterr().err
    # Four at first; each worker whose request failed may start one more (which then hangs) before
    # the budget is seen as spent; none starts after that: at most 7 of the 12.
    assert len(stub.requests) <= 7


def test_the_hosted_client_is_closed_after_an_eval(xlam_data_dir, tmp_path, azure_env, monkeypatch):
    import slm_swap.app.runs

    built = []
    original = slm_swap.app.runs.build_client
    monkeypatch.setattr(slm_swap.app.runs, "build_client", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall")) as stub:
        azure_env(stub)
        assert main(eval_args(xlam_data_dir, tmp_path / "t.json", "toolcall", "--limit", "2")) == 0
    assert len(built) == 1 and built[0].client.is_closed()


def test_killed_eval_resumes_to_the_same_metrics(xlam_data_dir, tmp_path):
    """A real process killed part-way, then `--resume`: same records and metrics as one clean run."""
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall"), latency_s=0.25) as stub:
        env = {**os.environ, "AZURE_ENDPOINT": f"{stub.url}/openai/deployments/d", "AZURE_API_KEY": SECRET}
        env.pop("HOSTED_BASE_URL", None)
        command = [sys.executable, "-m", "slm_swap.app.cli", *eval_args(xlam_data_dir, tmp_path / "r.json", "toolcall", "--concurrency", "1")]
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        records = tmp_path / "r.records.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 4):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done_before = len(records.read_text().splitlines())
        assert 4 <= done_before < 12 and not (tmp_path / "r.json").exists()
        asked_before = len(stub.requests)
        assert subprocess.run([*command, "--resume"], env=env, stderr=subprocess.DEVNULL).returncode == 0
        assert len(stub.requests) - asked_before == 12 - done_before  # finished examples not asked again
        assert subprocess.run([*command[:-2], "--out", str(tmp_path / "clean.json")], env=env, stderr=subprocess.DEVNULL).returncode == 0
    resumed, clean = json.loads((tmp_path / "r.json").read_text()), json.loads((tmp_path / "clean.json").read_text())
    for document in (resumed, clean):
        document.pop("timings"), document.pop("records_path")
    assert resumed == clean
    strip = lambda path: [{k: v for k, v in json.loads(l).items() if k != "latency_s"} for l in path.read_text().splitlines()]
    assert strip(records) == strip(tmp_path / "clean.records.jsonl")


def test_resume_refuses_records_from_another_model(xlam_data_dir, tmp_path, azure_env, capsys):
    with OpenAIStub(gold_responder(xlam_data_dir, "toolcall")) as stub:
        azure_env(stub, deployment="one")
        assert main(eval_args(xlam_data_dir, tmp_path / "t.json", "toolcall", "--limit", "3")) == 0
        azure_env(stub, deployment="two")
        assert main(eval_args(xlam_data_dir, tmp_path / "t.json", "toolcall", "--limit", "3", "--resume")) == 2
    assert "made by a different run (model was" in capsys.readouterr().err
