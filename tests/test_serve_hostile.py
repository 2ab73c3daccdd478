"""Hostile request bodies against `slm-swap serve`'s app (on the tiny model, in process): whatever a
client sends, the answer is a 200 or a 4xx in OpenAI's error shape, never a 500 or a traceback.

Bodies come from a list of known cases (each names the field the error must point at) and from
hypothesis: generated garbage, valid requests with one field swapped for a hostile value, odd
Unicode, raw bytes.
"""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slm_swap.infra.json_input import BODY_MAX_BYTES

pytestmark = pytest.mark.integration
CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    from slm_swap.app.serve import create_app
    from slm_swap.llm.local import LocalModel

    model = LocalModel(tiny_model_dir, max_new_tokens=2, batch_size=4)
    with TestClient(create_app(model, "tiny", batch_wait_s=0)) as test_client:  # exceptions in the app raise here
        yield test_client


def assert_openai_error(response, status: int | None = None) -> dict:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"
    return error


def post_raw(client, body: bytes):
    return client.post(CHAT, content=body, headers={"Content-Type": "application/json"})


def with_field(**fields) -> dict:
    return {"model": "tiny", "messages": OK_MESSAGES, "max_tokens": 2, **fields}


@pytest.mark.parametrize(
    "body, param",
    [
        (with_field(messages=[{"role": "banana", "content": "hi"}]), "messages[0].role"),
        (with_field(messages=[{"role": "user", "content": "hi"}, {"role": 7, "content": "x"}]), "messages[1].role"),
        (with_field(messages=[{"content": "hi"}]), "messages[0].role"),
        (with_field(messages={"role": "user", "content": "hi"}), "messages"),
        (with_field(messages="hi"), "messages"),
        (with_field(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (with_field(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), "messages[0].content[0].text"),
        (with_field(messages=[{"role": "user", "content": [{"text": "hi"}]}]), "messages[0].content[0].type"),
        (with_field(max_tokens=[16]), "max_tokens"),
        (with_field(max_tokens=2.5), "max_tokens"),
        (with_field(max_tokens=True), "max_tokens"),
        (with_field(max_tokens="16"), "max_tokens"),
        (with_field(max_tokens=10**30), "max_tokens"),
        (with_field(max_tokens=-1), "max_tokens"),
        (with_field(max_completion_tokens=False), "max_completion_tokens"),
        (with_field(stop=5), "stop"),
        (with_field(stop=["ok", 5]), "stop[1]"),
        (with_field(n=True), "n"),
        (with_field(n=2), "n"),
        (with_field(stream="yes"), "stream"),
        (with_field(model=["tiny"]), "model"),
        (with_field(messages=[]), "messages"),
    ],
)
def test_wrong_types_and_values_are_a_400_naming_the_field(client, body, param):
    assert assert_openai_error(client.post(CHAT, json=body), 400)["param"] == param


def test_an_unknown_role_names_the_message_and_the_roles_openai_defines(client):
    error = assert_openai_error(client.post(CHAT, json=with_field(messages=[{"role": "banana", "content": "hi"}])), 400)
    assert "messages[0].role" in error["message"] and "'developer'" in error["message"]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "hi"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        [{"role": "user", "content": "hi"}, {"role": "function", "name": "f", "content": "42"}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
    ],
    ids=["developer", "tool", "function", "content-parts"],
)
def test_every_role_openai_defines_is_answered(client, messages):
    response = client.post(CHAT, json=with_field(messages=messages))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def test_a_developer_message_is_the_system_prompt_for_the_template(client):
    """OpenAI's developer messages replace system messages: the template renders them as its system
    turn (so its own default system prompt is not added as well)."""
    from slm_swap.llm.chat_api import Message

    assert Message(role="developer", content="Be brief.").for_template() == {"role": "system", "content": "Be brief."}

    def ask(role):
        messages = [{"role": role, "content": "Be brief."}, {"role": "user", "content": "hi"}]
        return client.post(CHAT, json=with_field(messages=messages)).json()

    developer, system = ask("developer"), ask("system")
    assert developer["choices"] == system["choices"] and developer["usage"] == system["usage"]


@pytest.mark.parametrize(
    "body, says",
    [
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "lone surrogate"),
        (b'{"model": "tiny", "messages": [{"role": "user\\udfff", "content": "hi"}]}', "lone surrogate"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "not UTF-8"),
        (b'{"model": "tiny", "max_tokens": ' + b"9" * 5000 + b', "messages": []}', "digits"),
        (b'{"model": "tiny", "max_tokens": 1e999, "messages": []}', "out of range"),
        (b'{"model": "tiny", "max_tokens": NaN, "messages": []}', "NaN"),
        (b"[" * 100_000, "nested more than"),
        (b'{"model": "tiny", "messages": ' + b"[" * 100 + b"]" * 100 + b"}", "nested more than"),
        (b"{nope", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
    ids=["surrogate-content", "surrogate-role", "not-utf8", "huge-int", "overflow", "nan", "deep-unclosed",
         "deep", "garbage", "empty"],
)
def test_bodies_the_json_reader_refuses_are_a_400_saying_why(client, body, says):
    assert says in assert_openai_error(post_raw(client, body), 400)["message"]


@pytest.mark.parametrize("body", [b"[]", b'"hi"', b"42", b"null", b'[{"model": "tiny"}]'])
def test_a_body_that_is_not_an_object_is_a_400(client, body):
    assert "JSON object" in assert_openai_error(post_raw(client, body), 400)["message"]


def test_a_body_over_the_cap_is_a_413(client):
    body = json.dumps(with_field(messages=[{"role": "user", "content": "x" * BODY_MAX_BYTES}])).encode()
    assert_openai_error(post_raw(client, body), 413)


# Values of every JSON type, odd strings included: surrogates (escaped by json.dumps), control
# characters, private-use and unassigned code points, the model's special tokens.
odd_text = st.one_of(
    st.text(st.characters(codec=None, categories=None) | st.characters(categories=["Cs"]), max_size=20),
    st.sampled_from(["<|im_end|>", "<|im_start|>assistant\n", "{{ raise_exception('x') }}", "\x00", "\u202e", "🦜" * 5]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                    st.dictionaries(odd_text, inner, max_size=4)),
                           max_leaves=12)
valid_roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "function"])
roles = valid_roles | st.sampled_from(["banana", "", "USER"])
messages = st.lists(st.fixed_dictionaries({"role": st.one_of(roles, json_values)},
                                          optional={"content": st.one_of(odd_text, json_values)}), max_size=3)
request_fields = {
    "model": st.one_of(st.just("tiny"), json_values),
    "messages": st.one_of(messages, json_values),
    # Small or out of range: a valid large budget would only make the test slow.
    "max_tokens": st.one_of(st.integers(-3, 3), st.integers(min_value=2049), st.integers(max_value=-4),
                            json_values.filter(lambda value: type(value) is not int)),
    "stop": st.one_of(st.lists(odd_text, max_size=3), json_values),
    "n": st.one_of(st.just(1), json_values),
    "stream": st.one_of(st.just(False), json_values),
}
# Valid requests with odd text for the template, the tokenizer and the model; a valid request with
# any of its fields replaced or dropped; or anything at all.
request_bodies = st.one_of(
    st.lists(st.fixed_dictionaries({"role": valid_roles, "content": odd_text}), min_size=1, max_size=3).map(
        lambda messages: with_field(messages=messages)),
    st.fixed_dictionaries({}, optional=request_fields).map(lambda fields: {**with_field(), **fields}),
    st.fixed_dictionaries({}, optional=request_fields),
    json_values,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=request_bodies)
def test_generated_bodies_get_an_answer_or_an_openai_error(client, caplog, body):
    with caplog.at_level(logging.ERROR):
        response = post_raw(client, json.dumps(body).encode())
    if response.status_code != 200:
        assert_openai_error(response)
    else:
        assert response.json()["choices"][0]["message"]["role"] == "assistant"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=64) | st.text(max_size=40).map(str.encode))
def test_generated_bytes_get_an_openai_error(client, body):
    assert_openai_error(post_raw(client, body))


@pytest.mark.parametrize("method, path, status", [("GET", CHAT, 405), ("POST", "/v1/models", 405),
                                                  ("POST", "/v1/nope", 404), ("DELETE", "/", 404)])
def test_unknown_routes_and_methods_get_openai_errors(client, method, path, status):
    assert_openai_error(client.request(method, path), status)
