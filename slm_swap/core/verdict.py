"""The correctness verdict on one CodeAct trajectory: what `filter` keeps and what agent eval scores.

Checks, all recorded per trajectory (`verdict.checks`):
    finished             the agent called final_answer()
    within_step_limit    it took at most `max_steps` model turns (default: the capture's own limit)
    no_unresolved_error  its last model turn's code ran without error (an error fixed by a later
                         turn is resolved)
    call_matches_gold    it made exactly one distinct tool call and that call is the gold one: BFCL's
                         AST match where the row has BFCL possible answers, else canonical JSON
                         equality of {name, arguments} (xLAM)
The verdict's `reason` is the first of these that fails, most telling first: request_failed (the
teacher never answered), unresolved_code_error, no_final_answer, over_step_limit, no_tool_call,
several_tool_calls, wrong_call. Accepted trajectories have no reason.
"""

from __future__ import annotations

from typing import Any

from slm_swap.core.bfcl_match import args_ast_match
from slm_swap.infra.fileio import canonical_json

REASONS = ("request_failed", "unresolved_code_error", "no_final_answer", "over_step_limit",
           "no_tool_call", "several_tool_calls", "wrong_call")


def call_matches_gold(call: dict[str, Any], record: dict[str, Any]) -> bool:
    gold = record["gold"]
    if gold.get("possible_answer"):
        return args_ast_match(call["name"], call["arguments"], gold["possible_answer"], record["tools"])
    return canonical_json({"name": call["name"], "arguments": call["arguments"]}) == canonical_json(
        {"name": gold["name"], "arguments": gold["arguments"]})


def verdict(record: dict[str, Any], max_steps: int | None = None) -> dict[str, Any]:
    """`{accepted, reason, checks}` for one trajectory record."""
    limit = max_steps if max_steps is not None else record["max_steps"]
    turns = [step for step in record["steps"] if step.get("model_output") is not None]
    calls = {canonical_json(call): call for call in record["tool_calls"]}
    checks = {
        "finished": bool(record["finished"]),
        "within_step_limit": len(turns) <= limit,
        "no_unresolved_error": not (turns and turns[-1].get("error")),
        "call_matches_gold": len(calls) == 1 and call_matches_gold(next(iter(calls.values())), record),
    }
    if record.get("error"):
        reason = "request_failed"
    elif not checks["no_unresolved_error"]:
        reason = "unresolved_code_error"
    elif not checks["finished"]:
        reason = "no_final_answer"
    elif not checks["within_step_limit"]:
        reason = "over_step_limit"
    elif not calls:
        reason = "no_tool_call"
    elif len(calls) > 1:
        reason = "several_tool_calls"
    elif not checks["call_matches_gold"]:
        reason = "wrong_call"
    else:
        reason = None
    return {"accepted": reason is None, "reason": reason, "checks": checks}
