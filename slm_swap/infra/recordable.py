"""What a model or a server sent, made fit to record: writable as UTF-8 JSON, and without secrets.

    record = recordable({"output": completion.text, ...}, settings.scrub)   # then json.dumps + write

A hosted model's answer reaches us as a str decoded from the server's JSON, and JSON's `"\\ud800"`
escape decodes to a lone surrogate: a str that is not text, which no UTF-8 file, trace or log
can hold (`UnicodeEncodeError`). Scoring sees the answer as it came (`json_input` refuses it, so
it is scored as not parsed); what is recorded has each lone surrogate replaced by U+FFFD, the
replacement character, so one odd answer never stops an eval or a capture. With `scrub` (a
`Settings.scrub`), every string also loses the configured secrets: scoring saw the raw answer, the
record and the trace never hold a key a server echoed back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from slm_swap.infra.json_input import LONE_SURROGATE

REPLACEMENT = "\ufffd"


def text(value: str) -> str:
    """`value` with every lone surrogate replaced by U+FFFD (the same str when it has none)."""
    return LONE_SURROGATE.sub(REPLACEMENT, value)


def recordable(value: Any, scrub: Callable[[str], str] | None = None) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, scalars) with every string, keys included,
    made writable by `text` and, with `scrub`, free of secrets. Values come from our own records, a
    few levels deep."""
    if isinstance(value, str):
        return scrub(text(value)) if scrub else text(value)
    if isinstance(value, dict):
        return {recordable(key, scrub): recordable(item, scrub) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [recordable(item, scrub) for item in value]
    return value
