"""Capture, filter and build against the scripted teacher on 127.0.0.1 (a real OpenAI-compatible server,
driven through the real `openai` SDK by smolagents' real CodeAgent).

The teacher answers BFCL rows from their gold calls, with scripted faults per row (wrong calls,
broken code, agents that never finish, 429s, a row whose requests always fail), so the filter's
verdicts are known in advance, independently of the filter's code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import error_lines
from langfuse_receiver import LangfuseReceiver
from slm_swap.app.cli import main
from slm_swap.data.bfcl import load_bfcl
from slm_swap.trajectories.records import read_trajectories
from slm_swap.trajectories.teacher import LoopbackHTTPServer, ScriptedTeacher

pytestmark = pytest.mark.usefixtures("loopback_only")

# Every behaviour once per 8 rows; the reason the filter must give (None: accepted).
CYCLE = ("correct", "wrong", "broken", "fixed", "endless", "busy", "down", "correct")
EXPECTED = {"correct": None, "fixed": None, "busy": None, "wrong": "wrong_call", "broken": "unresolved_code_error",
            "endless": "no_final_answer", "down": "request_failed"}
ROWS = 24


@pytest.fixture(scope="module")
def bfcl_rows():
    examples, _ = load_bfcl(("simple_python",))
    return examples


def script(examples, rows=ROWS):
    return {example.id: CYCLE[number % len(CYCLE)] for number, example in enumerate(examples[:rows])}


@pytest.fixture
def teacher_env(monkeypatch):
    """Point the hosted settings at a teacher (an OpenAI-compatible URL), tracing off."""
    def configure(teacher: ScriptedTeacher):
        for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("HOSTED_BASE_URL", teacher.url)
        monkeypatch.setenv("HOSTED_MODEL", "scripted")
        monkeypatch.setenv("HOSTED_API_KEY", "teacher-key-SECRET-4411")
    return configure


def capture_cmd(out: Path, *extra: str, rows: int = ROWS) -> list[str]:
    return ["capture", "--limit", str(rows), "--out", str(out), "--max-retries", "1", "--max-errors", "10", *extra]


@pytest.fixture(scope="module")
def captured(bfcl_rows, tmp_path_factory):
    """One capture + filter of 24 rows, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("captured")
    behaviours = script(bfcl_rows)
    mp = pytest.MonkeyPatch()
    with ScriptedTeacher(bfcl_rows, behaviours) as teacher:
        for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT"):
            mp.delenv(key, raising=False)
        mp.setenv("HOSTED_BASE_URL", teacher.url)
        mp.setenv("HOSTED_MODEL", "scripted")
        try:
            assert main(capture_cmd(folder / "trajectories.jsonl")) == 0
            assert main(["filter", "--trajectories", str(folder / "trajectories.jsonl")]) == 0
        finally:
            mp.undo()
        asked = dict(teacher.asked)
    return folder, behaviours, asked


def test_a_client_hanging_up_prints_no_traceback_but_a_server_error_still_does(capsys):
    """A capture that stops at its error budget hangs up on requests in flight: the teacher must not
    print socketserver's traceback into the command's output for that, only for its own faults."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/gone":
                raise BrokenPipeError(32, "Broken pipe")
            raise ValueError("a real fault")

    server = LoopbackHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        for path in ("/gone", "/fault"):
            with pytest.raises(Exception):  # the server closes the connection without an answer
                urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}{path}", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "ValueError: a real fault" in err
    assert "BrokenPipeError" not in err and err.count("Exception occurred during processing") == 1


def test_filter_verdicts_equal_the_scripted_faults(captured):
    folder, behaviours, _ = captured
    accepted = read_trajectories(folder / "accepted.jsonl")
    rejected = read_trajectories(folder / "rejected.jsonl")
    verdicts = {r["request_id"]: r["verdict"]["reason"] for r in accepted + rejected}
    assert verdicts == {request_id: EXPECTED[behaviour] for request_id, behaviour in behaviours.items()}
    summary = json.loads((folder / "filter.json").read_text())
    assert summary["n"] == ROWS and summary["accepted"] == len(accepted) == 12
    assert summary["reasons"] == {"request_failed": 3, "unresolved_code_error": 3, "no_final_answer": 3, "wrong_call": 3}


def test_a_trajectory_records_what_the_agent_did(captured, bfcl_rows):
    folder, behaviours, asked = captured
    records = {r["request_id"]: r for r in read_trajectories(folder / "trajectories.jsonl")}
    assert [r["index"] for r in records.values()] == list(range(ROWS))  # source order
    example = bfcl_rows[0]  # behaves "correct"
    record = records[example.id]
    assert record["task"] == example.request and record["tools"] == example.functions
    assert record["tool_calls"] == [{"name": example.name, "arguments": example.arguments}]
    assert record["finished"] and record["state"] == "success" and record["error"] is None
    assert record["teacher"].startswith("openai-compatible:scripted@127.0.0.1:")
    first, last = record["steps"]
    assert first["code"].startswith("result = ") and "Execution logs" in first["observation"] and first["error"] is None
    assert first["usage"]["input_tokens"] > 0 and first["latency_s"] >= 0 and first["thought"].startswith("I call")
    assert last["code"] == "final_answer(result)" and last["is_final_answer"]
    assert record["final_answer"] == json.loads(json.dumps(record["final_answer"]))  # plain JSON
    assert "teacher-key" not in (folder / "trajectories.jsonl").read_text()
    # Retries are the SDK's alone (smolagents' are off): a busy row is asked once more, a down row
    # exactly 1 + --max-retries times, and it is recorded as a failed request.
    busy = next(i for i, b in behaviours.items() if b == "busy")
    down = next(i for i, b in behaviours.items() if b == "down")
    assert asked[busy] == 3 and asked[down] == 2
    assert records[down]["error"].startswith("InternalServerError (500)")


def test_capture_resumed_after_a_kill_asks_no_finished_request_again(bfcl_rows, tmp_path, teacher_env):
    behaviours = {e.id: "correct" for e in bfcl_rows[:16]}
    out = tmp_path / "t.jsonl"
    with ScriptedTeacher(bfcl_rows, behaviours, step_delay_s=0.3) as teacher:
        teacher_env(teacher)
        env = {**os.environ, "HOSTED_BASE_URL": teacher.url}
        process = subprocess.Popen([sys.executable, "-m", "slm_swap.app.cli", *capture_cmd(out, "--concurrency", "2", rows=16)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished_before = {r["request_id"] for r in read_trajectories(out, torn_ok=True)}
        assert 4 <= len(finished_before) < 16
        with open(out, "a") as handle:
            handle.write('{"request_id": "torn')  # a line cut by the kill
        asked_before = dict(teacher.asked)
        assert main(capture_cmd(out, "--resume", rows=16)) == 0
        for request_id in finished_before:
            assert teacher.asked[request_id] == asked_before[request_id], request_id
    records = read_trajectories(out)
    assert [r["index"] for r in records] == list(range(16)) and all(r["finished"] for r in records)


@pytest.mark.parametrize("setting, other", [("max_steps", "--max-steps=2"), ("max_turn_tokens", "--max-turn-tokens=64")])
def test_resume_with_other_settings_is_refused(setting, other, bfcl_rows, tmp_path, teacher_env, capsys):
    out = tmp_path / "t.jsonl"
    with ScriptedTeacher(bfcl_rows) as teacher:
        teacher_env(teacher)
        assert main(capture_cmd(out, rows=2)) == 0
        before, _ = out.read_bytes(), capsys.readouterr()
        assert main(capture_cmd(out, "--resume", other, rows=2)) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"slm-swap: error: --resume: {out} was captured with a different {setting}; run again without --resume"]
    assert out.read_bytes() == before


def build_cmd(accepted: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["build", "--accepted", str(accepted), "--out-dir", str(out_dir), "--val", "2", "--test", "3", *extra]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_is_deterministic_and_leak_free(captured, tmp_path):
    folder, _, _ = captured
    assert main(build_cmd(folder / "accepted.jsonl", tmp_path / "a")) == 0
    assert main(build_cmd(folder / "accepted.jsonl", tmp_path / "b")) == 0
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert manifest["sizes"] == {"train": 7, "val": 2, "test": 3}
    assert manifest["filter"]["accepted"] == 12 and manifest["source"]["name"] == "trajectories"
    tasks = {split: [json.loads(line)["task"] for line in (tmp_path / "a" / "agent" / f"{split}.tasks.jsonl").read_text().splitlines()]
             for split in ("train", "val", "test")}
    assert sum(map(len, tasks.values())) == len(set().union(*map(set, tasks.values()))) == 12  # no task in two splits
    for track in ("structured", "toolcall"):  # the v0 rows hold the same tasks, split the same way
        for split, texts in tasks.items():
            prompts = [json.loads(line)["prompt"] for line in (tmp_path / "a" / track / f"{split}.jsonl").read_text().splitlines()]
            assert [p.endswith(t) for p, t in zip(prompts, texts)] == [True] * len(texts)
    # The test split is drawn first: a bigger validation split leaves it as it is.
    assert main(["build", "--accepted", str(folder / "accepted.jsonl"), "--out-dir", str(tmp_path / "c"), "--val", "4", "--test", "3"]) == 0
    assert (tmp_path / "c" / "agent" / "test.jsonl").read_bytes() == (tmp_path / "a" / "agent" / "test.jsonl").read_bytes()
    assert (tmp_path / "c" / "toolcall" / "test.jsonl").read_bytes() == (tmp_path / "a" / "toolcall" / "test.jsonl").read_bytes()


def test_agent_rows_train_on_the_teachers_turns_only(captured, tmp_path):
    folder, _, _ = captured
    assert main(build_cmd(folder / "accepted.jsonl", tmp_path / "d")) == 0
    trajectories = {r["task"]: r for r in read_trajectories(folder / "accepted.jsonl")}
    agent = tmp_path / "d" / "agent"
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (agent / f"{split}.jsonl").read_text().splitlines()]
        tasks = [json.loads(line) for line in (agent / f"{split}.tasks.jsonl").read_text().splitlines()]
        for row, task in zip(rows, tasks):
            messages = row["messages"]
            assert [m["trained"] for m in messages] == [m["role"] == "assistant" for m in messages]
            assert messages[0]["role"] == "system" and messages[1]["content"] == "New task:\n" + task["task"]
            # Everything the agent is told after the task: observations, or the error its code raised.
            assert all(m["content"].startswith(("Observation:", "Call id: ")) for m in messages[2:] if m["role"] == "user")
            assert messages[-1]["role"] == "assistant"
            record = trajectories[task["task"]]
            assert [m["content"] for m in messages if m["trained"]] == [s["model_output"] for s in record["steps"]]


def test_fixed_code_errors_stay_as_context_in_agent_rows(captured):
    folder, behaviours, _ = captured
    fixed = next(i for i, b in behaviours.items() if b == "fixed")
    record = next(r for r in read_trajectories(folder / "accepted.jsonl") if r["request_id"] == fixed)
    assert record["steps"][0]["error"] and not record["steps"][-1]["error"]
    assert record["verdict"]["checks"]["no_unresolved_error"]


def test_user_tools_replace_the_simulated_ones(bfcl_rows, tmp_path, teacher_env):
    with ScriptedTeacher(bfcl_rows) as teacher:
        teacher_env(teacher)
        assert main(capture_cmd(tmp_path / "t.jsonl", "--tools", "trajectory_tools:echo_tools", rows=1)) == 0
    record = read_trajectories(tmp_path / "t.jsonl")[0]
    assert "def echo_tool(text: string)" in record["messages"][0]["content"]
    assert record["tool_calls"] == []  # the teacher called the row's function, which the user's tools do not have
    # ... and smolagents' restricted executor refuses a function it was not given.
    assert "Forbidden function evaluation: 'calculate_triangle_area' is not among the explicitly allowed tools" \
        in record["steps"][0]["error"]


@pytest.mark.parametrize("tools, message", [
    ("nosuch_module:factory", "--tools 'nosuch_module:factory': cannot import nosuch_module: ModuleNotFoundError: No module named 'nosuch_module'"),
    ("trajectory_tools:missing", "--tools 'trajectory_tools:missing': trajectory_tools has no callable 'missing'"),
    ("trajectory_tools", "--tools 'trajectory_tools': expected package.module:factory"),
    ("trajectory_tools:no_tools", "--tools 'trajectory_tools:no_tools': the factory returned no tools (expected a non-empty list of smolagents Tool)"),
    ("trajectory_tools:broken_factory", "--tools 'trajectory_tools:broken_factory': the factory failed: RuntimeError: the tool registry is down"),
])
def test_bad_tools_factory_is_one_line_and_writes_nothing(bfcl_rows, tmp_path, teacher_env, capsys, tools, message):
    with ScriptedTeacher(bfcl_rows) as teacher:
        teacher_env(teacher)
        assert main(capture_cmd(tmp_path / "t.jsonl", "--tools", tools, rows=2)) == 2
        assert teacher.requests == 0
    assert error_lines(capsys.readouterr().err) == [f"slm-swap: error: {message}"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, message", [
    ("--max-steps=0", "--max-steps must be >= 1, got 0"),
    ("--max-turn-tokens=0", "--max-turn-tokens must be >= 1, got 0"),
])
def test_a_limit_below_one_is_one_line_and_writes_nothing(bfcl_rows, tmp_path, teacher_env, capsys, flag, message):
    with ScriptedTeacher(bfcl_rows) as teacher:
        teacher_env(teacher)
        assert main(capture_cmd(tmp_path / "t.jsonl", flag, rows=2)) == 2
        assert teacher.requests == 0
    assert error_lines(capsys.readouterr().err) == [f"slm-swap: error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_source_without_usable_rows(tmp_path, teacher_env, bfcl_rows, capsys):
    multi = [{"id": 1, "query": "Do two things", "tools": json.dumps([{"name": "f", "description": "d", "parameters": {}}]),
              "answers": json.dumps([{"name": "f", "arguments": {}}, {"name": "f", "arguments": {}}])}]
    (tmp_path / "x.json").write_text(json.dumps(multi))
    with ScriptedTeacher(bfcl_rows) as teacher:
        teacher_env(teacher)
        assert main(["capture", "--source", "xlam", "--dataset-path", str(tmp_path / "x.json"), "--out", str(tmp_path / "o" / "t.jsonl")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "slm-swap: error: source 'xlam' has no usable rows (single-call requests with signatures)"]
    assert not (tmp_path / "o").exists()


def test_malformed_trajectory_line_is_named(captured, tmp_path, capsys):
    folder, _, _ = captured
    capsys.readouterr()
    lines = (folder / "trajectories.jsonl").read_text().splitlines()
    (tmp_path / "t.jsonl").write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    assert main(["filter", "--trajectories", str(tmp_path / "t.jsonl")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"slm-swap: error: {tmp_path / 't.jsonl'}:2: not valid JSON")
    (tmp_path / "u.jsonl").write_text(lines[0] + "\n" + json.dumps({"request_id": "x"}) + "\n")
    assert main(["filter", "--trajectories", str(tmp_path / "u.jsonl")]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"slm-swap: error: {tmp_path / 'u.jsonl'}:2: not a trajectory record: 'task' missing or not a str"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "u.jsonl"]


def test_empty_sets_are_refused(captured, tmp_path, capsys):
    folder, _, _ = captured
    capsys.readouterr()
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["filter", "--trajectories", str(tmp_path / "empty.jsonl"), "--out-dir", str(tmp_path / "f")]) == 2
    assert main(build_cmd(tmp_path / "empty.jsonl", tmp_path / "b")) == 2
    assert main(build_cmd(folder / "rejected.jsonl", tmp_path / "b")) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"slm-swap: error: {tmp_path / 'empty.jsonl'}: no trajectories to filter",
        f"slm-swap: error: {tmp_path / 'empty.jsonl'}: no accepted trajectories to build from",
        f"slm-swap: error: {folder / 'rejected.jsonl'}: record 1 (simple_python_1) is not an accepted trajectory: "
        "build from the accepted file `slm-swap filter` writes",
    ]
    assert not (tmp_path / "f").exists() and not (tmp_path / "b").exists()


def test_capture_filter_and_build_are_traced(bfcl_rows, tmp_path, teacher_env, monkeypatch):
    with LangfuseReceiver() as receiver, ScriptedTeacher(bfcl_rows, script(bfcl_rows, 8)) as teacher:
        teacher_env(teacher)
        monkeypatch.delenv("LANGFUSE_DISABLED")
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", receiver.public_key)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-trajectories-SECRET")
        monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        assert main(capture_cmd(tmp_path / "t.jsonl", rows=8)) == 0
        assert main(["filter", "--trajectories", str(tmp_path / "t.jsonl")]) == 0
        assert main(build_cmd(tmp_path / "accepted.jsonl", tmp_path / "ds", "--val", "1", "--test", "1")) == 0
        names = lambda r: {s["name"] for s in r.spans if s["parent_span_id"] is None}  # noqa: E731
        assert receiver.wait_until(lambda r: {"capture", "filter", "build"} <= names(r) and r.scores)
    record = read_trajectories(tmp_path / "t.jsonl")[0]
    capture_trace = record["langfuse_trace_id"]
    spans = [s for s in receiver.spans if s["trace_id"] == capture_trace]
    by_id = {s["span_id"]: s for s in spans}
    trajectories = [s for s in spans if s["name"].startswith("trajectory-")]
    assert len(trajectories) == 8
    steps = [s for s in spans if s["name"].startswith("step-")]
    assert steps and all(by_id[s["parent_span_id"]]["name"].startswith("trajectory-") for s in steps)
    assert any(s["attributes"].get("langfuse.observation.type") == "generation" for s in steps)
    acceptance = [s for s in receiver.scores if s.get("name") == "acceptance_rate"]
    assert [s["value"] for s in acceptance] == [4 / 8]
    assert "teacher-key-SECRET" not in json.dumps([r["body"] for r in receiver.requests], default=str)


def test_capture_against_slm_swap_serve(tiny_model_dir, tmp_path, teacher_env, monkeypatch, capsys):
    """The local SLM served by `slm-swap serve` plays the teacher (a random tiny model: its trajectories
    fail, and are recorded and judged like any other)."""
    from test_local_serve import start_server

    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny"], "unused")
    try:
        for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("HOSTED_BASE_URL", f"{url}/v1")
        monkeypatch.setenv("HOSTED_MODEL", "tiny")
        assert main(capture_cmd(tmp_path / "t.jsonl", "--max-steps", "1", rows=2)) == 0
        assert main(["filter", "--trajectories", str(tmp_path / "t.jsonl")]) == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
    records = read_trajectories(tmp_path / "rejected.jsonl")
    assert len(records) == 2 and all(r["teacher"].startswith("openai-compatible:tiny@127.0.0.1:") for r in records)
    assert all(r["error"] is None and r["steps"] and r["steps"][0]["usage"]["input_tokens"] > 100 for r in records)
    assert "2 trajectories" in capsys.readouterr().out


def test_serve_honours_stop_sequences():
    from slm_swap.app.serve import cut_at_stop

    assert cut_at_stop("Thought: x\n<code>\nprint(1)\n</code>\nObservation: made up", ["Observation:", "</code>"]) == (
        "Thought: x\n<code>\nprint(1)\n", True)
    assert cut_at_stop("no stop here", ["</code>"]) == ("no stop here", False)
