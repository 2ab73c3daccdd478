"""`slm-swap compare`: the table, the decision rule and its exit codes, refused inputs."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.core.compare import MetricRow, mcnemar_exact, parse_delta
from slm_swap.core.results import metrics_document
from slm_swap.core.tracks import get_track
from slm_swap.data.examples import structured_completion, toolcall_completion
from slm_swap.infra.fileio import jsonl_text, write_json

GOLD = {"structured": structured_completion("f", {"x": 1}), "toolcall": toolcall_completion("f", {"x": 1})}
DATASET = {"path": "toolcall/test.jsonl", "sha256": "ab" * 32}


def eval_file(tmp_path: Path, name: str, track: str, outputs: list[str], dataset=DATASET, split="test") -> Path:
    records = [
        {"index": i, "output": out, **get_track(track).score({"output": out, "completion": GOLD[track]})}
        for i, out in enumerate(outputs)
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


# At each size, delta is exactly k examples' worth: a gap of k examples is a tie (not trailing), k+1 trails.
# Hosted pass counts sweep values where float subtraction lands just above delta (30/100 - 29/100).
EXACT_CASES = [(100, "0.01", 1), (100, "0.03", 3), (50, "0.02", 1), (50, "0.06", 3), (25, "0.04", 1), (25, "0.12", 3),
               (8, "0.125", 1), (8, "0.25", 2)]


@pytest.mark.parametrize("n,delta,k", EXACT_CASES)
def test_decision_is_exact_at_a_gap_equal_to_just_above_and_just_below_delta(n, delta, k):
    for hosted in range(k + 1, n + 1):
        for gap, trails in ((k - 1, False), (k, False), (k + 1, True)):
            if hosted - gap < 0:
                continue
            row = MetricRow("valid_call_rate", True, hosted, hosted - gap, n, None)
            assert row.trails(parse_delta(delta)) is trails, (n, delta, hosted, gap)


@pytest.mark.parametrize("n,delta,k", EXACT_CASES)
def test_compare_command_ties_print_fine_tune_0_with_ok_verdicts(tmp_path, capsys, n, delta, k):
    good, bad = GOLD["toolcall"], "no call"
    hosted = (30 * n) // 100 + k  # 30 vs 29 of 100 is the float trap the exact rule avoids
    azure = eval_file(tmp_path, "azure", "toolcall", [good] * hosted + [bad] * (n - hosted))
    for gap, code, verdict in ((k, 0, "ok"), (k + 1, 10, "SLM trails"), (k - 1, 0, "ok")):
        slm = eval_file(tmp_path, f"slm{gap}", "toolcall", [good] * (hosted - gap) + [bad] * (n - hosted + gap))
        assert run("toolcall", azure, slm, delta=delta) == code, (n, delta, gap)
        out = capsys.readouterr().out
        assert f"FINE_TUNE={int(code == 10)}" in out
        table = {line.split()[0]: line for line in out.splitlines() if line.startswith("valid_call_rate")}
        assert table["valid_call_rate"].endswith(verdict), table
        assert f"n={n} delta={delta.rstrip('0')}" in out


def test_a_float_delta_counts_as_its_shortest_decimal():
    assert parse_delta(0.01) == Fraction(1, 100) and parse_delta("0.01") == Fraction(1, 100)
    assert parse_delta("1e-2") == Fraction(1, 100) and parse_delta(0) == 0
    row = MetricRow("json_valid_rate", True, 30, 29, 100, None)
    assert not row.trails(parse_delta(0.01))  # 0.30 - 0.29 > 0.01 in floats; not in fact


@pytest.mark.parametrize("change,message", [
    ({"valid_call_rate": "high"}, "'valid_call_rate' must be a rate between 0 and 1, got 'high'"),
    ({"valid_call_rate": None}, "'valid_call_rate' must be a rate between 0 and 1, got None"),
    ({"valid_call_rate": 1.5}, "must be a rate between 0 and 1"),
    ({"valid_call_rate": 0.3}, "valid_call_rate=0.3 is not a whole number of passes out of n=4"),
    ({"dataset": None}, "'dataset' must be an object with the dataset's 'sha256', got None"),
    ({"n": "4"}, "'n' must be a whole number >= 1, got '4'"),
    ({"n": 0}, "'n' must be a whole number >= 1, got 0"),
])
def test_malformed_metrics_values_are_one_line_errors(tmp_path, capsys, change, message):
    good = GOLD["toolcall"]
    azure = eval_file(tmp_path, "azure", "toolcall", [good] * 4)
    slm = eval_file(tmp_path, "slm", "toolcall", [good] * 4)
    document = json.loads(slm.read_text())
    document.update(change)
    slm.write_text(json.dumps(document))
    assert run("toolcall", azure, slm) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and str(slm) in errors[0] and message in errors[0], errors


def test_records_without_index_are_one_line_errors(tmp_path, capsys):
    good = GOLD["toolcall"]
    azure = eval_file(tmp_path, "azure", "toolcall", [good] * 4)
    slm = eval_file(tmp_path, "slm", "toolcall", [good] * 4)
    records = tmp_path / "slm.records.jsonl"
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    del rows[2]["index"]
    records.write_text(jsonl_text(rows))
    assert run("toolcall", azure, slm) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"{records}: record 3 has no whole-number 'index'" in errors[0], errors


def test_mcnemar_exact_values():
    assert mcnemar_exact([True] * 5, [True] * 5) == 1.0
    assert mcnemar_exact([True] * 6, [False] * 6) == pytest.approx(2 / 64)
    # 1 vs 3 discordant: p = 2 * (1 + 4) / 16
    assert mcnemar_exact([True, False, False, False], [False, True, True, True]) == pytest.approx(10 / 16)
