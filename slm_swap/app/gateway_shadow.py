"""The gateway's modes per track, and shadow mode's question: did the SLM give the hosted model's answer?

- `route`: the SLM first, its answer checked by the request's own validators, the hosted model on failure;
- `shadow`: the hosted model answers every request; the SLM answers the same request off the response
  path, and the record says whether its answer was valid and whether it agrees with the hosted one;
- `hosted`: pass-through, recorded only.

Agreement is exact: the same function called with equal arguments (toolcall), or equal JSON values
(structured), parsed from both answers by the track's own parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slm_swap.app.gateway_requests import Swappable
from slm_swap.core.tracks import NOT_PARSED, parse_structured, parse_toolcall
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.json_input import JsonInputError

MODES = ("route", "shadow", "hosted")


def parse_modes(specs: list[str], tracks: Iterable[str]) -> dict[str, str]:
    """`--mode MODE` sets every track, `--mode TRACK=MODE` one; later flags win. Default: route."""
    modes = {track: "route" for track in tracks}
    for spec in specs:
        track, sep, mode = spec.rpartition("=")
        if mode not in MODES or (sep and track not in modes):
            raise SlmSwapError(f"--mode {spec!r}: expected MODE or TRACK=MODE, with MODE one of {', '.join(MODES)} "
                               f"and TRACK one of {', '.join(modes)}")
        for name in ([track] if sep else list(modes)):
            modes[name] = mode
    return modes


def hosted_answer(choices: Any) -> dict[str, Any] | None:
    """The first choice's message of a hosted answer (`choices` as recorded), None when there is none."""
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        return message if isinstance(message, dict) else None
    return None


def _hosted_tool_call(message: dict[str, Any]) -> tuple[str, Any] | None:
    calls = message.get("tool_calls") or []
    if len(calls) != 1 or not isinstance(calls[0], dict) or not isinstance(calls[0].get("function"), dict):
        return None
    function = calls[0]["function"]
    try:
        arguments = json_input.loads(function.get("arguments") or "")
    except JsonInputError:
        return None
    return (function.get("name"), arguments) if isinstance(arguments, dict) else None


def agrees(decision: Swappable, slm_text: str, message: dict[str, Any] | None) -> bool:
    """Whether the SLM's answer and the hosted model's `message` say the same thing, exactly."""
    if message is None:
        return False
    if decision.track == "structured":
        slm_value = parse_structured(slm_text)
        return slm_value is not NOT_PARSED and slm_value == parse_structured(message.get("content") or "")
    slm_call = parse_toolcall(slm_text)
    if slm_call is None:
        return False
    if decision.answer_as == "tool_calls":  # the application asked with tools: the hosted model answered with tool_calls
        return slm_call == _hosted_tool_call(message)
    return slm_call == parse_toolcall(message.get("content") or "")
