"""The seed's metrics: whitespace, key order, nesting, unicode, wrapper variants, invalid JSON."""

from __future__ import annotations

import pytest

from slm_swap.core.metrics import bootstrap_interval, summarize
from slm_swap.core.tracks import get_track
from slm_swap.data.examples import structured_completion, toolcall_completion

ARGS = {"city": "Zürich", "filters": {"tags": ["café", "bar"], "open": True}, "limit": 3}
GOLD_S = structured_completion("find_places", ARGS)
GOLD_T = toolcall_completion("find_places", ARGS)


def s(output):
    return get_track("structured").score({"output": output, "completion": GOLD_S})


def t(output):
    return get_track("toolcall").score({"output": output, "completion": GOLD_T})


def test_structured_exact_ignores_key_order_whitespace_and_escapes():
    output = '\n  { "arguments": {"limit": 3, "filters": {"open": true, "tags": ["caf\\u00e9", "bar"]}, "city": "Zürich"},\n "name": "find_places" }  \n'
    assert s(output) == {"parsed": {"name": "find_places", "arguments": ARGS}, "json_valid": True, "exact_match": True}


@pytest.mark.parametrize(
    "output, valid, exact",
    [
        ('{"name": "find_places", "arguments": {"city": "Zurich", "filters": {"tags": ["café", "bar"], "open": true}, "limit": 3}}', True, False),
        ('{"name": "find_places", "arguments": {"city": "Zürich", "filters": {"tags": ["bar", "café"], "open": true}, "limit": 3}}', True, False),
        ('{"name": "find_places", "arguments": {"city": "Zürich", "filters": {"tags": ["café", "bar"], "open": true}, "limit": 3.5}}', True, False),
        ('```json\n' + GOLD_S + '\n```', False, False),  # fences are not repaired
        ("Sure! " + GOLD_S, False, False),
        (GOLD_S[:-1], False, False),
        ("[1, 2]", True, False),  # valid JSON, wrong shape
        ("", False, False),
        (None, False, False),  # the request failed
    ],
)
def test_structured_cases(output, valid, exact):
    record = s(output)
    assert (record["json_valid"], record["exact_match"]) == (valid, exact)


def test_toolcall_exact_with_inner_whitespace_and_key_order():
    output = ' <tool_call name="find_places">\n{"limit": 3, "city": "Zürich", "filters": {"open": true, "tags": ["café", "bar"]}}\n</tool_call>\n'
    assert t(output) == {
        "parsed": {"name": "find_places", "arguments": ARGS},
        "valid_call": True,
        "name_match": True,
        "args_exact": True,
    }


@pytest.mark.parametrize(
    "output, valid, name, args",
    [
        ('<tool_call name="find_place">' + GOLD_T.split('">', 1)[1], True, False, True),
        ('<tool_call name="find_places">{"city": "Zürich"}</tool_call>', True, True, False),
        ("<tool_call name='find_places'>{}</tool_call>", False, False, False),  # single quotes
        ('<tool_call name="find_places">[1]</tool_call>', False, False, False),  # args must be an object
        ('<tool_call name="find_places">{"city": }</tool_call>', False, False, False),
        ('<tool_call>{"name": "find_places"}</tool_call>', False, False, False),  # no name attribute
        ("I will call it: " + GOLD_T, False, False, False),  # prose around the wrapper
        (GOLD_T + GOLD_T, False, False, False),  # two calls
        ('<tool_call name="find_places">{}', False, False, False),  # unclosed
        ('{"name": "find_places", "arguments": {}}', False, False, False),  # structured, not a call
        (None, False, False, False),
    ],
)
def test_toolcall_cases(output, valid, name, args):
    record = t(output)
    assert (record["valid_call"], record["name_match"], record["args_exact"]) == (valid, name, args)


def test_ast_match_is_scored_only_with_possible_answers():
    answer = {"find_places": {"city": ["Zürich", "Zurich"], "filters": [{"tags": [["café", "bar"]], "open": [True]}], "limit": [3, ""]}}
    functions = [{"name": "find_places", "description": "", "parameters": {"type": "dict", "required": ["city"], "properties": {
        "city": {"type": "string"}, "filters": {"type": "dict", "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "open": {"type": "boolean"}}},
        "limit": {"type": "integer"}}}}]
    output = '<tool_call name="find_places">{"city": "Zurich", "filters": {"tags": ["café", "bar"], "open": true}}</tool_call>'
    # The record as the row eval holds it: the row, its line of answers.jsonl, the model's output.
    row = {"prompt": "find a café in Zurich", "completion": GOLD_T}
    record = get_track("toolcall").score({**row, "possible_answer": answer, "functions": functions, "output": output})
    assert record == {"parsed": {"name": "find_places", "arguments": {"city": "Zurich", "filters": {"tags": ["café", "bar"], "open": True}}},
                      "valid_call": True, "name_match": True, "args_exact": False, "args_ast_match": True}
    assert "args_ast_match" not in t(output)
    assert "args_ast_match" not in get_track("toolcall").score({**row, "possible_answer": None, "output": output})


def test_summarize_rates_and_intervals():
    records = [t(GOLD_T)] * 3 + [t("nope")]
    summary = summarize(records, "toolcall")
    assert summary["valid_call_rate"] == summary["name_match_rate"] == summary["args_exact_rate"] == 0.75
    low, high = summary["ci95"]["valid_call_rate"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    assert "args_ast_match_rate" not in summary


def test_bootstrap_interval_is_deterministic_and_degenerate_at_the_extremes():
    passes = [True] * 30 + [False] * 10
    assert bootstrap_interval(passes) == bootstrap_interval(passes)
    low, high = bootstrap_interval(passes)
    assert 0.55 < low < 0.75 < high < 0.9
    assert bootstrap_interval([True] * 8) == (1.0, 1.0)
    assert bootstrap_interval([]) == (0.0, 0.0)
