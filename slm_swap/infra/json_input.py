"""The one reader for JSON that comes from outside the program: input files, request bodies and
models' answers.

    value = loads(text)                     # the value, or JsonInputError saying what is wrong
    value = loads(body, max_bytes=BODY_MAX_BYTES)

`json.loads` alone accepts things the rest of the program cannot survive, so this refuses them here,
where the caller can still name the file and line (or score the answer as invalid):
- nesting deeper than `MAX_DEPTH`: deep values crash recursive code downstream (`json.dumps`,
  scoring, pydantic) with RecursionError, and json itself raises it from about 1,000 levels;
- integers longer than Python's digit limit (4,300 digits by default), which `int()` refuses, and
  numbers that overflow to infinity (`1e999`), which `json.dumps` would write back as `Infinity`:
  not JSON;
- `NaN`, `Infinity`, `-Infinity`: Python's extension, not JSON;
- strings holding a lone surrogate (`"\\ud800"`): not text, and unwritable as UTF-8;
- documents bigger than `max_bytes`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

MAX_DEPTH = 64  # real rows nest a few levels (a BFCL schema about 8); this leaves ample room
FILE_MAX_BYTES = 1 << 30  # one document of an input file (a JSON file, a JSONL line)
BODY_MAX_BYTES = 16 << 20  # one HTTP request body to a server the product runs
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonInputError(ValueError):
    """Why a text is not JSON the program accepts. The message names no place: the caller adds the
    file and line, the request, or "the model's answer"."""


def loads(text: str | bytes, max_depth: int = MAX_DEPTH, max_bytes: int = FILE_MAX_BYTES) -> Any:
    """The JSON value of `text`, or `JsonInputError` (see the module's list of what is refused)."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise JsonInputError(f"{size} bytes, more than the {max_bytes} accepted")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise JsonInputError(f"nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # _finite_float's and _refuse_constant's refusals, or int()'s digit limit
        if "integer string conversion" in str(exc):
            raise JsonInputError(f"an integer longer than the {sys.get_int_max_str_digits()} digits Python reads") from None
        raise JsonInputError(str(exc)) from None
    _check_value(value, max_depth)
    return value


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _check_value(value: Any, max_depth: int) -> None:
    """Depth and strings, walked without recursion (the value may be as deep as json allowed)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if LONE_SURROGATE.search(item):
                raise JsonInputError("a string holds a lone surrogate (\\ud800-\\udfff), which is not text")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise JsonInputError(f"nested more than {max_depth} levels deep")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        else:
            stack.extend((child, depth + 1) for child in item)

