"""Salesforce xLAM function-calling-60k converter.

Source rows: `{"id", "query", "answers": "<JSON list of calls>", "tools": "<JSON list of tools>"}`,
the file a JSON array (as the dataset ships) or JSON lines. Only single-call rows are kept; the
others are counted in the summary. The set is gated on the hub: users download it themselves.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from slm_swap.data.examples import Example
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json, read_jsonl

REQUIRED_FIELDS = ("id", "query", "answers", "tools")


def _signature(tool: dict[str, Any]) -> dict[str, Any]:
    """xLAM's `{param: {description, type, default}}` as a JSON-schema-like signature.

    xLAM marks optional parameters in the type string ("int, optional"); everything else is
    required. A default is shown only where it carries information.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param, spec in (tool.get("parameters") or {}).items():  # an object: `_tools_problem` checked it
        spec = spec if isinstance(spec, dict) else {}
        type_text = str(spec.get("type", ""))
        optional = "optional" in type_text
        prop: dict[str, Any] = {"type": type_text.replace(", optional", "").strip()}
        if spec.get("description"):
            prop["description"] = spec["description"]
        if optional and spec.get("default") not in (None, ""):
            prop["default"] = spec["default"]
        properties[param] = prop
        if not optional:
            required.append(param)
    return {
        "name": tool.get("name"),
        "description": tool.get("description", ""),
        "parameters": {"type": "object", "properties": properties, "required": required},
    }


def _parse_field(path: Path, row: dict[str, Any], key: str) -> list[Any]:
    value = row[key]
    try:
        parsed = json_input.loads(value) if isinstance(value, str) else value
    except json_input.JsonInputError as exc:
        joined = " is" if str(exc).startswith("not ") else ":"  # "'answers' is not valid JSON (...)", "'tools': nested ..."
        raise SlmSwapError(f"{path}: row id={row['id']}: {key!r}{joined} {exc}") from None
    if not isinstance(parsed, list):
        raise SlmSwapError(f"{path}: row id={row['id']}: {key!r} must be a JSON list")
    return parsed


def _tools_problem(tools: list[Any]) -> str | None:
    """Why a row's tools cannot be shown as signatures, or None: each an object with a string name
    and `parameters`, where given, an object (xLAM's `{param: {description, type, default}}`)."""
    for number, tool in enumerate(tools, start=1):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"'tools' entry {number} needs a 'name' (a string)"
        parameters = tool.get("parameters")
        if parameters and not isinstance(parameters, dict):  # none at all (null, [], "") is no parameters
            return f"'tools' entry {number} ({tool['name']}): 'parameters' must be an object, got {type(parameters).__name__}"
    return None


def load_xlam(path: Path) -> tuple[list[Example], Counter]:
    """Parse an xLAM file into single-call examples; returns (examples, skip counts by reason)."""
    path = Path(path)
    source = read_jsonl(path, "xLAM dataset file") if path.suffix == ".jsonl" else read_json(path, "xLAM dataset file")
    if not isinstance(source, list):
        raise SlmSwapError(f"{path}: expected a JSON array of xLAM rows")
    examples: list[Example] = []
    skipped: Counter = Counter()
    for position, row in enumerate(source):
        if not isinstance(row, dict):
            raise SlmSwapError(f"{path}: row {position}: expected an object")
        missing = [key for key in REQUIRED_FIELDS if key not in row]
        if missing:
            label = f"id={row['id']}" if "id" in row else str(position)
            raise SlmSwapError(f"{path}: row {label}: missing field {', '.join(map(repr, missing))}")
        if not isinstance(row["query"], str):
            raise SlmSwapError(f"{path}: row id={row['id']}: 'query' must be a string")
        answers = _parse_field(path, row, "answers")
        tools = _parse_field(path, row, "tools")
        if problem := _tools_problem(tools):
            raise SlmSwapError(f"{path}: row id={row['id']}: {problem}")
        if len(answers) != 1:
            skipped["multi_call" if answers else "no_call"] += 1
            continue
        call = answers[0]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(call.get("arguments"), dict):
            raise SlmSwapError(f"{path}: row id={row['id']}: 'answers' must hold {{'name': str, 'arguments': object}}")
        if call["name"] not in {tool["name"] for tool in tools}:
            skipped["answer_tool_not_listed"] += 1
            continue
        examples.append(
            Example(
                id=str(row["id"]),
                request=row["query"],
                functions=[_signature(tool) for tool in tools],
                name=call["name"],
                arguments=call["arguments"],
            )
        )
    return examples, skipped
