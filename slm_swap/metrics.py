"""The seed's metrics as pure functions, plus BFCL-style argument matching and bootstrap intervals.

A model's output is stripped of surrounding whitespace and nothing else: no code-fence removal,
no JSON repair. An output of `None` is a request that failed; it fails every metric.

Structured track:  json_valid (parses as JSON), exact_match (canonical JSON equals the gold).
Tool-call track:   valid_call (exactly one `<tool_call name="...">{json object}</tool_call>` and
                   nothing else), name_match, args_exact (canonical arguments equal the gold).
Both, where BFCL possible answers exist: args_ast_match (any acceptable alternative, optional
parameters omitted, int for float), reported beside the core metrics, never used by the decision.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from slm_swap.bfcl_match import args_ast_match
from slm_swap.fileio import canonical_json
from slm_swap.prompts import check_track

CORE_METRICS = {
    "structured": ("json_valid_rate", "exact_match_rate"),
    "toolcall": ("valid_call_rate", "name_match_rate", "args_exact_rate"),
}
AST_METRIC = "args_ast_match_rate"

# The whole (stripped) output must be one wrapper; the name attribute uses double quotes.
_TOOL_CALL = re.compile(r'<tool_call name="([^"<>]*)">(.*)</tool_call>', re.DOTALL)
_NOT_PARSED = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return _NOT_PARSED


def parse_structured(output: str | None) -> Any:
    """The parsed JSON value, or `_NOT_PARSED`."""
    return _NOT_PARSED if output is None else _loads(output.strip())


def parse_toolcall(output: str | None) -> tuple[str, dict[str, Any]] | None:
    """(name, arguments) when the output is exactly one wrapper around a JSON object, else None."""
    if output is None:
        return None
    match = _TOOL_CALL.fullmatch(output.strip())
    if not match:
        return None
    arguments = _loads(match.group(2))
    if not isinstance(arguments, dict):
        return None
    return match.group(1), arguments


def _gold_structured(completion: str) -> dict[str, Any]:
    return json.loads(completion)


def gold_problem(track: str, completion: str) -> str | None:
    """Why a dataset row's gold completion cannot be scored on `track`, or None when it can."""
    if check_track(track) == "structured":
        return None if parse_structured(completion) is not _NOT_PARSED else "the structured completion is not JSON"
    if parse_toolcall(completion) is None:
        return 'the tool-call completion is not exactly one <tool_call name="...">{json object}</tool_call>'
    return None


def score_example(
    track: str,
    output: str | None,
    gold_completion: str,
    possible_answer: dict[str, Any] | None = None,
    functions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One example's record: what was parsed and pass/fail per metric (keys without `_rate`)."""
    check_track(track)
    if track == "structured":
        value = parse_structured(output)
        gold = _gold_structured(gold_completion)
        valid = value is not _NOT_PARSED
        record: dict[str, Any] = {
            "parsed": value if valid else None,
            "json_valid": valid,
            "exact_match": valid and canonical_json(value) == canonical_json(gold),
        }
        call = (value.get("name"), value.get("arguments")) if valid and isinstance(value, dict) else None
    else:
        call = parse_toolcall(output)
        gold_call = parse_toolcall(gold_completion)
        assert gold_call is not None, f"gold completion is not a tool call: {gold_completion!r}"
        record = {
            "parsed": {"name": call[0], "arguments": call[1]} if call else None,
            "valid_call": call is not None,
            "name_match": call is not None and call[0] == gold_call[0],
            "args_exact": call is not None and canonical_json(call[1]) == canonical_json(gold_call[1]),
        }
    if possible_answer is not None:
        record["args_ast_match"] = bool(
            call is not None
            and isinstance(call[0], str)
            and args_ast_match(call[0], call[1], possible_answer, functions or [])
        )
    return record


def metric_keys(records: list[dict[str, Any]], track: str) -> list[str]:
    """Per-example keys present in every record: the core ones, then args_ast_match if scored."""
    keys = [name.removesuffix("_rate") for name in CORE_METRICS[track]]
    if records and all("args_ast_match" in record for record in records):
        keys.append("args_ast_match")
    return keys


def bootstrap_interval(passes: list[bool], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of a pass rate (fixed seed: same data, same interval)."""
    n = len(passes)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    values = [1 if p else 0 for p in passes]
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return (means[int(0.025 * (resamples - 1))], means[int(round(0.975 * (resamples - 1)))])


def summarize(records: list[dict[str, Any]], track: str) -> dict[str, Any]:
    """Rates (`<key>_rate`) and their 95% intervals (`ci95`) over per-example records."""
    summary: dict[str, Any] = {}
    intervals: dict[str, list[float]] = {}
    for key in metric_keys(records, track):
        passes = [bool(record[key]) for record in records]
        name = f"{key}_rate"
        summary[name] = sum(passes) / len(passes) if passes else 0.0
        intervals[name] = list(bootstrap_interval(passes))
    summary["ci95"] = intervals
    return summary
