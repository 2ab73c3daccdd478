"""The source-independent example, and the per-track dataset row built from it.

Row contract (every split file, both tracks): exactly `{"prompt": str, "completion": str}`.
- structured completion: canonical JSON `{"arguments": {...}, "name": ...}`
- toolcall completion:   `<tool_call name="NAME">{canonical JSON args}</tool_call>`
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slm_swap.core.prompts import build_prompt
from slm_swap.core.tracks import TRACKS, get_row_track
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_jsonl


@dataclass(frozen=True)
class Example:
    """One single-call request from a source dataset."""

    id: str
    request: str  # the user's text, verbatim
    functions: list[dict[str, Any]]  # signatures shown to the model
    name: str  # gold function name
    arguments: dict[str, Any]  # gold (canonical) arguments
    # BFCL only: the acceptable alternatives per argument, for BFCL-style scoring.
    possible_answer: dict[str, Any] | None = field(default=None)


def structured_completion(name: str, arguments: dict[str, Any]) -> str:
    return TRACKS["structured"].completion(name, arguments)


def toolcall_completion(name: str, arguments: dict[str, Any]) -> str:
    return TRACKS["toolcall"].completion(name, arguments)


def build_row(example: Example, track: str) -> dict[str, str]:
    completion = get_row_track(track).completion(example.name, example.arguments)
    return {"prompt": build_prompt(track, example.request, example.functions), "completion": completion}


def load_rows(path: Path) -> list[dict[str, str]]:
    """Read a split file and check every row against the row contract."""
    rows = read_jsonl(path, what="dataset file")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or set(row) != {"prompt", "completion"}:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise SlmSwapError(f"{path}: row {number}: expected exactly 'prompt' and 'completion', got {keys}")
        if not all(isinstance(row[key], str) for key in row):
            raise SlmSwapError(f"{path}: row {number}: 'prompt' and 'completion' must be strings")
    return rows
