"""Dataset converters, splits and the row contract (fast tier: no model, no server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_swap.app.cli import main
from slm_swap.core.metrics import parse_toolcall
from slm_swap.core.prompts import TRACKS, build_messages
from slm_swap.data.examples import load_rows
from slm_swap.data.prepare import SPLITS
from slm_swap.data.xlam import load_xlam

FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"


def read_split(out: Path, track: str, split: str) -> list[dict]:
    return load_rows(out / track / f"{split}.jsonl")


def test_xlam_keeps_single_calls_and_counts_the_rest():
    examples, skipped = load_xlam(FIXTURE)
    assert len(examples) == 52
    assert skipped["multi_call"] == 8
    first = examples[0]
    assert first.request == "Any recipe with tofu and ginger that takes under 30 minutes?"
    assert first.name == "find_recipes"
    assert first.arguments == {"ingredients": ["tofu", "ginger"], "max_minutes": 30}
    params = first.functions[0]["parameters"]
    assert params["required"] == ["ingredients"]  # "int, optional" marks max_minutes optional
    assert params["properties"]["max_minutes"]["default"] == 60


def test_prepare_xlam_rows_follow_the_contract(tmp_path):
    code = main(["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "20",
                 "--val", "5", "--test", "5", "--out-dir", str(tmp_path)])
    assert code == 0
    source = {str(row["id"]): row for row in json.loads(FIXTURE.read_text())}
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["sizes"] == {"train": 20, "val": 5, "test": 5}
    assert manifest["skipped"]["multi_call"] == 8 and manifest["skipped"]["duplicate_request"] > 0
    for split in SPLITS:
        structured = read_split(tmp_path, "structured", split)
        toolcall = read_split(tmp_path, "toolcall", split)
        assert len(structured) == len(toolcall) == manifest["sizes"][split]
        for srow, trow, row_id in zip(structured, toolcall, manifest["ids"][split]):
            raw = source[row_id]
            gold = json.loads(raw["answers"])[0]
            assert raw["query"] in srow["prompt"] and raw["query"] in trow["prompt"]  # verbatim
            assert gold["name"] in trow["prompt"]  # the signature is in the tool-call prompt
            assert json.loads(srow["completion"]) == gold
            assert srow["completion"] == json.dumps(gold, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            name, args = parse_toolcall(trow["completion"])
            assert (name, args) == (gold["name"], gold["arguments"])
            assert trow["completion"].startswith(f'<tool_call name="{gold["name"]}">{{')
    assert not (tmp_path / "toolcall" / "test.answers.jsonl").exists()  # only BFCL has possible answers


def test_no_request_in_two_splits_and_same_seed_same_bytes(tmp_path):
    args = ["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "25", "--val", "6", "--test", "6"]
    assert main([*args, "--out-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--out-dir", str(tmp_path / "b")]) == 0
    assert main([*args, "--seed", "1", "--out-dir", str(tmp_path / "c")]) == 0
    for track in TRACKS:
        prompts = {split: {row["prompt"] for row in read_split(tmp_path / "a", track, split)} for split in SPLITS}
        assert not prompts["train"] & prompts["val"] and not prompts["train"] & prompts["test"]
        assert not prompts["val"] & prompts["test"]
        for split in SPLITS:
            a = (tmp_path / "a" / track / f"{split}.jsonl").read_bytes()
            assert a == (tmp_path / "b" / track / f"{split}.jsonl").read_bytes()
        assert (tmp_path / "a" / track / "test.jsonl").read_bytes() != (tmp_path / "c" / track / "test.jsonl").read_bytes()


def test_test_split_does_not_move_when_train_grows(tmp_path):
    base = ["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--val", "4", "--test", "4"]
    assert main([*base, "--train", "10", "--out-dir", str(tmp_path / "small")]) == 0
    assert main([*base, "--train", "30", "--out-dir", str(tmp_path / "big")]) == 0
    for track in TRACKS:
        assert (tmp_path / "small" / track / "test.jsonl").read_bytes() == (tmp_path / "big" / track / "test.jsonl").read_bytes()


def test_prepare_bfcl_writes_possible_answers_sidecar(tmp_path):
    pytest.importorskip("bfcl_eval", reason="bfcl-eval data package not installed")
    assert main(["prepare", "--source", "bfcl", "--train", "8", "--val", "4", "--test", "4", "--out-dir", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["source"]["categories"] == ["simple_python"]
    for track in TRACKS:
        rows = read_split(tmp_path, track, "test")
        answers = [json.loads(line) for line in (tmp_path / track / "test.answers.jsonl").read_text().splitlines()]
        assert [a["id"] for a in answers] == manifest["ids"]["test"]
        for row, answer in zip(rows, answers):
            (name, _), = answer["possible_answer"].items()
            assert name in row["prompt"]
            assert any(fn["name"] == name for fn in answer["functions"])


def test_prepare_bfcl_multiple_categories(tmp_path):
    pytest.importorskip("bfcl_eval", reason="bfcl-eval data package not installed")
    code = main(["prepare", "--source", "bfcl", "--category", "live_simple", "--category", "multiple",
                 "--train", "4", "--val", "2", "--test", "2", "--out-dir", str(tmp_path)])
    assert code == 0
    ids = json.loads((tmp_path / "dataset.json").read_text())["ids"]
    assert all(i.startswith(("live_simple", "multiple")) for split in ids.values() for i in split)


def test_messages_are_system_then_user_with_the_prompt_verbatim(tmp_path):
    main(["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "2", "--val", "1", "--test", "1",
          "--out-dir", str(tmp_path)])
    row = read_split(tmp_path, "toolcall", "test")[0]
    messages = build_messages(row["prompt"])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == row["prompt"]


# Bad input: one line naming the file and row, exit 2, nothing written.

def write(tmp_path: Path, rows) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(rows if isinstance(rows, str) else json.dumps(rows))
    return path


def good_row(**overrides):
    row = json.loads(FIXTURE.read_text())[0]
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    "content, expected",
    [
        ("not json at all", "not valid JSON"),
        ([{"id": 7, "query": "q", "tools": "[]"}], "row id=7: missing field 'answers'"),
        ([good_row(id=9, answers="[{oops")], "row id=9: 'answers' is not valid JSON"),
        ([good_row(id=11, tools="{{")], "row id=11: 'tools' is not valid JSON"),
        ({"id": 1}, "expected a JSON array"),
    ],
)
def test_bad_xlam_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, content, expected):
    path = write(tmp_path, content)
    out = tmp_path / "out"
    code = main(["prepare", "--source", "xlam", "--dataset-path", str(path), "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and str(path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not any(out.rglob("*.jsonl")) if out.exists() else True


def test_missing_file_and_too_few_rows(tmp_path, capsys):
    assert main(["prepare", "--source", "xlam", "--dataset-path", str(tmp_path / "nope.json"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "nope.json: no such xLAM dataset file" in capsys.readouterr().err
    assert main(["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "usable rows" in err and "asks for 48" in err
    assert not (tmp_path / "o" / "structured").exists()


def test_failed_prepare_leaves_the_previous_dataset_intact(tmp_path):
    ok = ["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "5", "--val", "2", "--test", "2",
          "--out-dir", str(tmp_path)]
    assert main(ok) == 0
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")}
    assert main([*ok[:4], str(write(tmp_path, "[")), *ok[5:]]) == 2
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl")} == before


@pytest.mark.parametrize("argv", [["prepare", "--source", "hf"], ["compare", "--track", "vision", "--azure", "a", "--slm", "b"]])
def test_unknown_source_or_track_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_unknown_bfcl_category(tmp_path, capsys):
    assert main(["prepare", "--source", "bfcl", "--category", "simple_cobol", "--out-dir", str(tmp_path)]) == 2
    assert "unknown BFCL category 'simple_cobol'" in capsys.readouterr().err
