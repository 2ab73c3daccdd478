"""`slm-swap eval --track agent` and `compare` on agent metrics files, against the scripted teacher on
127.0.0.1 and the tiny model through the project's batched local client; and the `slm-swap-distill`
flow end to end under a real temporary Prefect API, its runs tagged with every Langfuse trace id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import error_lines
from langfuse_receiver import LangfuseReceiver
from prefect_api import prefect_api, run_graph  # noqa: F401  (a fixture and a helper)
from slm_swap.app.cli import main
from slm_swap.data.bfcl import load_bfcl
from slm_swap.trajectories.teacher import ScriptedTeacher

pytestmark = pytest.mark.usefixtures("loopback_only")
ROWS = 16  # 4 of them wrong: rejected by the filter, never in a split
TEST_TASKS = 4


@pytest.fixture(scope="module")
def bfcl_rows():
    examples, _ = load_bfcl(("simple_python",))
    return examples[:ROWS]


def behaviours(rows):
    return {row.id: "wrong" if number % 4 == 3 else "correct" for number, row in enumerate(rows)}


def point_at(mp: pytest.MonkeyPatch, teacher: ScriptedTeacher) -> None:
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "PREFECT__FLOW_RUN_ID"):
        mp.delenv(key, raising=False)
    mp.setenv("HOSTED_BASE_URL", teacher.url)
    mp.setenv("HOSTED_MODEL", "scripted")
    mp.setenv("HOSTED_API_KEY", "teacher-key-SECRET-7310")


@pytest.fixture(scope="module")
def built(bfcl_rows, tmp_path_factory):
    """Capture -> filter -> build: 12 accepted tasks, 4 of them the test split."""
    folder = tmp_path_factory.mktemp("agent-data")
    mp = pytest.MonkeyPatch()
    with ScriptedTeacher(bfcl_rows, behaviours(bfcl_rows)) as teacher:
        point_at(mp, teacher)
        try:
            assert main(["capture", "--limit", str(ROWS), "--max-steps", "2", "--out", str(folder / "t" / "trajectories.jsonl")]) == 0
            assert main(["filter", "--trajectories", str(folder / "t" / "trajectories.jsonl")]) == 0
            assert main(["build", "--accepted", str(folder / "t" / "accepted.jsonl"), "--out-dir", str(folder / "data"),
                         "--val", "2", "--test", str(TEST_TASKS)]) == 0
        finally:
            mp.undo()
    return folder / "data"


def agent_eval(data: Path, out: Path, kind: str, *extra: str) -> int:
    return main(["eval", "--track", "agent", "--model-kind", kind, "--data-dir", str(data), "--out", str(out), *extra])


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.stem + ".records.jsonl").read_text().splitlines()]


def test_teacher_and_student_as_agents_then_compare(built, bfcl_rows, tiny_model_dir, tmp_path, monkeypatch, capsys):
    with ScriptedTeacher(bfcl_rows, behaviours(bfcl_rows)) as teacher:
        point_at(monkeypatch, teacher)
        assert agent_eval(built, tmp_path / "hosted.json", "azure") == 0
        asked = teacher.requests
        assert asked == 2 * TEST_TASKS  # two turns per task: the call, then final_answer
        assert agent_eval(built, tmp_path / "hosted.json", "azure", "--resume") == 0
        assert teacher.requests == asked  # a finished eval resumed asks nothing again
    hosted = read(tmp_path / "hosted.json")
    assert hosted["track"] == "agent" and hosted["n"] == TEST_TASKS and hosted["errors"] == 0
    assert hosted["task_success_rate"] == hosted["valid_code_rate"] == hosted["args_ast_match_rate"] == 1.0
    assert hosted["mean_steps"] == 2.0 and hosted["max_steps"] == 2 and len(hosted["ci95"]["task_success_rate"]) == 2
    assert hosted["model"]["kind"] == "azure" and hosted["dataset"]["path"].endswith("agent/test.tasks.jsonl")
    tasks = [json.loads(line) for line in (built / "agent" / "test.tasks.jsonl").read_text().splitlines()]
    assert [r["request_id"] for r in records(tmp_path / "hosted.json")] == [t["id"] for t in tasks]
    assert "teacher-key-SECRET" not in (tmp_path / "hosted.records.jsonl").read_text()

    # The student: the tiny random model, through the batched local client, as the same agent.
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    assert agent_eval(built, tmp_path / "slm.json", "slm", "--limit", "2") == 0
    slm = read(tmp_path / "slm.json")
    assert slm["n"] == 2 and slm["model"]["kind"] == "slm" and slm["task_success_rate"] == 0.0
    for record in records(tmp_path / "slm.json"):
        # It ran as an agent: its turns are recorded, and it never answered correctly.
        assert record["steps"] and record["turns"] >= 1 and not record["task_success"] and record["reason"]

    # compare works on agent metrics files: the same delta rule, on counts.
    two = tmp_path / "hosted_2.json"
    with ScriptedTeacher(bfcl_rows) as teacher:
        point_at(monkeypatch, teacher)
        assert agent_eval(built, two, "azure", "--limit", "2") == 0
    capsys.readouterr()
    assert main(["compare", "--track", "agent", "--azure", str(two), "--slm", str(tmp_path / "slm.json")]) == 10
    out = capsys.readouterr().out
    assert "FINE_TUNE=1" in out and "task_success_rate" in out and "valid_code_rate" in out
    assert main(["compare", "--track", "agent", "--azure", str(two), "--slm", str(two)]) == 0


def test_the_captures_turn_budget_is_the_students(bfcl_rows, tiny_model_dir, tmp_path, monkeypatch):
    """`capture --max-turn-tokens N` asks the teacher for at most N tokens a turn, the tasks built
    from it carry N, and the student evaluated on them is held to the same N."""
    rows = bfcl_rows[:6]
    with ScriptedTeacher(rows) as teacher:
        point_at(monkeypatch, teacher)
        assert main(["capture", "--limit", "6", "--max-steps", "2", "--max-turn-tokens", "9",
                     "--out", str(tmp_path / "t" / "trajectories.jsonl")]) == 0
        assert teacher.max_tokens_asked == {9}
    assert main(["filter", "--trajectories", str(tmp_path / "t" / "trajectories.jsonl")]) == 0
    assert main(["build", "--accepted", str(tmp_path / "t" / "accepted.jsonl"), "--out-dir", str(tmp_path / "data"),
                 "--val", "1", "--test", "2"]) == 0
    tasks = [json.loads(line) for line in (tmp_path / "data" / "agent" / "test.tasks.jsonl").read_text().splitlines()]
    assert {task["max_turn_tokens"] for task in tasks} == {9}

    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    assert agent_eval(tmp_path / "data", tmp_path / "slm.json", "slm") == 0
    assert read(tmp_path / "slm.json")["max_turn_tokens"] == 9
    turns = [step["usage"]["output_tokens"] for record in records(tmp_path / "slm.json") for step in record["steps"]]
    # The random model never stops by itself: every turn it took ran to the budget, and none past it.
    assert turns and max(turns) == 9


def test_an_adapter_trained_for_another_track_is_refused(built, tiny_model_dir, tiny_adapter_dir, tmp_path, monkeypatch, capsys):
    from slm_swap.train.run import MANIFEST

    adapter = tmp_path / "adapter_toolcall"
    shutil.copytree(tiny_adapter_dir, adapter)
    (adapter / MANIFEST).write_text(json.dumps({"track": "toolcall"}))
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    assert agent_eval(built, tmp_path / "m.json", "slm", "--adapter", str(adapter)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"slm-swap: error: --adapter {adapter}: trained for track 'toolcall'")
    assert not list(tmp_path.glob("m.*"))


def test_tools_that_show_other_schemas_than_the_capture_are_refused(built, bfcl_rows, tmp_path, monkeypatch, capsys):
    with ScriptedTeacher(bfcl_rows) as teacher:
        point_at(monkeypatch, teacher)
        assert agent_eval(built, tmp_path / "m.json", "azure", "--tools", "trajectory_tools:echo_tools") == 2
        assert teacher.requests == 0
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"slm-swap: error: {built / 'agent' / 'test.tasks.jsonl'}: row 1 (")
    assert "the tools of --tools trajectory_tools:echo_tools do not match the tool schemas" in line
    assert not list(tmp_path.glob("m.*"))


def test_tasks_edited_since_the_capture_are_refused(built, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(built, data)
    tasks = data / "agent" / "test.tasks.jsonl"
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    rows[1]["functions"][0]["description"] = "Something else entirely."
    tasks.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert agent_eval(data, tmp_path / "m.json", "azure") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"slm-swap: error: {tasks}: row 2 (")


@pytest.mark.integration
def test_the_distill_flow_end_to_end(prefect_api, bfcl_rows, tiny_model_dir, tmp_path, monkeypatch):
    """capture -> filter -> build -> agent evals -> compare -> fine-tune (the student trails) ->
    re-eval -> compare -> report, under a real Prefect API, every Langfuse trace id a tag."""
    from flows.distill import run_distill
    from slm_swap.app.flow_configs import DistillConfig
    from slm_swap.train.launch import CPU_CONFIG
    from slm_swap.train.run import MANIFEST

    config = DistillConfig(limit=ROWS, max_steps=2, val=2, test=TEST_TASKS, trajectories_dir=tmp_path / "03",
                           data_dir=tmp_path / "02", eval_dir=tmp_path / "05", ft_dir=tmp_path / "04",
                           max_train_steps=2, accelerate_config=CPU_CONFIG, finetune_deployment=None)
    with LangfuseReceiver() as receiver, ScriptedTeacher(bfcl_rows, behaviours(bfcl_rows)) as teacher:
        point_at(monkeypatch, teacher)
        monkeypatch.delenv("LANGFUSE_DISABLED", raising=False)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", receiver.public_key)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-distill-SECRET-20c4")
        monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
        flow_run_id, summary = run_distill(config)
        # capture, filter, build, 2 evals, compare, training, re-eval, compare
        assert receiver.wait_until(lambda r: len(r.command_trace_ids()) == 9, timeout_s=15)

    agent = summary["tracks"]["agent"]
    assert agent["decision"]["fine_tune"] and agent["trained"] and agent["final_decision"] is not None
    assert summary["data"]["filter"]["accepted"] == 12 and summary["data"]["filter"]["reasons"] == {"wrong_call": 4}
    assert summary["data"]["build"]["sizes"] == {"train": 6, "val": 2, "test": TEST_TASKS}
    manifest = read(tmp_path / "04" / "adapter_agent" / MANIFEST)
    assert manifest["track"] == "agent" and manifest["steps"] == 2
    tuned = read(tmp_path / "05" / "agent_slm_ft_test.json")
    assert tuned["model"]["adapter"] == str(tmp_path / "04" / "adapter_agent") and tuned["n"] == TEST_TASKS
    report = (tmp_path / "05" / "report.md").read_text()
    assert "## Data: teacher trajectories" in report and "12 of 16 accepted" in report
    assert "teacher-key-SECRET" not in report + json.dumps(summary)

    graph = run_graph(flow_run_id, expect_tasks=10)
    assert graph["flow_name"] == "slm-swap-distill" and graph["run"].state.is_completed()
    expected = {"capture", "filter", "build", "eval-hosted-agent", "eval-slm-agent", "compare-agent-baseline",
                "eval-slm-ft-agent", "compare-agent-finetuned", "report"}
    assert expected <= set(graph["tasks"]), sorted(graph["tasks"])
    (child,) = graph["children"]
    assert child.name == "finetune-agent" and child.state.is_completed()
    assert graph["artifacts"]["slm-swap-report"].type == "markdown"

    ids = {summary["data"][step]["langfuse_trace_id"] for step in ("capture", "filter", "build")}
    ids |= {read(p)["langfuse_trace_id"] for p in (tmp_path / "05").glob("agent_*_test.json")}
    ids |= {agent["decision"]["langfuse_trace_id"], agent["final_decision"]["langfuse_trace_id"], manifest["langfuse_trace_id"]}
    assert None not in ids and ids == receiver.command_trace_ids()
    assert {f"langfuse:{i}" for i in ids} <= set(graph["run"].tags)
    assert f"langfuse:{manifest['langfuse_trace_id']}" in child.tags


def test_the_students_steps_never_decode_past_its_context(tiny_model_dir):
    """A step gets `max_tokens`, or what the conversation leaves of the model's context; a
    conversation that fills it fails the run instead of decoding past the model's positions."""
    from slm_swap.llm.local import load_local_model
    from slm_swap.llm.agent_models import local_agent_model

    local = load_local_model(tiny_model_dir, None, 2, None)
    agent = local_agent_model(local, batch_size=2)
    try:
        model = agent.make_model(512)
        limit = local.context_length
        def conversation(words: int) -> list[dict]:
            return [{"role": "user", "content": "word " * words}]
        def used(words: int) -> int:
            return len(local.tokenizer(local.render(conversation(words)), add_special_tokens=False)["input_ids"])
        assert model.token_budget(conversation(10)) == model.max_tokens == 512
        near = limit - 100 - (used(limit - 100) - (limit - 100))  # leaves about 100 tokens
        assert model.token_budget(conversation(near)) == limit - used(near) < 512
        with pytest.raises(ValueError, match=f"fills {tiny_model_dir.name}'s context of {limit} tokens"):
            model.token_budget(conversation(limit))
    finally:
        agent.close()
