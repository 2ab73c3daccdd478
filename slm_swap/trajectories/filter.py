"""`slm-swap filter`: keep the trajectories that pass automatic correctness checks, with a reason for each.

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

from collections import Counter
from pathlib import Path
from typing import Any

from slm_swap.bfcl_match import args_ast_match
from slm_swap.errors import SlmSwapError
from slm_swap.fileio import atomic_write_text, check_writable_dir, jsonl_text, sha256_file, write_json
from slm_swap.fileio import canonical_json
from slm_swap.trajectories.records import read_trajectories

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


def accepted_path(out_dir: Path) -> Path:
    return Path(out_dir) / "accepted.jsonl"


def filter_trajectories(path: Path, out_dir: Path, *, max_steps: int | None = None) -> dict[str, Any]:
    """Write `accepted.jsonl`, `rejected.jsonl` (each record with its verdict) and `filter.json` (counts
    by reason) under `out_dir`; returns the summary."""
    if max_steps is not None and max_steps < 1:
        raise SlmSwapError(f"--max-steps must be >= 1, got {max_steps}")
    records = read_trajectories(path)
    if not records:
        raise SlmSwapError(f"{path}: no trajectories to filter")
    check_writable_dir(Path(out_dir), "--out-dir")
    judged = [{**record, "verdict": verdict(record, max_steps)} for record in records]
    accepted = [r for r in judged if r["verdict"]["accepted"]]
    rejected = [r for r in judged if not r["verdict"]["accepted"]]
    reasons = Counter(r["verdict"]["reason"] for r in rejected)
    summary = {
        "trajectories": {"path": str(path), "sha256": sha256_file(Path(path))},
        "max_steps": max_steps,
        "n": len(judged),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "acceptance_rate": len(accepted) / len(judged),
        "reasons": {reason: reasons[reason] for reason in REASONS if reasons[reason]},
    }
    atomic_write_text(accepted_path(out_dir), jsonl_text(accepted))
    atomic_write_text(Path(out_dir) / "rejected.jsonl", jsonl_text(rejected))
    write_json(Path(out_dir) / "filter.json", summary)
    return summary
