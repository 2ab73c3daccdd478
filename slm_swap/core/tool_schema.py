"""Strict validators taken from the request: is a model's call one its tools accept?

    from slm_swap.core.tool_schema import check_call, check_structured, to_json_schema
    check_call("get_weather", {"city": "Oslo"}, functions)   # None, or "arguments miss required 'city'"
    check_structured(parse_structured(output), functions)   # the same for the structured track's answer
    to_json_schema(function["parameters"])                   # a Draft 2020-12 JSON Schema

Function signatures come in three dialects, and `to_json_schema` reads all of them:
- OpenAI tools' `parameters`: real JSON Schema ("object", "string", "integer", ...);
- BFCL's: JSON-Schema-like with Python-ish type names ("dict", "float", "tuple", "any", ...), mapped
  as BFCL maps them for OpenAI-style models (`GORILLA_TO_OPENAPI`, `bfcl_eval/model_handler/utils.py`);
- xLAM's: Python annotations ("str", "List[str]", "Dict[str, Any]", "Optional[int]"), either in the
  project's stored BFCL shape (`slm_swap.data.xlam` keeps the annotation as `type`) or as xLAM's own
  flat `{param: {"type": "int, optional", ...}}`, where ", optional" marks a parameter not required.

Deliberate choices, each where a validator must pick:
- `additionalProperties` is left as the signature says, open when it says nothing: JSON Schema's
  default, what OpenAI tools mean, and what BFCL sends models (`convert_to_tool` adds none). An extra
  argument is therefore valid here; judging it is the answer matcher's job (`bfcl_match` rejects it).
- "integer" takes an int only, never 3.0 (JSON Schema would): BFCL's checker demands `int`, and a
  Python tool given 3.0 gets a float. "number" ("float") takes ints, as BFCL's checker allows.
- BFCL's lowercase "any" is a string, as `GORILLA_TO_OPENAPI` and its checker say; typing's `Any`
  (xLAM's "Dict[str, Any]") is any value. A property with no `type` at all is unconstrained
  (JSON Schema's meaning; OpenAI schemas use it beside `anyOf` and `$ref`).
- BFCL's Java/JavaScript names ("long", "HashMap", "String", ...) raise ValueError, as in
  `bfcl_match`: those categories write values as source-code strings, which no JSON type describes.
- A remote `$ref` is never fetched (jsonschema would by default): a request must not make the
  gateway open URLs it names. It raises ValueError, as does any unknown type or invalid schema:
  a data or request bug must not look like a bad model.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from typing import Any

import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError, best_match

from slm_swap.core.tracks import NOT_PARSED

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# BFCL's Python-category type names -> JSON Schema types: GORILLA_TO_OPENAPI's entries for them
# (tests compare this with bfcl_eval's own table), plus JSON Schema's "null".
BFCL_TYPES: dict[str, str] = {
    "integer": "integer",
    "number": "number",
    "float": "number",
    "string": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "dict": "object",
    "object": "object",
    "tuple": "array",
    "any": "string",
    "null": "null",
}

# Python's own names (xLAM's annotations): the inverse of BFCL's GORILLA_TO_PYTHON, plus `set`
# (a JSON array) and typing's `Any` and `None`. An empty schema accepts any value.
PYTHON_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "list": {"type": "array"},
    "List": {"type": "array"},
    "tuple": {"type": "array"},
    "Tuple": {"type": "array"},
    "set": {"type": "array"},
    "Set": {"type": "array"},
    "dict": {"type": "object"},
    "Dict": {"type": "object"},
    "Any": {},
    "None": {"type": "null"},
    "NoneType": {"type": "null"},
}

_LISTS = {"list", "List", "set", "Set"}
_TUPLES = {"tuple", "Tuple"}
_DICTS = {"dict", "Dict"}

# Where JSON Schema keywords hold subschemas, so type names inside them are mapped too.
_ONE_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
                  "unevaluatedItems", "unevaluatedProperties", "additionalItems")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")

# BFCL's checker wants `type(value) == int`; JSON Schema would also take 3.0.
_STRICT_INTEGERS = Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
)
_Validator = validators.extend(Draft202012Validator, type_checker=_STRICT_INTEGERS)

_REASON_MAX_CHARS = 200
_CACHED_SCHEMA_MAX_CHARS = 64 * 1024
_DEFAULT_ACCEPTED = "slm-swap: the parameter's own default is accepted too"


def to_json_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A Draft 2020-12 JSON Schema for a function's `parameters`, in any dialect (module doc).

    Raises ValueError naming the type for a type name no dialect knows, or for an invalid schema.
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise ValueError(f"function parameters must be an object, got {type(parameters).__name__}")
    schema = _from_flat_xlam(parameters) if _is_flat_xlam(parameters) else _convert(parameters)
    schema.setdefault("type", "object")
    schema["$schema"] = DRAFT_2020_12
    try:
        _Validator.check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"invalid parameters schema: {_shorten(error.message)}") from None
    return schema


def check_call(name: Any, arguments: Any, functions: Iterable[dict[str, Any]]) -> str | None:
    """None when `name(**arguments)` is a call the functions accept, else why not, in words.

    `functions` are signatures with "name" and "parameters" (rows' functions, OpenAI tools'
    `function` objects). Raises ValueError when the named function's schema cannot be used.
    """
    function = next((f for f in functions if isinstance(f, dict) and f.get("name") == name), None)
    if function is None:
        return f"no function named {name!r} among the request's tools"
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {_json_type(arguments)}"
    key = json.dumps(function.get("parameters"), sort_keys=True)
    validator = _validator(key) if len(key) <= _CACHED_SCHEMA_MAX_CHARS else _validator.__wrapped__(key)
    try:
        error = best_match(validator.iter_errors(arguments))
    except referencing.exceptions.Unresolvable as exc:
        raise ValueError(f"the parameters schema of {name!r} has an unresolvable $ref: {exc}") from None
    return None if error is None else _reason(error)


@functools.lru_cache(maxsize=1024)
def _validator(parameters_json: str) -> Any:
    """The validator of one `parameters` schema, checked once: an application sends the same tools on
    every request, and checking a schema against the meta-schema took a quarter of the gateway's time.
    Schemas past `_CACHED_SCHEMA_MAX_CHARS` are not kept, so the cache stays within ~64 MiB."""
    return _Validator(to_json_schema(json.loads(parameters_json)), registry=referencing.Registry())


def check_structured(value: Any, functions: Iterable[dict[str, Any]]) -> str | None:
    """None when the structured track's parsed answer is one valid call, else why not.

    `value` is what `tracks.parse_structured` returns: one JSON object holding exactly `name` and
    `arguments` is expected.
    """
    if value is NOT_PARSED:
        return "the answer is not JSON"
    if not isinstance(value, dict):
        return f"the answer must be a JSON object, got {_json_type(value)}"
    if set(value) != {"name", "arguments"}:
        return f"the answer must hold exactly 'name' and 'arguments', got {sorted(value)}"
    return check_call(value["name"], value["arguments"], functions)


# ---------------------------------------------------------------------------------------------
# Dialects -> JSON Schema


def _is_flat_xlam(parameters: dict[str, Any]) -> bool:
    """xLAM's own `{param: {"type": ...}}`: no schema-level `type`, and every value a parameter spec
    (a JSON Schema's `properties` maps to objects; a flat parameter named "properties" does not)."""
    if isinstance(parameters.get("type"), str):
        return False
    properties = parameters.get("properties")
    if isinstance(properties, dict) and all(isinstance(spec, dict) for spec in properties.values()):
        return False
    return bool(parameters) and all(isinstance(spec, dict) and "type" in spec for spec in parameters.values())


def _from_flat_xlam(parameters: dict[str, Any]) -> dict[str, Any]:
    # As `slm_swap.data.xlam` reads it: "optional" in the type text marks a parameter not required,
    # and a default counts only there and when not empty (xLAM writes "" where there is none).
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param, spec in parameters.items():
        type_text = str(spec["type"])
        optional = "optional" in type_text
        spec = {key: value for key, value in spec.items() if key != "default" or (optional and value not in (None, ""))}
        properties[param] = _convert({**spec, "type": type_text.replace(", optional", "").strip()})
        if not optional:
            required.append(param)
    return {"type": "object", "properties": properties, "required": required}


def _convert(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with every type name, here and in its subschemas, made JSON Schema's."""
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            continue
        if key == "items" and isinstance(value, list):  # the pre-2020 tuple form
            key = "prefixItems"
        if key in _ONE_SUBSCHEMA:
            converted[key] = _convert(value) if isinstance(value, dict) else copy.deepcopy(value)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            converted[key] = [_convert(item) if isinstance(item, dict) else item for item in value]
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            converted[key] = {k: _convert(v) if isinstance(v, dict) else v for k, v in value.items()}
        else:
            converted[key] = copy.deepcopy(value)
    if "type" in schema:
        # What the type name implies fills in; keywords the signature spells out win.
        for key, value in _type_schema(schema["type"]).items():
            converted.setdefault(key, value)
    if "default" in converted and not _accepts(converted, converted["default"]):
        # Python's `x: str = None` idiom (BFCL's live data is full of it: "default": null on a
        # string, "N/A" outside the enum, "dontcare" on an integer): passing a parameter's own
        # default is as good as leaving it out, so that one value is valid too.
        return {"$comment": _DEFAULT_ACCEPTED, "anyOf": [converted, {"const": copy.deepcopy(converted["default"])}]}
    return converted


def _accepts(schema: dict[str, Any], value: Any) -> bool:
    """Whether `value` is valid under `schema`; True (leave it as written) where that cannot be
    told alone: an invalid schema (`to_json_schema` reports it) or a $ref into the whole schema."""
    try:
        _Validator.check_schema(schema)
        return _Validator(schema, registry=referencing.Registry()).is_valid(value)
    except (SchemaError, referencing.exceptions.Unresolvable):
        return True


def _type_schema(type_value: Any) -> dict[str, Any]:
    if isinstance(type_value, list):  # JSON Schema's ["string", "null"]
        fragments = [_type_schema(name) for name in type_value]
        if all(set(fragment) == {"type"} and isinstance(fragment["type"], str) for fragment in fragments):
            return {"type": list(dict.fromkeys(fragment["type"] for fragment in fragments))}
        return {"anyOf": fragments}
    if not isinstance(type_value, str):
        raise ValueError(f"unknown parameter type {type_value!r}")
    if type_value in BFCL_TYPES:
        return {"type": BFCL_TYPES[type_value]}
    return _annotation_schema(type_value, type_value)


def _annotation_schema(text: str, whole: str) -> dict[str, Any]:
    """A Python annotation ("List[Dict[str, Any]]", "Optional[int]", "int | None") as a schema."""
    text = text.strip()
    alternatives = _split_top_level(text, "|")
    if len(alternatives) > 1:
        return {"anyOf": [_annotation_schema(part, whole) for part in alternatives]}
    if text in PYTHON_TYPES:
        return dict(PYTHON_TYPES[text])
    head, bracket, rest = text.partition("[")
    head = head.strip()
    if not bracket or not rest.endswith("]"):
        raise _unknown_type(text, whole)
    args = _split_top_level(rest[:-1], ",")
    if head in _LISTS and len(args) == 1:
        return {"type": "array", "items": _annotation_schema(args[0], whole)}
    if head in _DICTS and len(args) == 2:  # JSON keys are strings whatever the key type says
        return {"type": "object", "additionalProperties": _annotation_schema(args[1], whole)}
    if head in _TUPLES and len(args) == 2 and args[1].strip() == "...":
        return {"type": "array", "items": _annotation_schema(args[0], whole)}
    if head in _TUPLES and args:
        items = [_annotation_schema(arg, whole) for arg in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if head == "Optional" and len(args) == 1:
        return {"anyOf": [_annotation_schema(args[0], whole), {"type": "null"}]}
    if head == "Union" and args:
        return {"anyOf": [_annotation_schema(arg, whole) for arg in args]}
    raise _unknown_type(text, whole)


def _split_top_level(text: str, separator: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(text[start:position].strip())
            start = position + 1
    parts.append(text[start:].strip())
    return parts


def _unknown_type(text: str, whole: str) -> ValueError:
    where = "" if text == whole.strip() else f" in {whole!r}"
    return ValueError(f"unknown parameter type {text!r}{where}")


# ---------------------------------------------------------------------------------------------
# Reasons


def _reason(error: ValidationError) -> str:
    if error.validator == "anyOf" and error.schema.get("$comment") == _DEFAULT_ACCEPTED:
        # Say what the parameter's own schema wanted, not "not valid under any of the given schemas".
        wanted = best_match(e for e in error.context if e.relative_schema_path[0] == 0)
        if wanted is not None:
            return _shorten(f"{_reason(wanted)}, nor its default {error.schema['anyOf'][1]['const']!r}")
    where = _path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = ", ".join(repr(p) for p in error.validator_value if p not in error.instance)
        return f"arguments miss required {missing}" if not where else f"{where!r} misses required {missing}"
    return _shorten(error.message if not where else f"{where!r}: {error.message}")


def _path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _json_type(value: Any) -> str:
    for python_type, name in ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"),
                              (list, "an array"), (dict, "an object")):
        if isinstance(value, python_type):
            return name
    return "null" if value is None else type(value).__name__


def _shorten(text: str) -> str:
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 1] + "…"
