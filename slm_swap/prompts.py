"""The one place prompts and chat messages are built.

Eval, infer, the server and the Mastra client all use these: a row's prompt is made from a
track template (instruction, function signatures, the user's text verbatim), and
`build_messages` turns that prompt into the `[system, user]` chat messages sent to a model.
The templates are plain data so `slm-swap prompts export` can hand them to other languages.
"""

from __future__ import annotations

import json
from typing import Any

TRACKS = ("structured", "toolcall")

SYSTEM_PROMPT = "You are a careful assistant. Follow the requested output format exactly."

# The exact output format is stated once, with the function signatures before the request so the
# request (the user's text, verbatim) is the last thing the model reads.
TEMPLATES = {
    "structured": (
        "Pick the one function below that fulfils the request and fill in its arguments.\n"
        'Reply with a single JSON object and nothing else: {"name": "<function name>", '
        '"arguments": {"<parameter>": <value>, ...}}\n\n'
        "Functions:\n{functions}\n\n"
        "Request:\n{request}"
    ),
    "toolcall": (
        "Call the one function below that fulfils the request.\n"
        'Reply with exactly one tool call and nothing else: <tool_call name="<function name>">'
        '{"<parameter>": <value>, ...}</tool_call>\n\n'
        "Functions:\n{functions}\n\n"
        "Request:\n{request}"
    ),
}


def check_track(track: str) -> str:
    from slm_swap.errors import SlmSwapError

    if track not in TRACKS:
        raise SlmSwapError(f"unknown track {track!r}: expected one of {', '.join(TRACKS)}")
    return track


def render_functions(functions: list[dict[str, Any]]) -> str:
    """One JSON signature per line, in the order given (the source's order)."""
    return "\n".join(json.dumps(fn, ensure_ascii=False) for fn in functions)


def build_prompt(track: str, request: str, functions: list[dict[str, Any]]) -> str:
    # str.replace, not str.format: the templates contain literal JSON braces.
    template = TEMPLATES[check_track(track)]
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
        "templates": dict(TEMPLATES),
        "placeholders": {"functions": "one JSON signature per line", "request": "the user's text, verbatim"},
    }
