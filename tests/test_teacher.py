"""The scripted teacher as the hosted stand-in of v0 rows: `slm-swap eval --model-kind azure` against it
on 127.0.0.1, through the OpenAI route and Azure's, with faults scripted per test row.

Which rows are wrong is known from the script, so the metrics each track must give are counted here
from the script and the behaviour table, not from the teacher's or the scorer's code.
"""

from __future__ import annotations

import json

import pytest

from slm_swap.app.cli import main
from slm_swap.data.bfcl import load_bfcl
from slm_swap.trajectories import teacher as teacher_module
from slm_swap.trajectories.teacher import NOT_A_MODEL, ScriptedTeacher, is_scripted

pytestmark = pytest.mark.usefixtures("loopback_only")

TEST_ROWS = 14
# Per test row, in order; `down` is left out (an eval stops at its error budget), tested on its own.
SCRIPT = ("correct", "wrong", "broken", "fixed", "endless", "busy", "correct")
# Which core metrics each behaviour passes, per track (a wrong argument is still a valid call to the right name).
PASSES = {
    "structured": {"correct": ("json_valid", "exact_match"), "fixed": ("json_valid", "exact_match"),
                   "busy": ("json_valid", "exact_match"), "wrong": ("json_valid",), "broken": (), "endless": ()},
    "toolcall": {"correct": ("valid_call", "name_match", "args_exact"), "fixed": ("valid_call", "name_match", "args_exact"),
                 "busy": ("valid_call", "name_match", "args_exact"), "wrong": ("valid_call", "name_match"),
                 "broken": (), "endless": ()},
}


@pytest.fixture(scope="module")
def examples():
    return load_bfcl(("simple_python",))[0]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, examples):
    """A BFCL dataset as `slm-swap prepare` writes it, and its dataset.json (the test rows' ids in order)."""
    out = tmp_path_factory.mktemp("02_dataset")
    assert main(["prepare", "--source", "bfcl", "--train", "4", "--val", "2", "--test", str(TEST_ROWS),
                 "--out-dir", str(out)]) == 0
    return out, json.loads((out / "dataset.json").read_text())


def _test_ids(manifest: dict) -> list[str]:
    ids = manifest.get("ids", {}).get("test") if isinstance(manifest.get("ids"), dict) else None
    assert ids, f"dataset.json has no test ids: {sorted(manifest)}"
    return ids


def point_at(monkeypatch, teacher: ScriptedTeacher, route: str) -> None:
    for key in ("HOSTED_BASE_URL", "HOSTED_MODEL", "HOSTED_API_KEY", "AZURE_ENDPOINT", "AZURE_DEPLOYMENT", "AZURE_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    if route == "openai":
        monkeypatch.setenv("HOSTED_BASE_URL", teacher.url)
        monkeypatch.setenv("HOSTED_MODEL", teacher.model)
        monkeypatch.setenv("HOSTED_API_KEY", "stand-in-key-SECRET-5120")
    else:
        monkeypatch.setenv("AZURE_ENDPOINT", f"{teacher.root}/openai/deployments/{teacher.model}")
        monkeypatch.setenv("AZURE_API_KEY", "stand-in-key-SECRET-5120")


@pytest.mark.parametrize("route", ["openai", "azure"])
@pytest.mark.parametrize("track", ["structured", "toolcall"])
def test_eval_against_the_stand_in_scores_exactly_the_scripted_faults(prepared, examples, tmp_path, monkeypatch, route, track):
    data_dir, manifest = prepared
    test_ids = _test_ids(manifest)
    script = {row_id: SCRIPT[number % len(SCRIPT)] for number, row_id in enumerate(test_ids)}
    out = tmp_path / f"{track}_azure_test.json"
    with ScriptedTeacher(examples, script, model=f"stand-in-{NOT_A_MODEL}") as teacher:
        point_at(monkeypatch, teacher, route)
        assert main(["eval", "--track", track, "--model-kind", "azure", "--split", "test", "--data-dir", str(data_dir),
                     "--out", str(out)]) == 0
        # `busy` answered 429 once and was retried by the SDK; every other row was asked once.
        assert sum(teacher.asked.values()) == TEST_ROWS + sum(1 for b in script.values() if b == "busy")
    metrics = json.loads(out.read_text())
    assert metrics["n"] == TEST_ROWS and metrics["errors"] == 0
    for key in {key for keys in PASSES[track].values() for key in keys}:
        expected = sum(1 for behaviour in script.values() if key in PASSES[track][behaviour])
        assert round(metrics[f"{key}_rate"] * TEST_ROWS) == expected, key
    assert 0 < metrics["exact_match_rate" if track == "structured" else "args_exact_rate"] < 1  # high, not perfect
    assert is_scripted(metrics["model"]["identity"])
    records = out.with_name(f"{track}_azure_test.records.jsonl").read_text()
    assert "stand-in-key-SECRET" not in records + out.read_text()


def test_a_down_row_fails_and_a_stranger_gets_no_answer(examples):
    from slm_swap.core.prompts import build_messages, build_prompt

    with ScriptedTeacher(examples[:3], {examples[0].id: "down"}) as teacher:
        down = build_messages(build_prompt("toolcall", examples[0].request, examples[0].functions))
        assert teacher.answer({"messages": down})[0] == 500
        other = build_messages(build_prompt("toolcall", "something no row asks", examples[1].functions))
        assert teacher.answer({"messages": other}) == (200, "I could not complete the task.")


def test_models_route_and_the_command_line_insist_on_not_a_model(examples, capsys):
    import urllib.request

    with ScriptedTeacher(examples[:2]) as teacher:
        listed = json.loads(urllib.request.urlopen(f"{teacher.url}/models", timeout=10).read())
    assert [model["id"] for model in listed["data"]] == [teacher.model] and NOT_A_MODEL in teacher.model
    with pytest.raises(SystemExit) as exit_info:
        teacher_module.main(["--port", "0", "--model-name", "gpt-4o"])
    assert exit_info.value.code == 2
    assert "--model-name 'gpt-4o': must contain 'not-a-model'" in capsys.readouterr().err
    assert not is_scripted("azure:gpt-4o@example.openai.azure.com") and not is_scripted(None)
