"""The hosted stand-in of the gateway's demo and replay bench (`gateway_stand_in.ToolCallingTeacher`),
driven with the real `openai` SDK over HTTP: it answers OpenAI tool calling with each row's gold call as
`tool_calls`, with the scripted teacher's faults, and a track's evaluation messages as the teacher does.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from slm_swap.app.gateway_stand_in import ToolCallingTeacher
from slm_swap.core.prompts import build_messages, build_prompt
from slm_swap.core.tracks import get_row_track
from slm_swap.data.xlam import load_xlam

pytestmark = pytest.mark.usefixtures("loopback_only")

FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"
FAULTS = {1: "wrong", 2: "broken", 3: "down", 4: "busy"}  # row index -> the teacher's behaviour


@pytest.fixture(scope="module")
def examples():
    return load_xlam(FIXTURE)[0][:5]


@pytest.fixture(scope="module")
def stand_in(examples):  # one for the module: only the busy row keeps state (its first request), asked in one test
    with ToolCallingTeacher(examples, {examples[i].id: fault for i, fault in FAULTS.items()}) as hosted:
        yield hosted


def ask_tools(stand_in: ToolCallingTeacher, example, max_retries: int = 0):
    client = openai.OpenAI(base_url=stand_in.url, api_key="any-key", max_retries=max_retries)
    return client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": example.request}],
        tools=[{"type": "function", "function": function} for function in example.functions])


def the_call(answer) -> tuple[str, dict]:
    [call] = answer.choices[0].message.tool_calls
    return call.function.name, json.loads(call.function.arguments)


def test_a_tool_calling_request_gets_the_gold_call_as_tool_calls(stand_in, examples):
    answer = ask_tools(stand_in, examples[0])
    assert the_call(answer) == (examples[0].name, examples[0].arguments)
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    assert answer.model == stand_in.model and "not-a-model" in answer.model
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0


def test_a_wrong_row_is_a_valid_call_with_other_arguments(stand_in, examples):
    name, arguments = the_call(ask_tools(stand_in, examples[1]))
    assert name == examples[1].name and arguments != examples[1].arguments
    assert set(arguments) == set(examples[1].arguments)


def test_a_broken_row_is_text_and_no_call(stand_in, examples):
    message = ask_tools(stand_in, examples[2]).choices[0].message
    assert not message.tool_calls
    assert message.content and message.content.startswith(f'<tool_call name="{examples[2].name}">')


def test_a_down_row_fails_and_a_busy_row_answers_after_one_429(stand_in, examples):
    with pytest.raises(openai.InternalServerError):
        ask_tools(stand_in, examples[3])
    with pytest.raises(openai.RateLimitError):
        ask_tools(stand_in, examples[4])
    assert the_call(ask_tools(stand_in, examples[4])) == (examples[4].name, examples[4].arguments)


def test_a_tracks_evaluation_messages_get_the_gold_completion_as_text(stand_in, examples):
    track = get_row_track("structured")
    prompt = build_prompt("structured", examples[0].request, examples[0].functions)
    client = openai.OpenAI(base_url=stand_in.url, api_key="any-key", max_retries=0)
    answer = client.chat.completions.create(model="structured", messages=build_messages(prompt))
    assert answer.choices[0].message.content == track.completion(examples[0].name, examples[0].arguments)
    assert not answer.choices[0].message.tool_calls


def test_a_body_that_is_not_a_request_is_refused_in_one_line(stand_in):
    for body in (b"{not json", b"[1, 2]", b'{"messages": "hello"}'):
        response = httpx.post(f"{stand_in.url}/chat/completions", content=body)
        assert response.status_code == 400
        assert "\n" not in response.json()["error"]["message"]
