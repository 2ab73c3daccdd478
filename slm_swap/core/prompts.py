"""The one place prompts and chat messages are built.

Eval, infer, the server and the Mastra client all use these: a row's prompt is made from a
track template (instruction, function signatures, the user's text verbatim), and
`build_messages` turns that prompt into the `[system, user]` chat messages sent to a model.
The templates (one per track, in `slm_swap.core.tracks`) are plain data so `slm-swap prompts export`
can hand them to other languages.
"""

from __future__ import annotations

import json
from typing import Any

from slm_swap.core.tracks import ROW_TRACKS, get_row_track

SYSTEM_PROMPT = "You are a careful assistant. Follow the requested output format exactly."

# The track names of v0 rows (the templates live with their tracks, `slm_swap.core.tracks`).
TRACKS = tuple(ROW_TRACKS)


def render_functions(functions: list[dict[str, Any]]) -> str:
    """One JSON signature per line, in the order given (the source's order)."""
    return "\n".join(json.dumps(fn, ensure_ascii=False) for fn in functions)


def build_prompt(track: str, request: str, functions: list[dict[str, Any]]) -> str:
    # str.replace, not str.format: the templates contain literal JSON braces.
    template = get_row_track(track).template
    return template.replace("{functions}", render_functions(functions)).replace("{request}", request)


def build_messages(prompt: str) -> list[dict[str, str]]:
    """The `[system, user]` messages every client sends for a row's prompt."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]


def export_prompts() -> dict[str, Any]:
    """Templates as data, for clients written in other languages (see mastra/)."""
    return {
        "system_prompt": SYSTEM_PROMPT,
        "templates": {name: track.template for name, track in ROW_TRACKS.items()},
        "placeholders": {"functions": "one JSON signature per line", "request": "the user's text, verbatim"},
    }
