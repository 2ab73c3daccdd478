"""The trajectory record (one JSON object per line) and its reader.

    index, request_id, task, tools      the source row: its position, id, the user's text, the signatures
    gold                                {name, arguments, possible_answer}: what a correct agent calls
    steps                               [{step, thought, code, observation, error, usage, latency_s,
                                          is_final_answer, model_output}]
    messages                            the conversation as the teacher saw it, ending with its last output
    finished, state, final_answer       final_answer() called?; smolagents' end state; its argument
    tool_calls                          the calls the agent made: [{name, arguments}], source names
    teacher, max_steps, error, latency_s, langfuse_trace_id
    max_turn_tokens                     new tokens the model was allowed per turn (absent before 2026-12-05: 512)
    verdict                             added by `filter`: {accepted, reason, checks}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_lines

REQUIRED = {
    "request_id": str, "task": str, "tools": list, "gold": dict, "steps": list, "messages": list,
    "finished": bool, "tool_calls": list, "teacher": str, "max_steps": int,
}


def read_trajectories(path: Path, *, torn_ok: bool = False) -> list[dict[str, Any]]:
    """Every record in a trajectory file, checked; a bad line is named by its number. With
    `torn_ok` (resuming a killed capture), lines that do not parse are skipped instead."""
    lines = read_lines(path, "trajectory file")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json_input.loads(line)
        except json_input.JsonInputError as exc:
            if torn_ok:
                continue
            raise SlmSwapError(f"{path}:{number}: {exc}") from None
        if problem := record_problem(record):
            if torn_ok:
                continue
            raise SlmSwapError(f"{path}:{number}: not a trajectory record: {problem}")
        records.append(record)
    return records


def record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"expected an object, got {type(record).__name__}"
    for key, kind in REQUIRED.items():
        if not isinstance(record.get(key), kind):
            return f"'{key}' missing or not {'an' if kind is int else 'a'} {kind.__name__}"
    gold = record["gold"]
    if not isinstance(gold.get("name"), str) or not isinstance(gold.get("arguments"), dict):
        return "'gold' must hold 'name' (a string) and 'arguments' (an object)"
    if not isinstance(gold.get("possible_answer"), (dict, type(None))):
        return "'gold.possible_answer' must be an object or null"
    if not all(isinstance(tool, dict) for tool in record["tools"]):
        return "every entry of 'tools' must be an object (a signature)"
    if not all(isinstance(step, dict) for step in record["steps"]):
        return "every entry of 'steps' must be an object"
    if not all(isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), dict)
               for call in record["tool_calls"]):
        return "every entry of 'tool_calls' must hold 'name' (a string) and 'arguments' (an object)"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in record["messages"]):
        return "every entry of 'messages' must hold 'role' and 'content' (strings)"
    return None
