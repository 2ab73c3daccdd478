"""Tracks as data: every module looks a track up and scores a record the same way; the agent track scores a
trajectory as the filter judges it."""

from __future__ import annotations

import inspect

import pytest

from slm_swap.core.tracks import AST_METRIC, ROW_TRACKS, TRACKS, get_row_track, get_track
from slm_swap.infra.errors import SlmSwapError

GOLD = {"name": "math.hypot", "arguments": {"x": 3, "y": 4}}
POSSIBLE = {"math.hypot": {"x": [3], "y": [4], "z": ["", 0]}}
TOOLS = [{"name": "math.hypot", "description": "hypotenuse",
          "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"},
                                                         "z": {"type": "integer"}}, "required": ["x", "y"]}}]


def trajectory(calls, *, finished=True, errors=(None, None), possible=True, failed=None):
    """A trajectory record as capture writes it: two model turns, the calls made."""
    steps = [{"step": n + 1, "model_output": f"Thought: {n}\n<code>\n...\n</code>", "error": error,
              "is_final_answer": finished and n == len(errors) - 1} for n, error in enumerate(errors)]
    return {"request_id": "r1", "task": "hypot of 3 and 4", "tools": TOOLS,
            "gold": {**GOLD, "possible_answer": POSSIBLE if possible else None}, "steps": steps, "messages": [],
            "finished": finished, "tool_calls": calls, "teacher": "t", "max_steps": 4, "error": failed}


def answered(track, output):
    """A v0 record as the row eval holds it: the row, its line of answers.jsonl, the model's output."""
    return {"prompt": "hypot of 3 and 4", "completion": TRACKS[track].completion(GOLD["name"], GOLD["arguments"]),
            "possible_answer": POSSIBLE, "functions": TOOLS, "output": output}


def test_every_track_is_one_object_looked_up_by_name():
    assert list(TRACKS) == ["structured", "toolcall", "agent"] and list(ROW_TRACKS) == ["structured", "toolcall"]
    assert get_track("toolcall").core_metrics == ("valid_call_rate", "name_match_rate", "args_exact_rate")
    assert get_track("structured").core_metrics == ("json_valid_rate", "exact_match_rate")
    assert get_track("agent").core_metrics == ("task_success_rate", "valid_code_rate")
    with pytest.raises(SlmSwapError, match="unknown track 'chat': expected one of structured, toolcall, agent"):
        get_track("chat")
    with pytest.raises(SlmSwapError, match="track 'agent' has no prompt/completion rows"):
        get_row_track("agent")
    # Callers ask a track what they need to know, never which kind it is.
    assert [name for name, track in TRACKS.items() if track.runs_as_agent] == ["agent"]
    assert [name for name, track in TRACKS.items() if track.trains_on_conversations] == ["agent"]
    assert not any(hasattr(track, "rows") for track in TRACKS.values())


def test_every_track_scores_one_record_with_one_signature():
    right = {"structured": answered("structured", TRACKS["structured"].completion(GOLD["name"], GOLD["arguments"])),
             "toolcall": answered("toolcall", f" {TRACKS['toolcall'].completion(GOLD['name'], GOLD['arguments'])}\n"),
             "agent": trajectory([GOLD])}
    failed = {"structured": answered("structured", None), "toolcall": answered("toolcall", None),
              "agent": trajectory([], finished=False, errors=(), failed="429")}
    keys = {"structured": ["json_valid", "exact_match", "args_ast_match"],
            "toolcall": ["valid_call", "name_match", "args_exact", "args_ast_match"],
            "agent": ["task_success", "valid_code", "valid_call", "name_match", "args_exact", "args_ast_match"]}
    for name, track in TRACKS.items():
        assert list(inspect.signature(track.score).parameters) == ["record"], name
        passed, refused = track.score(right[name]), track.score(failed[name])
        assert track.metric_keys([passed, refused]) == keys[name]
        assert all(passed[key] is True for key in keys[name]) and all(refused[key] is False for key in keys[name]), name
        with pytest.raises(TypeError):  # the v0 tracks' old signature: score(output, gold_completion, ...)
            track.score(right[name].get("output"), right[name].get("completion"))


def test_row_tracks_write_and_read_their_own_completion_format():
    structured, toolcall = TRACKS["structured"], TRACKS["toolcall"]
    assert structured.completion("f", {"b": 1, "a": 2}) == '{"arguments":{"a":2,"b":1},"name":"f"}'
    assert toolcall.completion("f", {"b": 1}) == '<tool_call name="f">{"b":1}</tool_call>'
    assert structured.is_own_completion(structured.completion("f", {})) and not structured.is_own_completion("[1]")
    assert toolcall.is_own_completion(toolcall.completion("f", {})) and not toolcall.is_own_completion('{"name": "f"}')
    assert toolcall.gold_problem("plain text").startswith("the tool-call completion is not exactly one")
    assert structured.gold_problem("{") == "the structured completion is not JSON"


def test_metric_names_show_an_info_metric_only_where_every_file_has_it():
    toolcall = get_track("toolcall")
    assert toolcall.metric_names({AST_METRIC: 1}, {AST_METRIC: 0}) == [*toolcall.core_metrics, AST_METRIC]
    assert toolcall.metric_names({AST_METRIC: 1}, {}) == list(toolcall.core_metrics)


def test_the_agent_track_scores_a_trajectory_as_the_filter_judges_it():
    agent = get_track("agent")
    right = agent.score(trajectory([{"name": "math.hypot", "arguments": {"x": 3, "y": 4}}]))
    assert right == {"task_success": True, "reason": None, "valid_code": True, "turns": 2, "valid_call": True,
                     "name_match": True, "args_exact": True, "args_ast_match": True}
    # BFCL's AST match accepts an optional argument at its default; exact JSON equality does not.
    optional = agent.score(trajectory([{"name": "math.hypot", "arguments": {"x": 3, "y": 4, "z": 0}}]))
    assert optional["task_success"] and optional["args_ast_match"] and not optional["args_exact"]
    wrong = agent.score(trajectory([{"name": "math.hypot", "arguments": {"x": 5, "y": 4}}]))
    assert (wrong["task_success"], wrong["reason"], wrong["name_match"], wrong["args_exact"]) == (False, "wrong_call", True, False)
    # A code error fixed by the next turn: the task succeeds, but not every turn's code was valid.
    fixed = agent.score(trajectory([{"name": "math.hypot", "arguments": {"x": 3, "y": 4}}], errors=("SyntaxError", None)))
    assert fixed["task_success"] and not fixed["valid_code"]
    nothing = agent.score(trajectory([], finished=False))
    assert (nothing["task_success"], nothing["reason"], nothing["valid_call"], nothing["name_match"]) == (
        False, "no_final_answer", False, False)
    failed = agent.score(trajectory([], finished=False, errors=(), failed="429"))
    assert failed["reason"] == "request_failed" and not failed["valid_code"] and failed["turns"] == 0
    # Without BFCL answers (xLAM tasks) there is no AST metric, and the gold call is compared exactly.
    xlam = agent.score(trajectory([{"name": "math.hypot", "arguments": {"x": 3, "y": 4}}], possible=False))
    assert "args_ast_match" not in xlam and xlam["task_success"]
    assert agent.metric_keys([right, xlam]) == ["task_success", "valid_code", "valid_call", "name_match", "args_exact"]
    assert agent.metric_keys([right]) == ["task_success", "valid_code", "valid_call", "name_match", "args_exact",
                                          "args_ast_match"]
