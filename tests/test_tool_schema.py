"""Strict validators from the request: type names of every dialect, the reasons users read, and
every gold call of the project's own data (BFCL, xLAM) accepted."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI, GORILLA_TO_PYTHON

from slm_swap.core.tool_schema import check_call, check_structured, to_json_schema
from slm_swap.core.tracks import NOT_PARSED, parse_structured
from slm_swap.data.bfcl import load_bfcl
from slm_swap.data.xlam import load_xlam
from slm_swap.infra import json_input

XLAM_FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"


def one_param(type_name, **extra):
    """A BFCL-shaped signature with one required parameter `x` of the given type."""
    return [{"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": type_name, **extra}}, "required": ["x"]}}]


# ---------------------------------------------------------------------------------------------
# Every type name: one value it takes, one it refuses (None where it refuses nothing).

TYPE_CASES = [
    # BFCL's names (GORILLA_TO_OPENAPI, Python categories) and JSON Schema's own
    ("string", "Oslo", 3),
    ("integer", 3, 3.0),  # BFCL's checker wants an int; a float, even 3.0, is refused
    ("number", 2.5, "2.5"),
    ("float", 3, "3.5"),  # an int passes for a float, as BFCL's checker allows
    ("boolean", True, "true"),
    ("bool", False, 0),
    ("array", [1, "a"], "a"),
    ("list", [], {}),
    ("tuple", [33.4, -112.0], "(33.4, -112.0)"),  # JSON has no tuple: BFCL takes a list
    ("dict", {"a": 1}, [["a", 1]]),
    ("object", {}, "{}"),
    ("any", "my_data", 5),  # BFCL maps "any" to a string (GORILLA_TO_OPENAPI, its checker)
    ("null", None, 0),
    # Python's names, as xLAM writes them
    ("str", "pt", ["pt"]),
    ("int", 30, True),  # a boolean is no integer
    ("float", 0.5, None),
    ("bool", True, 1),
    ("list", ["a"], "a"),
    ("List", [1], {"a": 1}),
    ("tuple", [1, 2], 1),
    ("Tuple", [1, 2], "1,2"),
    ("set", [1, 2], {"a": 1}),
    ("Set", ["a"], "a"),
    ("dict", {}, "{}"),
    ("Dict", {"k": [1]}, []),
    ("None", None, "None"),
    ("NoneType", None, False),
    ("Any", {"any": ["value"]}, None),  # typing.Any takes every value
    # xLAM's annotations
    ("List[str]", ["tofu", "ginger"], ["tofu", 1]),
    ("list[int]", [1, 2], [1, 2.5]),
    ("List[List[int]]", [[1], []], [[1], 2]),
    ("List[Dict[str, Any]]", [{"a": 1}, {}], [{"a": 1}, "b"]),
    ("Dict[str, Any]", {"a": [1], "b": None}, ["a"]),
    ("Dict[str, int]", {"a": 1}, {"a": "1"}),
    ("Dict[str, List[float]]", {"a": [1.5, 2]}, {"a": [1.5, "2"]}),
    ("Tuple[int, str]", [1, "a"], [1, "a", 2]),
    ("Tuple[float, ...]", [1.5, 2, 3.5], [1.5, "2"]),
    ("Set[int]", [3, 1], [3, "1"]),
    ("Optional[int]", None, "3"),
    ("Optional[List[str]]", ["a"], [1]),
    ("Union[int, str]", "a", 1.5),
    ("int | None", None, 1.5),
]


@pytest.mark.parametrize(("type_name", "valid", "invalid"), TYPE_CASES, ids=[f"{c[0]}" for c in TYPE_CASES])
def test_each_type_name_takes_its_values_and_refuses_others(type_name, valid, invalid):
    functions = one_param(type_name)
    assert check_call("f", {"x": valid}, functions) is None
    if type_name != "Any":
        reason = check_call("f", {"x": invalid}, functions)
        assert reason is not None and reason.startswith("'x")  # 'x': ..., or 'x[0]': ... for an item


def test_bfcl_type_names_map_as_bfcl_maps_them():
    # BFCL's own table, read from the installed package, not restated here.
    python_category_names = {"string", "integer", "float", "boolean", "array", "tuple", "dict", "any"}
    for name, openapi_type in GORILLA_TO_OPENAPI.items():
        if name == "Any":  # BFCL's Java/JS "Any"; here it is typing.Any, as xLAM writes it (any value)
            assert "type" not in to_json_schema({"properties": {"x": {"type": name}}})["properties"]["x"]
            continue
        try:
            schema = to_json_schema({"type": "dict", "properties": {"x": {"type": name}}})
        except ValueError as error:  # Java/JavaScript names: their values are source-code strings
            assert name not in python_category_names and repr(name) in str(error)
            continue
        assert schema["properties"]["x"]["type"] == openapi_type, name
    # Python's names (what GORILLA_TO_PYTHON calls BFCL's types) map to the same JSON types.
    for name, python_name in GORILLA_TO_PYTHON.items():
        if name in python_category_names:
            schema = to_json_schema({"type": "dict", "properties": {"x": {"type": python_name}}})
            assert schema["properties"]["x"]["type"] == GORILLA_TO_OPENAPI[name], python_name


@pytest.mark.parametrize("type_name", ["Callable", "List[Callable]", "HashMap", "long", "", "datetime", "List[int", 5])
def test_unknown_type_names_raise_naming_the_type(type_name):
    with pytest.raises(ValueError, match="unknown parameter type") as caught:
        check_call("f", {"x": 1}, one_param(type_name))
    if type_name == "List[Callable]":
        assert "'Callable' in 'List[Callable]'" in str(caught.value)
    else:
        assert repr(type_name) in str(caught.value)


def test_an_invalid_schema_raises_rather_than_judging_the_model():
    with pytest.raises(ValueError, match="invalid parameters schema"):
        to_json_schema({"type": "object", "properties": {"x": {"type": "string", "minLength": "two"}}})


# ---------------------------------------------------------------------------------------------
# Calls and their reasons

WEATHER = [
    {
        "name": "get_weather",
        "description": "Forecast for a city.",
        "parameters": {
            "type": "dict",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "units": {"type": "string", "enum": ["metric", "imperial"], "default": "metric"},
                "place": {
                    "type": "dict",
                    "properties": {"lat": {"type": "float"}, "lon": {"type": "float"}},
                    "required": ["lat", "lon"],
                },
                "stops": {
                    "type": "array",
                    "items": {"type": "dict", "properties": {"name": {"type": "string"}, "hours": {"type": "integer"}}},
                },
            },
            "required": ["city", "days"],
        },
    },
    {"name": "noop", "parameters": {"type": "dict", "properties": {}, "required": []}},
]


def test_a_valid_call_with_optional_parameters_left_out_passes():
    assert check_call("get_weather", {"city": "Oslo", "days": 3}, WEATHER) is None
    assert check_call("noop", {}, WEATHER) is None


def test_reasons_name_what_is_wrong():
    assert check_call("get_forecast", {}, WEATHER) == "no function named 'get_forecast' among the request's tools"
    assert check_call("get_weather", {"days": 3}, WEATHER) == "arguments miss required 'city'"
    assert check_call("get_weather", {}, WEATHER) == "arguments miss required 'city', 'days'"
    assert check_call("get_weather", {"city": "Oslo", "days": "three"}, WEATHER) == "'days': 'three' is not of type 'integer'"
    assert check_call("get_weather", ["Oslo", 3], WEATHER) == "arguments must be a JSON object, got an array"
    assert check_call("get_weather", {"city": "Oslo", "days": 3, "units": "kelvin"}, WEATHER).startswith("'units': 'kelvin' is not one of")


def test_nested_objects_and_arrays_are_checked_to_the_leaf():
    call = {"city": "Oslo", "days": 1}
    assert check_call("get_weather", {**call, "place": {"lat": 59.9, "lon": 10}}, WEATHER) is None
    assert check_call("get_weather", {**call, "place": {"lat": 59.9}}, WEATHER) == "'place' misses required 'lon'"
    assert check_call("get_weather", {**call, "place": {"lat": "59.9N", "lon": 10}}, WEATHER) == "'place.lat': '59.9N' is not of type 'number'"
    stops = [{"name": "Bergen", "hours": 2}, {"name": "Voss", "hours": "two"}]
    assert check_call("get_weather", {**call, "stops": stops}, WEATHER) == "'stops[1].hours': 'two' is not of type 'integer'"


def test_extra_arguments_pass_unless_the_schema_closes_the_object():
    # Open as BFCL sends schemas and as JSON Schema reads them; a schema that says so is obeyed.
    assert check_call("get_weather", {"city": "Oslo", "days": 1, "mood": "sunny"}, WEATHER) is None
    closed = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}}]
    assert "'mood' was unexpected" in check_call("f", {"a": "x", "mood": "sunny"}, closed)


def test_a_parameter_s_own_default_is_accepted_even_when_its_type_refuses_it():
    # BFCL's live data: `"type": "string", "default": null`, as Python's `x: str = None`.
    functions = one_param("string", default=None) + one_param("integer", default="dontcare")
    functions[1]["name"] = "g"
    assert check_call("f", {"x": None}, functions) is None
    assert check_call("g", {"x": "dontcare"}, functions) is None
    assert check_call("f", {"x": 5}, functions) == "'x': 5 is not of type 'string', nor its default None"
    assert check_call("g", {"x": "any"}, functions) == "'x': 'any' is not of type 'integer', nor its default 'dontcare'"


def test_openai_tool_parameters_are_used_as_the_json_schema_they_are():
    tool = {
        "name": "book",
        "parameters": {
            "type": "object",
            "$defs": {"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}},
            "properties": {
                "check_in": {"$ref": "#/$defs/date"},
                "note": {"type": ["string", "null"]},
                "guests": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["family"]}]},
            },
            "required": ["check_in", "note", "guests"],
            "additionalProperties": False,
        },
    }
    assert check_call("book", {"check_in": "2025-01-02", "note": None, "guests": "family"}, [tool]) is None
    assert check_call("book", {"check_in": "2 Jan", "note": None, "guests": 2}, [tool]).startswith("'check_in': '2 Jan' does not match")
    assert check_call("book", {"check_in": "2025-01-02", "note": None, "guests": 0}, [tool]) is not None


def test_a_remote_ref_is_never_fetched(monkeypatch):
    opened = []

    def record_fetch(request, *args, **kwargs):  # whatever it raises, jsonschema reports as unresolvable
        opened.append(request)
        raise OSError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", record_fetch)
    tool = {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "http://127.0.0.1:9/x.json", "default": 0}}}}
    with pytest.raises(ValueError, match="unresolvable"):
        check_call("f", {"x": 1}, [tool])
    assert opened == []


def test_reasons_stay_short_whatever_the_model_wrote():
    reason = check_call("get_weather", {"city": ["Oslo"] * 1000, "days": 1}, WEATHER)
    assert reason.startswith("'city': ['Oslo'") and len(reason) <= 200


def test_check_structured_wants_one_object_with_exactly_name_and_arguments():
    good = parse_structured('{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}')
    assert check_structured(good, WEATHER) is None
    assert check_structured(NOT_PARSED, WEATHER) == "the answer is not JSON"
    assert check_structured(parse_structured("[1]"), WEATHER) == "the answer must be a JSON object, got an array"
    assert "exactly 'name' and 'arguments'" in check_structured({"name": "noop"}, WEATHER)
    assert "exactly 'name' and 'arguments'" in check_structured({"name": "noop", "arguments": {}, "why": "x"}, WEATHER)
    assert check_structured({"name": "nope", "arguments": {}}, WEATHER) == "no function named 'nope' among the request's tools"
    assert check_structured({"name": "get_weather", "arguments": {"city": "Oslo"}}, WEATHER) == "arguments miss required 'days'"


# ---------------------------------------------------------------------------------------------
# The project's own gold calls

# BFCL gold calls that break their own signature: a data bug each, not a mapping one.
BFCL_GOLD_AGAINST_ITS_SCHEMA = {
    "simple_python_307": "'venue': True is not of type 'string'",  # a boolean for a string
    # no acceptable value at all for required parameters ([] in possible_answer)
    "live_simple_106-63-0": "arguments miss required",
    "live_simple_112-68-0": "arguments miss required",
    # a required parameter whose only acceptable value is "" (see bfcl_match)
    "live_multiple_507-149-4": "arguments miss required 'origin_airport'",
    # a list given where the schema has an enum of strings (no `items`)
    "live_simple_71-35-0": "'metrics': ['view'] is not one of",
    "live_multiple_152-58-6": "'metrics': ['temperature', 'humidity'] is not one of",
    # booleans and integers for an enum of their string spellings
    **{f"live_multiple_{n}": "'smoking_allowed': " for n in ("301-131-0", "302-131-1", "303-131-2", "304-131-3",
                                                             "306-131-5", "307-131-6", "308-131-7")},
    **{f"live_multiple_{n}": "'is_unisex': " for n in ("552-153-1", "553-153-2")},
    **{f"live_multiple_{n}": "'number_of_rooms': " for n in ("595-158-1", "596-158-2")},
    **{f"live_multiple_{n}": "'in_unit_laundry': " for n in ("731-167-2", "732-167-3", "733-167-4", "734-167-5",
                                                             "735-167-6", "736-167-7", "737-167-8")},
    # strings outside the enum (BFCL's checker compares values, never the enum)
    "live_multiple_87-38-4": "'type': 'openai' is not one of",
    "live_multiple_750-169-5": "'genre': 'Any' is not one of",
    "live_multiple_756-169-11": "'genre': 'horror' is not one of",
    "live_multiple_835-178-10": "'genre': 'Reggaeton' is not one of",
    "live_multiple_871-182-8": "'genre': 'Play' is not one of",
    "live_multiple_947-197-0": "'duration': '5 minutes' is not one of",
}


@pytest.mark.parametrize("category", ["simple_python", "multiple", "live_simple", "live_multiple"])
def test_every_bfcl_gold_call_validates_except_those_that_break_their_own_schema(category):
    examples, _ = load_bfcl((category,))
    refused = {example.id: check_call(example.name, example.arguments, example.functions) for example in examples}
    refused = {row_id: reason for row_id, reason in refused.items() if reason is not None}
    known = {row_id: why for row_id, why in BFCL_GOLD_AGAINST_ITS_SCHEMA.items() if row_id.rsplit("_", 1)[0] == category}
    assert set(refused) == set(known)
    for row_id, reason in refused.items():
        assert reason.startswith(known[row_id]), (row_id, reason)


def test_every_xlam_gold_call_validates_in_the_stored_and_in_xlam_s_own_shape():
    examples, _ = load_xlam(XLAM_FIXTURE)
    assert examples
    raw_tools = {str(row["id"]): json_input.loads(row["tools"]) for row in json_input.loads(XLAM_FIXTURE.read_text())}
    for example in examples:
        assert check_call(example.name, example.arguments, example.functions) is None, example.id
        assert check_call(example.name, example.arguments, raw_tools[example.id]) is None, example.id
        for stored, raw in zip(example.functions, raw_tools[example.id]):
            assert to_json_schema(raw["parameters"])["required"] == stored["parameters"]["required"]


def test_xlam_optional_parameters_may_be_left_out_and_required_ones_may_not():
    tools = [{"name": "find_recipes", "parameters": {
        "ingredients": {"type": "List[str]", "description": "Ingredients.", "default": ""},
        "max_minutes": {"type": "int, optional", "default": 60},
    }}]
    assert check_call("find_recipes", {"ingredients": ["tofu"]}, tools) is None
    assert check_call("find_recipes", {"max_minutes": 30}, tools) == "arguments miss required 'ingredients'"
    assert check_call("find_recipes", {"ingredients": ["tofu"], "max_minutes": "30"}, tools) == "'max_minutes': '30' is not of type 'integer'"
    # xLAM's "" default of a required parameter is a placeholder, not a value to accept
    assert check_call("find_recipes", {"ingredients": ""}, tools) == "'ingredients': '' is not of type 'array'"
