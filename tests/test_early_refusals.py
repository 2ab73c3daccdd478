"""Every command checks what it can before the expensive part (issue 29): the flows before Prefect
starts, `train` before accelerate starts; the training process's failure comes back as the parent's
one line; settings that do not parse, step caps below one and secrets of any length."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from conftest import error_lines
from openai_stub import OpenAIStub
from slm_swap.app.cli import main
from slm_swap.infra.config import REDACTED, Settings, load_settings, scrub_secrets
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.tracing.masking import Mask
from slm_swap.train.launch import CPU_CONFIG, run_training
from slm_swap.train.run import MANIFEST
from test_bad_inputs import read_only_folder

LANGFUSE_VARIABLES = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST", "LANGFUSE_DISABLED")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def hosted(monkeypatch):
    """A hosted model that is configured (its server is never asked in these refusals)."""
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOSTED_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HOSTED_MODEL", "never-asked")
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")


@pytest.fixture
def flows_never_entered(monkeypatch):
    """Fails the test if a flow (and so Prefect's temporary server) is started."""
    import flows.distill
    import flows.pipeline

    def started(*args, **kwargs):
        raise AssertionError("the flow was started")

    monkeypatch.setattr(flows.pipeline, "run_in_process", started)
    monkeypatch.setattr(flows.distill, "run_in_process", started)


# -- pipeline and distill: refused before Prefect starts -------------------------------------------

def test_pipeline_without_langfuse_settings_is_refused_before_any_flow_or_stamp(
        xlam_data_dir, tmp_path, hosted, monkeypatch, capsys, flows_never_entered):
    for name in LANGFUSE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    eval_dir = tmp_path / "05_eval"
    assert main(["pipeline", "--tracks", "toolcall", "--data-dir", str(xlam_data_dir), "--out-dir", str(eval_dir)]) == 2
    assert "LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST are not set" in one_error_line(capsys)
    assert not list(tmp_path.rglob("*.pipeline.json"))


@pytest.mark.parametrize("args,message", [
    (["--tracks", "agent", "--tools", "nomod:f"], "--tools 'nomod:f': cannot import nomod"),
    (["--data-dir", "{tmp}/nothing"], "/nothing/toolcall/test.jsonl: no such dataset file"),
    (["--source", "xlam", "--dataset-path", "{tmp}/no.json"], "--dataset-path {tmp}/no.json: no such file"),
    (["--accelerate-config", "{tmp}/no.yaml"], "--accelerate-config {tmp}/no.yaml: no such file"),
])
def test_pipeline_config_problems_are_one_line_before_any_flow(xlam_data_dir, tmp_path, hosted, capsys,
                                                               flows_never_entered, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["pipeline", "--tracks", "toolcall", "--data-dir", str(xlam_data_dir), "--out-dir", str(tmp_path / "e"), *args]
    assert main(argv) == 2
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(capsys)
    assert not list(tmp_path.rglob("*.pipeline.json"))


def test_pipeline_into_a_read_only_folder_is_refused_before_any_flow(xlam_data_dir, tmp_path, hosted, capsys,
                                                                     flows_never_entered):
    with read_only_folder(tmp_path / "ro") as folder:
        assert main(["pipeline", "--data-dir", str(xlam_data_dir), "--out-dir", str(folder)]) == 2
        assert f"--out-dir {folder}: cannot write in {folder}" in one_error_line(capsys)
        assert list(folder.iterdir()) == []


def test_pipeline_without_a_hosted_model_is_refused_before_any_flow(xlam_data_dir, tmp_path, monkeypatch, capsys,
                                                                    flows_never_entered):
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_BASE_URL", "HOSTED_MODEL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    assert main(["pipeline", "--data-dir", str(xlam_data_dir), "--out-dir", str(tmp_path / "e")]) == 2
    assert "hosted model not configured" in one_error_line(capsys)


@pytest.mark.parametrize("args,message", [
    (["--tools", "nomod:f"], "--tools 'nomod:f': cannot import nomod"),
    ([], "LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST are not set"),
    (["--max-train-steps", "0"], "distill: --max-train-steps: must be >= 1"),
])
def test_distill_refuses_before_any_flow(tmp_path, hosted, monkeypatch, capsys, flows_never_entered, args, message):
    if not args:
        monkeypatch.delenv("LANGFUSE_DISABLED")
    folders = ["--trajectories-dir", str(tmp_path / "03"), "--data-dir", str(tmp_path / "02"), "--out-dir", str(tmp_path / "05")]
    assert main(["distill", "--limit", "2", *folders, *args]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "03" / "trajectories.jsonl").exists()


def test_the_temporary_server_gets_analytics_off_unless_the_user_chose():
    """What `run_in_process` hands the temporary server Prefect starts (its settings travel to the
    server process as PREFECT_* variables); settings are read once per process, hence a child."""
    probe = "from flows.runtime import _temporary_server_settings as s; print(s())"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    unset = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "true"},
                            capture_output=True, text=True, timeout=120)
    assert unset.stdout.strip() == "{'server.analytics_enabled': False}", unset.stderr[-2000:]
    assert chosen.stdout.strip() == "{}", chosen.stderr[-2000:]


# -- step caps ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["train", "--track", "toolcall"], ["pipeline"]])
@pytest.mark.parametrize("steps", ["0", "-2"])
def test_a_step_cap_below_one_is_one_line_naming_the_flag(tmp_path, capsys, command, steps, flows_never_entered):
    assert main([*command, "--max-steps", steps]) == 2
    assert one_error_line(capsys).startswith(f"slm-swap: error: {command[0]}: --max-steps: must be >= 1")


def test_the_library_refuses_a_zero_step_cap_too(tmp_path):
    from slm_swap.train.run import TrainRequest, validate

    request = TrainRequest(track="toolcall", train_path=tmp_path / "t", val_path=tmp_path / "v", out_dir=tmp_path / "o",
                           model_path=tmp_path, max_steps=0)
    with pytest.raises(SlmSwapError, match="--max-steps must be >= 1"):
        validate(request)


# -- train: checked before accelerate starts; the child's failure is the parent's one line --------------

def test_train_onto_an_existing_adapter_is_refused_before_launch(xlam_data_dir, tiny_model_dir, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    monkeypatch.setattr("slm_swap.app.finetune_step.run_training", lambda *a, **k: pytest.fail("launched"))
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    (out / MANIFEST).write_text("{}")  # one of ours: replaced with --overwrite only
    assert main(["train", "--track", "toolcall", "--data-dir", str(xlam_data_dir), "--out", str(out)]) == 2
    assert one_error_line(capsys) == f"slm-swap: error: --out {out} already holds an adapter: pass --overwrite to replace it"


@pytest.mark.parametrize("flag", ["--out", "--ft-dir"])
def test_train_into_a_read_only_folder_is_refused_before_launch(xlam_data_dir, tiny_model_dir, tmp_path, monkeypatch,
                                                                capsys, flag):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    monkeypatch.setattr("slm_swap.app.finetune_step.run_training", lambda *a, **k: pytest.fail("launched"))
    with read_only_folder(tmp_path / "ro") as folder:
        target = folder / "adapter" if flag == "--out" else folder
        assert main(["train", "--track", "toolcall", "--data-dir", str(xlam_data_dir), flag, str(target)]) == 2
        assert f"slm-swap: error: {flag} " in (line := one_error_line(capsys)) and "cannot write in" in line
        assert list(folder.iterdir()) == []


LAUNCHER = textwrap.dedent("""
    import subprocess, sys
    child = subprocess.run([sys.executable, "-c", '''
    import sys
    print("loading model", file=sys.stderr, flush=True)
    sys.stderr.write(" 50%|##   |\\\\r100%|#####|\\\\n"); sys.stderr.flush()
    print("slm_swap.train: error: --resume: no checkpoint in /x", file=sys.stderr, flush=True)
    sys.exit(2)
    '''])
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, ["python", "-m", "slm_swap.train"])
""")


def test_a_failed_child_is_one_line_without_the_launchers_traceback(tmp_path):
    """As accelerate does: the child prints its line and exits 2, the launcher raises CalledProcessError."""
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    shown: list[str] = []
    with pytest.raises(SlmSwapError) as refused:
        run_training([sys.executable, str(script)], echo=shown.append)
    assert str(refused.value) == "training failed: --resume: no checkpoint in /x"
    assert "".join(shown) == "loading model\n 50%|##   |\r100%|#####|\n"  # live, progress redraws included
    assert shown[1:] == [" 50%|##   |\r", "100%|#####|\n"]


def test_a_child_that_fails_without_its_line_shows_its_output_and_the_exit_status(tmp_path):
    shown: list[str] = []
    with pytest.raises(SlmSwapError, match=r"training failed: python\S* -c exited with status 3"):
        run_training([sys.executable, "-c", "import sys; print('Traceback (a bug)', file=sys.stderr); sys.exit(3)"],
                     echo=shown.append)
    assert shown == ["Traceback (a bug)\n"]


@pytest.mark.integration
def test_train_reports_the_training_process_error_as_its_own_line(xlam_data_dir, tiny_model_dir, tmp_path):
    """For real through accelerate launch: --resume with no checkpoint is found by the training process."""
    env = {**os.environ, "SLM_MODEL_PATH": str(tiny_model_dir), "LANGFUSE_DISABLED": "1"}
    out = tmp_path / "adapter"
    result = subprocess.run(
        [sys.executable, "-m", "slm_swap.app.cli", "train", "--track", "toolcall", "--data-dir", str(xlam_data_dir),
         "--out", str(out), "--accelerate-config", str(CPU_CONFIG), "--resume", "--max-steps", "1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"slm-swap: error: training failed: --resume: no checkpoint in {out}.checkpoints"], errors


# -- settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["maybe", "2"])
def test_a_setting_that_does_not_parse_is_one_line_naming_it(monkeypatch, capsys, value):
    monkeypatch.setenv("LANGFUSE_DISABLED", value)
    with pytest.raises(SlmSwapError, match=f"^LANGFUSE_DISABLED='{value}': not a boolean; expected 1, true"):
        load_settings()
    assert main(["compare", "--track", "toolcall", "--azure", "a.json", "--slm", "b.json"]) == 2
    assert one_error_line(capsys).startswith(f"slm-swap: error: LANGFUSE_DISABLED='{value}': not a boolean")


def test_an_empty_setting_means_unset(monkeypatch):
    monkeypatch.setenv("LANGFUSE_DISABLED", "")
    monkeypatch.setenv("AZURE_API_KEY", "")
    settings = load_settings()
    assert settings.langfuse_disabled is False and settings.azure_api_key is None


# -- secrets of any length ---------------------------------------------------------------------------

def test_short_secrets_are_scrubbed_where_they_stand_as_a_token_long_ones_anywhere():
    secrets = ["k", "abc123", "sk-long-secret-1"]
    text = 'Bearer abc123. key="k" k, api-key: k; xk k_1 abc1234 sk-long-secret-1suffix'
    assert scrub_secrets(text, secrets) == ('Bearer [redacted]. key="[redacted]" [redacted], api-key: [redacted]; '
                                            'xk k_1 abc1234 [redacted]suffix')
    mask = Mask()
    mask.secrets = tuple(secrets)
    assert mask.text(text) == scrub_secrets(text, secrets)  # one scrubber for errors, records and Langfuse
    assert Settings(hosted_api_key="abc123").scrub("key abc123") == f"key {REDACTED}"


@pytest.mark.parametrize("key", ["k6sec!", "z"])
def test_a_short_key_echoed_by_the_server_reaches_no_output(xlam_data_dir, tmp_path, monkeypatch, capsys, key):
    for name in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    leaked, scrubbed = f"Bearer {key}", "Incorrect API key provided: Bearer [redacted]."

    def run_eval(stub: OpenAIStub, out: Path, max_errors: str) -> int:
        monkeypatch.setenv("HOSTED_BASE_URL", f"{stub.url}/v1")
        monkeypatch.setenv("HOSTED_MODEL", "m")
        monkeypatch.setenv("HOSTED_API_KEY", key)
        return main(["eval", "--track", "toolcall", "--model-kind", "azure", "--data-dir", str(xlam_data_dir),
                     "--out", str(out), "--max-retries", "0", "--max-errors", max_errors])

    with OpenAIStub(failures=[401] * 12, echo_key=True) as stub:  # the error budget runs out: an error line
        assert run_eval(stub, tmp_path / "stopped.json", "2") == 2
    assert stub.requests[0]["headers"]["authorization"] == leaked
    err = capsys.readouterr().err
    assert scrubbed in err and leaked not in err
    with OpenAIStub(failures=[401] * 2, echo_key=True) as stub:  # two failures within the budget: a metrics file
        assert run_eval(stub, tmp_path / "done.json", "5") == 0
    assert leaked not in capsys.readouterr().err
    assert scrubbed in (tmp_path / "done.records.jsonl").read_text()
    assert (tmp_path / "done.json").is_file()
    for path in tmp_path.iterdir():
        assert leaked not in path.read_text(), path


def test_a_short_key_that_is_also_a_word_of_the_answers_never_changes_a_score(xlam_data_dir, tmp_path, monkeypatch,
                                                                               capsys):
    """A short key (vLLM's `EMPTY`, or here a word the gold answers hold) is scrubbed from what is
    recorded, never from what is scored: a model that answers every row exactly scores 1.0."""
    rows = [json.loads(line) for line in (xlam_data_dir / "toolcall" / "test.jsonl").read_text().splitlines()]
    words = Counter(w for row in rows for w in re.findall(r"(?<!\w)\w{2,7}(?!\w)", row["completion"]))
    key = words.most_common(1)[0][0]  # a short word of most gold answers: scrubbing it would break them
    gold = {row["prompt"]: row["completion"] for row in rows}
    for name in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    with OpenAIStub(lambda messages: gold[messages[-1]["content"]]) as stub:
        monkeypatch.setenv("HOSTED_BASE_URL", f"{stub.url}/v1")
        monkeypatch.setenv("HOSTED_MODEL", "m")
        monkeypatch.setenv("HOSTED_API_KEY", key)
        assert main(["eval", "--track", "toolcall", "--model-kind", "azure", "--data-dir", str(xlam_data_dir),
                     "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["args_exact_rate"] == metrics["valid_call_rate"] == 1.0
    records = (tmp_path / "m.records.jsonl").read_text()
    assert REDACTED in records and not re.search(rf"(?<!\w){re.escape(key)}(?!\w)", records)
    assert "HOSTED_API_KEY is shorter than 8 characters" in capsys.readouterr().err


def test_the_childs_line_is_found_after_a_progress_bar(tmp_path):
    """tqdm leaves its last redraw without a newline: the child's line follows it in one segment."""
    shown: list[str] = []
    child = ("import sys; sys.stderr.write('\\r 40%|####  |'); sys.stderr.flush(); "
             "print('slm_swap.train: error: out: No space left on device', file=sys.stderr); sys.exit(2)")
    with pytest.raises(SlmSwapError) as refused:
        run_training([sys.executable, "-c", child], echo=shown.append)
    assert str(refused.value) == "training failed: out: No space left on device"
    assert "".join(shown) == "\r 40%|####  |"
