"""BFCL-style argument matching for one function call, without the `bfcl-eval` package.

The Berkeley Function Calling Leaderboard scores a call with an AST checker
(`bfcl_eval/eval_checker/ast_eval/ast_checker.py`, `simple_function_checker`). Its ground truth
for one call lists, per parameter, every acceptable value:

    {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}

where `""` among the values means the parameter may be left out. `args_ast_match` reproduces that
checker's verdict (its `valid`) for Python-typed categories (simple_python, live_simple, multiple,
live_multiple), so the metric can be computed where `bfcl-eval` is not importable: its checker
imports the model registry, which pulls every provider SDK. `tests/test_bfcl_match.py` runs the
real checker beside this module on every single-call row of those categories and asserts that
both agree.

Two gold views exist, on purpose:

* `first_choice_arguments` gives one canonical gold call (the first acceptable value of each
  parameter). Exact-match metrics (and training targets) use it, so they reward one spelling only.
* `args_ast_match` accepts every alternative BFCL accepts: any listed value, optional parameters
  omitted, int for a "float" parameter, strings equal after BFCL's normalisation.

Scope and deliberate differences from the checker:

* Python types only. Java/JavaScript categories encode values as language-specific strings and
  are not supported; their type names ("String", "HashMap", ...) raise ValueError.
* Names are compared exactly. The checker's `convert_func_name` rewrites "." to "_" for models
  registered with `underscore_to_dot`; we have no model registry and our prompts keep the
  original names.
* Odd model output (arguments that are not a dict, a list of dicts holding a non-dict, ...) gives
  False; the checker raises on some of these.
* Malformed gold or schemas (possible answer not one call, gold function missing from
  `functions`, unknown type name) raise ValueError: scoring them False would make a data bug look
  like a bad model. An "array" schema without "items" is accepted without checking its items
  (JSON Schema allows it; the checker would raise KeyError).
* For a list-typed parameter the checker compares each alternative as a list, so a non-empty
  string alternative is split into characters. No BFCL row has one; we never match such an
  alternative. The empty-string "optional" marker is kept as the checker treats it: it matches
  an empty list.

Checker behaviours we reproduce although they may surprise (BFCL scores with them):

* "Variables": when a parameter's first acceptable value has a different type than the schema
  says (e.g. "dontcare" for an integer, `None` or `True` for a string), any value of that gold
  type passes the type check and values are then compared with plain `==` membership, with no
  string normalisation.
* Values are compared with Python `==`, so inside lists and dicts (which are not type-checked
  item by item once an alternative allows it) `1 == 1.0 == True`.
* An empty string (or one that normalises to empty, like " " or "-") is accepted for an optional
  string parameter, because `""` is among its acceptable values.
* Items of an array are type-checked one level deep, and only while no alternative is `""` or a
  non-list; int items are not converted to float.
"""

from __future__ import annotations

import copy
import re
from typing import Any

# BFCL's Python type names -> the exact Python type a value must have (PYTHON_TYPE_MAPPING).
# "any" maps to str in the checker: a value of another type passes only as a "variable".
_PYTHON_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}

# BFCL's standardize_string drops these so "April 1, 2024" equals "April 1 2024".
_IGNORED_CHARACTERS = re.compile(r"[ ,./\-_*^]")

# The marker, among a parameter's acceptable values, that the parameter may be omitted.
_OPTIONAL = ""


def args_ast_match(name: str, arguments: dict, possible_answer: dict, functions: list[dict]) -> bool:
    """Whether the call `name(**arguments)` is accepted by BFCL's AST checker for this gold.

    `possible_answer` is one BFCL ground-truth entry for a single call
    (`{function_name: {param: [acceptable values]}}`), `functions` the row's function
    descriptions; the one named like the gold function supplies types and required parameters.
    Returns False for any model output that does not match, however malformed; raises ValueError
    only for malformed gold or function descriptions.
    """
    gold_name, accepted = _single_call(possible_answer)
    properties, required = _schema(functions, gold_name)

    # The model's name must be the gold one exactly (no "." -> "_" rewriting, see module doc).
    if not isinstance(name, str) or name != gold_name:
        return False
    if not isinstance(arguments, dict):
        return False

    if any(param not in arguments for param in required):
        return False

    for param, value in arguments.items():
        # A parameter must be both declared and expected by the gold: one the schema allows
        # but the gold does not list is "unexpected", exactly as in the checker.
        if param not in properties or param not in accepted:
            return False
        if not _value_matches(value, accepted[param], properties[param]):
            return False

    # A gold parameter the model left out must be optional in the gold (not merely in the schema).
    return all(param in arguments or _OPTIONAL in choices for param, choices in accepted.items())


def first_choice_arguments(possible_answer: dict) -> dict:
    """The canonical gold arguments: each parameter's first acceptable value that is not `""`.

    Parameters whose only acceptable value is `""` are left out, and so are the few with no
    acceptable value at all (`[]`, a BFCL data bug: no output passes those rows). A dict value
    (and each dict in a list of dicts) is itself written by BFCL as `{key: [acceptable values]}`,
    so it is resolved the same way. Exact-match metrics compare against this single canonical
    call, whereas `args_ast_match` accepts every alternative. The result is a deep copy; mutating
    it leaves the gold intact.

    The canonical call passes `args_ast_match` except on BFCL rows no output passes, and on one
    (live_multiple_507-149-4) whose schema-required parameter has `""` as its only acceptable
    value: omitted here, it is then missing; only an empty string passes there.
    """
    _, accepted = _single_call(possible_answer)
    return _first_choices(accepted)


# ---------------------------------------------------------------------------------------------
# Gold and schema access


def _single_call(possible_answer: Any) -> tuple[str, dict[str, list]]:
    if not isinstance(possible_answer, dict) or len(possible_answer) != 1:
        raise ValueError(f"possible answer must hold exactly one call, got {possible_answer!r}")
    ((gold_name, accepted),) = possible_answer.items()
    if not isinstance(accepted, dict) or not all(isinstance(v, list) for v in accepted.values()):
        raise ValueError(f"possible answer for {gold_name!r} must map each parameter to a list of values")
    return gold_name, accepted


def _schema(functions: Any, gold_name: str) -> tuple[dict[str, dict], list[str]]:
    for function in functions or []:
        if isinstance(function, dict) and function.get("name") == gold_name:
            parameters = function.get("parameters") or {}
            return parameters.get("properties") or {}, parameters.get("required") or []
    raise ValueError(f"no function description named {gold_name!r} among the row's functions")


def _python_type(type_name: Any) -> type:
    try:
        return _PYTHON_TYPES[type_name]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported BFCL parameter type {type_name!r} (only Python types are supported)") from None


def _first_choices(accepted: dict[str, list], resolve: bool = True) -> dict[str, Any]:
    chosen = {}
    for param, choices in accepted.items():
        for choice in choices:
            if choice != _OPTIONAL:
                chosen[param] = _resolve_alternatives(choice) if resolve else copy.deepcopy(choice)
                break
    return chosen


def _resolve_alternatives(value: Any) -> Any:
    # Only a dict parameter value and dicts directly inside a list parameter value hold per-key
    # alternatives (the checker's dict_checker / list_dict_checker). Their chosen values are
    # literal: the checker compares them with ==, so a dict inside them is a plain dict.
    if type(value) is dict:
        return _first_choices(_alternatives_dict(value), resolve=False)
    if type(value) is list:
        return [
            _first_choices(_alternatives_dict(item), resolve=False) if type(item) is dict else copy.deepcopy(item)
            for item in value
        ]
    return copy.deepcopy(value)


def _alternatives_dict(value: dict) -> dict[str, list]:
    if not all(isinstance(v, list) for v in value.values()):
        raise ValueError(f"a dict in a possible answer must map each key to a list of values, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# One parameter value


def _value_matches(value: Any, choices: list, prop: Any) -> bool:
    type_name = prop.get("type") if isinstance(prop, dict) else None
    expected = _python_type(type_name)
    item_type = None
    if type_name in ("array", "tuple"):
        items = prop.get("items")
        if isinstance(items, dict) and "type" in items:
            item_type = _python_type(items["type"])

    # A tuple arrives as a list after the gold's JSON round trip, so the checker compares lists.
    if type_name == "tuple" and type(value) is tuple:
        value = list(value)
    # Python would accept 5 where 5.0 is expected; the checker does too (bools excluded: type(True)
    # is bool, not int).
    if type_name == "float" and type(value) is int:
        value = float(value)

    type_ok, is_variable = _type_check(value, choices, expected, item_type)
    if not type_ok:
        return False

    # A "variable" gold is compared as-is, without the structural or string normalisation below.
    if not is_variable:
        if expected is dict:
            return _dict_matches_any(value, choices)
        if expected is list and item_type is dict:
            return _list_of_dicts_matches(value, choices)
        if expected is str:
            return _string_matches(value, choices)
        if expected is list:
            return _list_matches(value, choices)
    return value in choices


def _gold_type(choices: list) -> type | None:
    # The type of the first acceptable value that is not the optional marker; None if there is
    # none (the parameter may only be omitted).
    for choice in choices:
        if choice != _OPTIONAL:
            return type(choice)
    return None


def _type_check(value: Any, choices: list, expected: type, item_type: type | None) -> tuple[bool, bool]:
    """(passes, is_variable), as the checker's type_checker computes them.

    Types are compared exactly (`type(x) is T`), so True is not an int and 1 is not a float.
    """
    gold_type = _gold_type(choices)
    # The gold is a "variable" (e.g. "dontcare" for an integer) when its type differs from the
    # schema's; the checker then compares values as-is.
    is_variable = gold_type is not None and gold_type is not expected

    if type(value) is expected:
        if item_type is None:
            return True, is_variable
        # Items must type-check against at least one alternative. An alternative that is not a
        # list (the "" marker, a variable) imposes nothing, so the check passes.
        for choice in choices:
            if type(choice) is not list or all(_type_check(item, choice, item_type, None)[0] for item in value):
                return True, is_variable
        return False, is_variable

    # A value of the gold's own type is taken as a variable (e.g. None where the gold says None).
    if gold_type is not None and type(value) is gold_type:
        return True, True
    return False, is_variable


def _standardize(text: str) -> str:
    """BFCL's standardize_string: drop spaces and ,./-_*^, lowercase, ' -> "."""
    return _IGNORED_CHARACTERS.sub("", text).lower().replace("'", '"')


def _standardize_if_str(value: Any) -> Any:
    return _standardize(value) if type(value) is str else value


def _string_matches(value: str, choices: list) -> bool:
    # Non-string alternatives never match a string here (they matter only as variables).
    standardized = _standardize(value)
    return any(type(choice) is str and _standardize(choice) == standardized for choice in choices)


def _list_matches(value: list, choices: list) -> bool:
    # String items are normalised; other items (numbers, nested lists) compare with ==.
    standardized = [_standardize_if_str(item) for item in value]
    for choice in choices:
        if choice == _OPTIONAL:
            # The checker turns the optional marker into an empty list, so [] is accepted.
            alternative = []
        elif type(choice) is list:
            alternative = [_standardize_if_str(item) for item in choice]
        else:
            continue  # see the module docstring: never a match
        if standardized == alternative:
            return True
    return False


def _dict_matches_any(value: dict, choices: list) -> bool:
    return any(type(choice) is dict and _dict_matches(value, choice) for choice in choices)


def _dict_matches(value: Any, alternative: dict) -> bool:
    """One dict against one gold dict written as {key: [acceptable values]} (dict_checker).

    Keys are not type-checked; values are compared with == after string normalisation, and a
    gold key may be left out only if "" is among its values.
    """
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if key not in alternative or type(alternative[key]) is not list:
            return False
        if _standardize_if_str(item) not in [_standardize_if_str(choice) for choice in alternative[key]]:
            return False
    return all(key in value or _OPTIONAL in item_choices for key, item_choices in alternative.items())


def _list_of_dicts_matches(value: list, choices: list) -> bool:
    """A list of dicts against alternatives, each a list of gold dicts in order (list_dict_checker)."""
    for choice in choices:
        if choice == _OPTIONAL:
            alternative = []  # as in the checker: len("") == 0, so an empty list matches
        elif type(choice) is list:
            alternative = choice
        else:
            continue
        if len(value) == len(alternative) and all(
            type(gold) is dict and _dict_matches(item, gold) for item, gold in zip(value, alternative)
        ):
            return True
    return False
