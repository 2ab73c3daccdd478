"""`slm-swap compare`: the table, the decision rule and its exit codes, refused inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import error_lines
from slm_swap.cli import main
from slm_swap.compare import mcnemar_exact
from slm_swap.data.examples import structured_completion, toolcall_completion
from slm_swap.fileio import jsonl_text, write_json
from slm_swap.metrics import score_example
from slm_swap.results import metrics_document

GOLD = {"structured": structured_completion("f", {"x": 1}), "toolcall": toolcall_completion("f", {"x": 1})}
DATASET = {"path": "toolcall/test.jsonl", "sha256": "ab" * 32}


def eval_file(tmp_path: Path, name: str, track: str, outputs: list[str], dataset=DATASET, split="test") -> Path:
    records = [
        {"index": i, "output": out, **score_example(track, out, GOLD[track])} for i, out in enumerate(outputs)
    ]
    path = tmp_path / f"{name}.json"
    (tmp_path / f"{name}.records.jsonl").write_text(jsonl_text(records))
    write_json(path, metrics_document(track=track, split=split, dataset=dataset, model={"kind": name},
                                      records=records, records_path=f"{name}.records.jsonl"))
    return path


def run(track, azure, slm, delta="0.01"):
    return main(["compare", "--track", track, "--azure", str(azure), "--slm", str(slm), "--delta", delta])


def test_slm_trailing_prints_fine_tune_1_and_exits_10(tmp_path, capsys):
    good, bad = GOLD["toolcall"], "no call"
    azure = eval_file(tmp_path, "azure", "toolcall", [good] * 10)
    slm = eval_file(tmp_path, "slm", "toolcall", [good] * 8 + [bad] * 2)
    assert run("toolcall", azure, slm) == 10
    out = capsys.readouterr().out
    assert out.strip().endswith("FINE_TUNE=1")
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.endswith(("trails", "ok"))}
    assert table["valid_call_rate"][1:4] == ["1.000", "0.800", "+0.200"]
    assert table["valid_call_rate"][4] == "0.500"  # McNemar exact: 2 discordant pairs, both one way


def test_equal_or_better_slm_prints_fine_tune_0_and_exits_0(tmp_path, capsys):
    good = GOLD["structured"]
    azure = eval_file(tmp_path, "azure", "structured", [good] * 9 + ["x"])
    slm = eval_file(tmp_path, "slm", "structured", [good] * 10)
    assert run("structured", azure, slm) == 0
    assert capsys.readouterr().out.strip().endswith("FINE_TUNE=0")


def test_gap_within_delta_is_tolerated_and_beyond_it_is_not(tmp_path, capsys):
    good = GOLD["structured"]
    azure = eval_file(tmp_path, "azure", "structured", [good] * 10)
    slm = eval_file(tmp_path, "slm", "structured", [good] * 9 + ["{}"])  # exact 0.9, valid 1.0
    assert run("structured", azure, slm, delta="0.1") == 0
    assert run("structured", azure, slm, delta="0.05") == 10
    assert run("structured", azure, slm, delta="0") == 10


@pytest.mark.parametrize("delta", ["-0.1", "nan", "inf"])
def test_bad_delta_exits_2(tmp_path, capsys, delta):
    path = eval_file(tmp_path, "azure", "toolcall", [GOLD["toolcall"]])
    assert run("toolcall", path, path, delta=delta) == 2
    assert "--delta" in capsys.readouterr().err


def test_refuses_mismatched_inputs(tmp_path, capsys):
    good = GOLD["toolcall"]
    azure = eval_file(tmp_path, "azure", "toolcall", [good] * 4)
    cases = {
        "other track": (eval_file(tmp_path, "s", "structured", [GOLD["structured"]] * 4), "not 'toolcall'"),
        "other size": (eval_file(tmp_path, "small", "toolcall", [good] * 3), "different sizes"),
        "other split": (eval_file(tmp_path, "val", "toolcall", [good] * 4, split="val"), "different splits"),
        "other dataset": (eval_file(tmp_path, "d", "toolcall", [good] * 4, dataset={"path": "x", "sha256": "cd" * 32}), "different datasets"),
    }
    for label, (other, message) in cases.items():
        assert run("toolcall", azure, other) == 2, label
        err = capsys.readouterr().err
        errors = error_lines(err)
        assert len(errors) == 1 and message in errors[0], label


def test_missing_or_malformed_metrics_file(tmp_path, capsys):
    azure = eval_file(tmp_path, "azure", "toolcall", [GOLD["toolcall"]])
    assert run("toolcall", azure, tmp_path / "nope.json") == 2
    assert "nope.json: no such metrics file" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert run("toolcall", azure, broken) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"track": "toolcall", "n": 1, "dataset": {}}))
    assert run("toolcall", azure, partial) == 2
    assert "missing 'valid_call_rate'" in capsys.readouterr().err


def test_mcnemar_exact_values():
    assert mcnemar_exact([True] * 5, [True] * 5) == 1.0
    assert mcnemar_exact([True] * 6, [False] * 6) == pytest.approx(2 / 64)
    # 1 vs 3 discordant: p = 2 * (1 + 4) / 16
    assert mcnemar_exact([True, False, False, False], [False, True, True, True]) == pytest.approx(10 / 16)
