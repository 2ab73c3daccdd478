"""`slm_swap.infra.json_input.loads`, the one reader of JSON from outside the program: what it refuses
(each with a `JsonInputError`, a ValueError, never RecursionError or a bare ValueError from `int()`)
and that ordinary JSON, unicode and big-but-legal numbers come through as `json.loads` reads them."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slm_swap.infra.json_input import MAX_DEPTH, JsonInputError, loads

DIGIT_LIMIT = sys.get_int_max_str_digits()


def nested(depth: int, open_="[", close="]") -> str:
    return open_ * depth + close * depth


@pytest.mark.parametrize("text,reason", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ('{"a": 1} trailing', "not valid JSON"),
    (nested(100_000), f"nested more than {MAX_DEPTH} levels deep"),  # json itself gives up with RecursionError
    (nested(MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep"),  # json reads it; the limit refuses it
    ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "nested more than"),
    ("9" * (DIGIT_LIMIT + 700), f"longer than the {DIGIT_LIMIT} digits"),
    ('{"x": -' + "1" * 5000 + "}", "longer than"),
    ("1e999", "out of range"),
    ("[-1e400]", "out of range"),
    ("NaN", "NaN is not a JSON value"),
    ('{"a": Infinity}', "Infinity is not a JSON value"),
    ("-Infinity", "-Infinity is not a JSON value"),
    ('"a\\ud800b"', "lone surrogate"),
    ('{"\\udfff": 1}', "lone surrogate"),  # in a key too
    ('["ok", ["\\udc80"]]', "lone surrogate"),
    ('"a\ud800b"', "lone surrogate"),  # the character itself, not the escape
])
def test_refusals_say_what_is_wrong(text, reason):
    with pytest.raises(JsonInputError, match=reason.replace("(", r"\(")) as caught:
        loads(text)
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize("data,reason", [
    (b'{"a": "\xff"}', "not UTF-8 text"),
    (b"\xc3\x28", "not UTF-8 text"),
    (b'"\xed\xa0\x80"', "not UTF-8 text"),  # a surrogate encoded as UTF-8 bytes is not UTF-8
])
def test_bytes_that_are_not_utf8_are_refused(data, reason):
    with pytest.raises(JsonInputError, match=reason):
        loads(data)


def test_documents_over_max_bytes_are_refused_whatever_their_type():
    assert loads(b"[1, 2]", max_bytes=6) == [1, 2]
    for document in (b"[1, 2] ", "[1, 2] ", '"\u00e9\u00e9\u00e9"'):  # the last: 5 characters, 8 UTF-8 bytes
        with pytest.raises(JsonInputError, match="more than the 6 accepted"):
            loads(document, max_bytes=6)


def test_max_depth_is_the_callers():
    assert loads(nested(3), max_depth=3) == [[[]]]
    with pytest.raises(JsonInputError, match="nested more than 2 levels deep"):
        loads(nested(3), max_depth=2)
    assert loads(nested(MAX_DEPTH)) is not None  # the default limit itself is accepted


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3, "metric": true, "extra": null}}',
    '"na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \U0001f600"',  # unicode as characters
    '"\\u00e9\\ud83d\\ude00"',  # an escaped surrogate pair is one character, not a lone surrogate
    "9" * DIGIT_LIMIT,  # as long as Python reads
    "-" + "9" * DIGIT_LIMIT,
    "1.7976931348623157e308",  # the largest float
    "5e-324", "1e-400",  # the smallest, and one that underflows to 0.0 (finite)
    "[0.1, -0, 1E+2, 1e-2]",
    '{"": [], "a": {}, "b": [[], {}]}',
    '  {"padded": "whitespace"}  \n',
])
def test_ordinary_json_reads_as_json_loads_reads_it(text):
    assert loads(text) == json.loads(text)
    assert loads(text.encode("utf-8")) == json.loads(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans())
def test_any_value_json_writes_reads_back_equal(value, ensure_ascii):
    text = json.dumps(value, ensure_ascii=ensure_ascii)  # hypothesis' text() holds no lone surrogates
    assert loads(text) == value
    assert loads(text.encode("utf-8")) == value


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64) | st.text(max_size=64))
def test_garbage_either_reads_or_is_refused_with_json_input_error(data):
    try:
        loads(data)
    except JsonInputError:
        pass
