"""The gateway's confidence gate: the threshold `slm-swap gateway calibrate` chooses, the policy file it
writes and the gateway reads, and the command end to end (the tiny model as the SLM, the scripted
teacher as the hosted model whose accuracy sets the default target)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest

from slm_swap.app.cli import main
from slm_swap.core.prompts import build_prompt
from slm_swap.core.tracks import get_row_track
from slm_swap.data.bfcl import load_bfcl
from slm_swap.evaluation.calibrate import (Point, confidence, evidence_needed, example_point, fewest_to_show, load_policy,
                                           openai_confidence, parse_target, pick_threshold, policy_document,
                                           prompt_functions, reaches)
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import write_json
from slm_swap.trajectories.teacher import ScriptedTeacher
from conftest import error_lines


def points(*triples: tuple[bool, float, bool]) -> list[Point]:
    return [Point(valid, conf, correct) for valid, conf, correct in triples]


# -- the threshold ----------------------------------------------------------------------------------


def test_the_lowest_threshold_that_reaches_the_target_wins_even_past_one_that_does_not():
    # From the top: 5 right, then 3 wrong, then 12 right, then 10 wrong (and an invalid answer, never accepted).
    sample = points(*[(True, -0.1 - i / 100, True) for i in range(5)], *[(True, -0.2 - i / 100, False) for i in range(3)],
                    *[(True, -0.3 - i / 100, True) for i in range(12)], *[(True, -0.5 - i / 100, False) for i in range(10)],
                    (False, -0.01, True))
    choice = pick_threshold(sample, Fraction(1, 2))
    # 5/5 reaches 1/2 (a fair coin does that 1 time in 32); 5/8 does not; 17/24 still does (p = 0.032); 17/25 not
    assert (choice.threshold, choice.accepted, choice.correct) == (-0.53, 24, 17)
    assert (choice.n, choice.valid, choice.coverage) == (31, 30, Fraction(24, 31))
    reaching = [c.accepted for c in choice.curve if reaches(c.correct, c.accepted, Fraction(1, 2))]
    assert reaching[:1] == [5] and 8 not in reaching and max(reaching) == 24


def test_answers_of_equal_confidence_are_accepted_together_or_not_at_all():
    sample = points(*[(True, -0.1 - i / 10, True) for i in range(5)], (True, -0.6, True), (True, -0.6, False))
    choice = pick_threshold(sample, Fraction(1, 2))
    assert (choice.threshold, choice.accepted) == (-0.5, 5)  # -0.6 would take the wrong one with the right one: 6/7
    assert [c.accepted for c in choice.curve] == [1, 2, 3, 4, 5, 7]


def test_nothing_reaching_the_target_means_no_threshold_and_coverage_zero():
    sample = points((True, -0.1, False), (True, -0.2, True), (False, -0.3, True))
    choice = pick_threshold(sample, Fraction(9, 10))
    assert (choice.threshold, choice.accepted, choice.correct, choice.coverage) == (None, 0, 0, 0)
    assert len(choice.curve) == 2  # the curve is still drawn
    assert pick_threshold([], Fraction(1, 2)).threshold is None


def test_when_every_valid_answer_reaches_the_target_all_of_them_are_accepted():
    sample = points(*[(True, -0.5 * (i + 1), True) for i in range(6)], (False, -0.1, False), (True, -math.inf, True))
    choice = pick_threshold(sample, Fraction(1, 2))
    # the lowest finite confidence; an answer of no tokens (-inf) is below every threshold
    assert (choice.threshold, choice.accepted, choice.correct) == (-3.0, 6, 6)


def test_a_threshold_needs_enough_evidence_decided_exactly_on_counts():
    """The one-sided exact binomial test at 95%: one right answer proves nothing; the evidence needed
    grows with the target, and a target of 1 is never shown by any finite count."""
    assert reaches(5, 5, Fraction(1, 2)) and not reaches(4, 4, Fraction(1, 2))  # 1/32 <= 1/20 < 1/16
    assert reaches(23, 23, Fraction(7, 8)) and not reaches(22, 22, Fraction(7, 8))  # (7/8)^23 = 0.046, ^22 = 0.053
    assert not reaches(1, 1, Fraction(99, 100)) and not reaches(298, 298, Fraction(99, 100))
    assert reaches(299, 299, Fraction(99, 100)) and not reaches(1000, 1000, Fraction(1))
    assert reaches(1, 1, Fraction(1, 20))  # the tail is exactly alpha: at most alpha reaches
    assert not reaches(0, 0, Fraction(0)) and reaches(0, 3, Fraction(0))
    assert pick_threshold(points((True, -0.1, True)), Fraction(99, 100)).threshold is None  # the flywheel's case
    assert parse_target("0.15") == Fraction(3, 20)  # a typed decimal is exact, not 0.1499999...
    # what a calibration split must hold at the least, as the commands and the flywheel report say it
    assert [fewest_to_show(t) for t in (Fraction(1, 2), Fraction(7, 8), Fraction(19, 20), Fraction(99, 100))] == [5, 23, 59, 299]
    assert fewest_to_show(Fraction(1)) is None and fewest_to_show(Fraction(1, 20)) == 1
    assert evidence_needed(Fraction(99, 100)) == "showing it takes at least 299 accepted answers, all right"


def test_a_nan_confidence_is_a_bug_not_a_point():
    with pytest.raises(ValueError, match="NaN"):
        pick_threshold(points((True, math.nan, True)), Fraction(1, 2))


@pytest.mark.parametrize("text", ["1.5", "-0.1", "abc", "nan", "inf", ""])
def test_a_target_outside_0_to_1_is_one_line_naming_the_option(text):
    with pytest.raises(SlmSwapError, match="^--target must be"):
        parse_target(text)


def test_confidence_is_the_weakest_token_and_reads_openai_logprobs():
    assert confidence([-0.01, -1.5, -0.2]) == -1.5
    assert confidence([]) == -math.inf
    content = [{"token": "a", "logprob": -0.25, "bytes": [97], "top_logprobs": []},
               {"token": "b", "logprob": -0.5, "bytes": [98], "top_logprobs": []}]
    assert openai_confidence(content) == -0.5
    assert openai_confidence(None) == openai_confidence([]) == -math.inf  # no logprobs: nothing to trust
    assert openai_confidence([{"token": "a", "logprob": None}]) == -math.inf


# -- one answer's verdict and correctness ----------------------------------------------------------


def test_each_answer_is_judged_by_the_gateways_validators_and_the_tracks_scoring():
    example = next(e for e in load_bfcl(("simple_python",))[0] if e.name == "calculate_triangle_area")
    track = get_row_track("toolcall")
    row = {"prompt": "p", "completion": track.completion(example.name, example.arguments),
           "possible_answer": example.possible_answer, "functions": example.functions}

    def judged(output):
        point = example_point("toolcall", {**row, "output": output}, example.functions, [-0.5, -0.25])
        return point.valid, point.correct

    assert judged(row["completion"]) == (True, True)
    assert judged(track.completion(example.name, {**example.arguments, "base": 999})) == (True, False)  # valid, wrong
    assert judged(track.completion(example.name, {**example.arguments, "base": "ten"})) == (False, False)  # schema
    assert judged(track.completion("other_function", example.arguments)) == (False, False)  # unknown name
    assert judged("Sure! Here is the call.") == (False, False)
    assert judged(None) == (False, False)  # the request failed
    assert example_point("toolcall", {**row, "output": row["completion"]}, example.functions, [-0.5, -0.25]).confidence == -0.5


# -- functions read back from a prompt --------------------------------------------------------------


@pytest.mark.parametrize("track", ["structured", "toolcall"])
def test_a_rows_functions_are_read_back_from_its_prompt(track):
    example = load_bfcl(("simple_python",))[0][0]
    prompt = build_prompt(track, "Functions:\n{not: json}\n\nRequest:\nodd text", example.functions)
    assert prompt_functions(track, prompt) == example.functions
    with pytest.raises(SlmSwapError, match="not the track's template"):
        prompt_functions(track, "free text")


# -- the policy file ----------------------------------------------------------------------------------


def written_policy(tmp_path, choice, target=Fraction(3, 4)):
    document = policy_document(track="toolcall", split="val", model={"kind": "slm", "identity": "m", "adapter": "a"},
                               dataset={"path": "p", "sha256": "0" * 64}, choice=choice, target=target,
                               target_source={"source": "--target"}, created_at="2026-01-01T00:00:00+00:00")
    path = tmp_path / "policy_toolcall.json"
    write_json(path, document)
    return path


def test_the_policy_round_trips_and_decides_as_the_threshold_says(tmp_path):
    right = [(True, c, True) for c in (-0.1, -0.15, -0.2, -0.25, -0.3)]
    choice = pick_threshold(points(*right, (True, -0.9, False)), Fraction(1, 2))
    policy = load_policy(written_policy(tmp_path, choice, Fraction(1, 2)))
    assert (policy.track, policy.threshold, policy.target, policy.split) == ("toolcall", -0.3, Fraction(1, 2), "val")
    assert (policy.model_identity, policy.adapter) == ("m", "a")
    assert policy.accepts(True, -0.3) and not policy.accepts(True, -0.31) and not policy.accepts(False, 0.0)
    document = json.loads(policy.path.read_text())
    assert document["operating_point"]["accepted"] == 5 and document["target"]["accuracy"] == "1/2"
    assert document["test"] == {"kind": "one-sided exact binomial", "alpha": "1/20"}


def test_a_policy_whose_target_nothing_reached_accepts_nothing(tmp_path):
    choice = pick_threshold(points((True, -0.1, False)), Fraction(1))
    policy = load_policy(written_policy(tmp_path, choice))
    assert policy.threshold is None and not policy.accepts(True, 0.0)


@pytest.mark.parametrize("damage, says", [
    (lambda text: text[: len(text) // 2], "policy_toolcall.json: "),
    (lambda text: "[]", "not a gateway policy file"),
    (lambda text: text.replace('"threshold": -0.1', '"threshold": "high"'), "'threshold' must be a number"),
    (lambda text: text.replace('"track": "toolcall"', '"track": "agent"'), "not a gateway policy file"),
    (lambda text: text.replace('"accuracy": "1"', '"accuracy": "x/0"'), "is not a fraction"),
    (lambda text: text.replace('"version": 1', '"version": 9'), "version 9"),
])
def test_a_damaged_policy_file_is_one_line_naming_it(tmp_path, damage, says):
    choice = pick_threshold(points(*[(True, -0.1, True)] * 5), Fraction(1, 2))  # a threshold: -0.1
    path = written_policy(tmp_path, choice, Fraction(1))
    path.write_text(damage(path.read_text()))
    with pytest.raises(SlmSwapError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert str(path) in message and says in message and "\n" not in message


# -- the command ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bfcl_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("02_dataset")
    assert main(["prepare", "--source", "bfcl", "--train", "2", "--val", "4", "--test", "2", "--out-dir", str(out)]) == 0
    return out


def hosted_eval(monkeypatch, data_dir, eval_dir, script):
    """The scripted teacher, as the hosted model, evaluated on the val split: `script` by row, in order."""
    ids = json.loads((data_dir / "dataset.json").read_text())["ids"]["val"]
    examples = load_bfcl(("simple_python",))[0]
    with ScriptedTeacher(examples, dict(zip(ids, script))) as teacher:
        monkeypatch.setenv("HOSTED_BASE_URL", teacher.url)
        monkeypatch.setenv("HOSTED_MODEL", teacher.model)
        monkeypatch.setenv("HOSTED_API_KEY", "stand-in-key-5120")
        assert main(["eval", "--track", "toolcall", "--model-kind", "azure", "--split", "val", "--data-dir", str(data_dir),
                     "--out", str(eval_dir / "toolcall_azure_val.json")]) == 0


def test_calibrate_writes_a_policy_and_its_chart_with_the_hosted_accuracy_as_target(
        bfcl_data, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    hosted_eval(monkeypatch, bfcl_data, tmp_path, ["correct", "correct", "wrong", "correct"])
    out = tmp_path / "gw" / "policy_toolcall.json"
    capsys.readouterr()
    assert main(["gateway", "calibrate", "--track", "toolcall", "--data-dir", str(bfcl_data), "--eval-dir", str(tmp_path),
                 "--out", str(out), "--limit", "3", "--delta", "0.05"]) == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    # the hosted model's first 3 rows: 2 right (the third is `wrong`), minus 0.05
    assert document["target"]["accuracy"] == str(Fraction(2, 3) - Fraction(1, 20))
    assert (document["target"]["hosted_correct"], document["target"]["hosted_n"]) == (2, 3)
    assert document["split"] == "val" and document["model"]["identity"] == str(tiny_model_dir)
    assert document["operating_point"]["n"] == 3
    # a random tiny model writes no valid call: nothing reaches the target, and the output says so
    assert document["threshold"] is None and document["operating_point"]["accepted"] == 0
    assert "no threshold reaches it with 95% confidence (one-sided exact binomial test): coverage 0/3" in printed
    assert "showing it takes at least" in printed
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n")
    assert load_policy(out).threshold is None
    assert (out.parent / "calibration_toolcall_val.json").is_file()  # the SLM's eval, kept beside it


def test_calibrate_reads_functions_from_prompts_without_answers_and_takes_a_given_target(
        xlam_data_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    out = tmp_path / "policy.json"
    assert main(["gateway", "calibrate", "--track", "structured", "--data-dir", str(xlam_data_dir), "--target", "0",
                 "--out", str(out), "--limit", "2", "--batch-size", "2"]) == 0
    document = json.loads(out.read_text())
    assert document["target"] == {"accuracy": "0", "decimal": 0.0, "source": "--target",
                                  "calibration_metrics": "calibration_structured_val.json"}
    assert document["operating_point"]["n"] == 2 and out.with_suffix(".png").is_file()


def test_calibrate_without_hosted_metrics_asks_for_a_target_in_one_line(bfcl_data, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    assert main(["gateway", "calibrate", "--track", "toolcall", "--data-dir", str(bfcl_data),
                 "--eval-dir", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "toolcall_azure_val.json" in lines[0] and "--target" in lines[0]
    assert not (tmp_path / "p.json").exists()


def test_gateway_still_takes_its_own_options_beside_the_calibrate_action():
    from slm_swap.app.cli import build_parser

    args = build_parser().parse_args(["gateway", "--port", "8101"])
    assert (args.command_name, args.port) == ("gateway", 8101)
    args = build_parser().parse_args(["gateway", "calibrate", "--track", "toolcall"])
    assert (args.command_name, args.track) == ("gateway calibrate", "toolcall")
