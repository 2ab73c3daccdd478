"""The gateway's choice of requests for the SLM (`app.gateway_requests`): what OpenAI clients send,
read as the toolcall track's prompt or sent to the hosted model with a reason; the SLM's answer read
back by the real openai SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from slm_swap.app.gateway_requests import (
    REASONS,
    NotSwappable,
    Swappable,
    Usage,
    classify,
    completion_chunks,
    server_sent_events,
    slm_messages,
    text_response,
    tool_calls_response,
)
from slm_swap.core.prompts import SYSTEM_PROMPT, build_messages
from slm_swap.core.tracks import get_row_track
from slm_swap.data.bfcl import load_bfcl
from slm_swap.data.examples import Example, build_row
from slm_swap.data.xlam import load_xlam
from slm_swap.llm.chat_api import ChatRequest

TRACK_MODELS = {"structured", "toolcall"}
XLAM_EXAMPLES = load_xlam(Path(__file__).parent / "fixtures" / "xlam_sample.json")[0][:6]
BFCL_EXAMPLES = load_bfcl(("simple_python",))[0][:4]
EXAMPLES = XLAM_EXAMPLES + BFCL_EXAMPLES
WEATHER = {"name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def tools(*functions: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": function} for function in functions]


def decide(**body: Any) -> Swappable | NotSwappable:
    """Classify a request body as a client would send it (checked as `serve` checks it)."""
    body.setdefault("model", "gpt-4o")
    body.setdefault("messages", [{"role": "user", "content": "Weather in Oslo?"}])
    return classify(ChatRequest.model_validate(body), TRACK_MODELS)


# --- OpenAI tool calling -------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_tool_request_gets_the_toolcall_rows_prompt(example: Example):
    # What an agent framework sends for a dataset row: its instructions, the user's text, the tools.
    decision = decide(tools=tools(*example.functions), messages=[
        {"role": "system", "content": "You are a helpful agent."}, {"role": "user", "content": example.request}])
    assert decision == Swappable("toolcall", example.request, tuple(example.functions), "tool_calls", None)
    # The SLM sees exactly the evaluated (and trained-on) row's prompt.
    assert slm_messages(decision) == build_messages(build_row(example, "toolcall")["prompt"])


@pytest.mark.parametrize("model", ["gpt-4o", "my-azure-deployment", "structured", "toolcall", None])
def test_tool_requests_go_to_toolcall_whatever_the_model_name(model):
    decision = decide(model=model, tools=tools(WEATHER))
    assert isinstance(decision, Swappable) and decision.track == "toolcall" and decision.answer_as == "tool_calls"


@pytest.mark.parametrize("choice", [None, "auto", "required"])
def test_tool_choice_auto_or_required_offers_every_tool(choice):
    decision = decide(tools=tools(WEATHER, TIME), **({"tool_choice": choice} if choice else {}))
    assert decision.functions == (WEATHER, TIME) and decision.forced_name is None


def test_named_tool_choice_narrows_to_that_function_and_forces_it():
    decision = decide(tools=tools(WEATHER, TIME), tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert decision.functions == (TIME,) and decision.forced_name == "get_time"
    assert '"get_weather"' not in slm_messages(decision)[1]["content"]


def test_allowed_tools_choice_narrows_without_forcing():
    choice = {"type": "allowed_tools",
              "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    decision = decide(tools=tools(TIME, WEATHER), tool_choice=choice)
    assert decision.functions == (WEATHER,) and decision.forced_name is None


def test_the_last_user_message_is_the_request():
    decision = decide(tools=tools(WEATHER), messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?", "tool_calls": []},  # an empty list is no call
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]},
    ])
    assert decision.user_text == "Weather in Oslo?"


def test_a_tool_without_description_or_parameters_takes_none():
    decision = decide(tools=[{"type": "function", "function": {"name": "ping", "strict": True}}])
    assert decision.functions == ({"name": "ping", "description": "", "parameters": {"type": "object", "properties": {}}},)


def test_odd_option_values_are_not_mistaken_for_refusals():
    # Malformed values the hosted model will judge itself: classifying them must not raise.
    assert isinstance(decide(tools=tools(WEATHER), modalities=5, top_logprobs=0, audio=None), Swappable)


def test_streaming_and_sampling_options_do_not_refuse():
    decision = decide(tools=tools(WEATHER), stream=True, stream_options={"include_usage": True}, temperature=0.7,
                      parallel_tool_calls=False, max_tokens=64, logprobs=False, response_format={"type": "text"},
                      user="u1", seed=3, metadata={"app": "x"})
    assert isinstance(decision, Swappable)


# --- Requests addressed to a track by model name ------------------------------------------------

@pytest.mark.parametrize("track", sorted(TRACK_MODELS))
@pytest.mark.parametrize("example", [XLAM_EXAMPLES[0], BFCL_EXAMPLES[0]], ids=lambda e: e.id)
def test_track_addressed_eval_messages_are_swappable(track: str, example: Example):
    messages = build_messages(build_row(example, track)["prompt"])  # what the Mastra client sends
    decision = decide(model=track, messages=messages)
    assert decision == Swappable(track, example.request, tuple(example.functions), "text")
    assert slm_messages(decision) == messages


def test_track_addressed_accepts_developer_role_and_text_parts():
    system, user = build_messages(build_row(XLAM_EXAMPLES[1], "structured")["prompt"])
    decision = decide(model="structured", messages=[
        {"role": "developer", "content": system["content"]},
        {"role": "user", "content": [{"type": "text", "text": user["content"]}]}])
    assert decision.user_text == XLAM_EXAMPLES[1].request


def eval_messages(edit=lambda prompt: prompt, system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    prompt = build_row(XLAM_EXAMPLES[0], "toolcall")["prompt"]
    return [{"role": "system", "content": system}, {"role": "user", "content": edit(prompt)}]


# --- Everything else: the hosted model, with a reason --------------------------------------------

NOT_SWAPPABLE = [
    ("no_messages", {"messages": [], "tools": tools(WEATHER)}),
    ("n_not_1", {"n": 2, "tools": tools(WEATHER)}),
    ("logprobs_requested", {"logprobs": True, "tools": tools(WEATHER)}),
    ("logprobs_requested", {"model": "toolcall", "messages": eval_messages(), "logprobs": True, "top_logprobs": 3}),
    ("audio_requested", {"modalities": ["text", "audio"], "tools": tools(WEATHER)}),
    ("audio_requested", {"audio": {"voice": "alloy", "format": "wav"}, "tools": tools(WEATHER)}),
    ("web_search_requested", {"web_search_options": {}, "tools": tools(WEATHER)}),
    ("legacy_functions", {"functions": [WEATHER], "function_call": "auto"}),
    ("image_content", {"tools": tools(WEATHER), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Weather where this was taken?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
    ("non_text_content", {"tools": tools(WEATHER), "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}),
    ("no_tools", {}),
    ("no_tools", {"tools": []}),
    ("tool_type_not_function", {"tools": [*tools(WEATHER), {"type": "custom", "custom": {"name": "sql"}}]}),
    ("malformed_tools", {"tools": "get_weather"}),
    ("malformed_tools", {"tools": [{"type": "function", "function": {"description": "no name"}}]}),
    ("malformed_tools", {"tools": [{"function": WEATHER}]}),  # no type
    ("malformed_tools", {"tools": tools({**WEATHER, "parameters": ["city"]})}),
    ("malformed_tools", {"tools": tools({**WEATHER, "name": 'say "hi"'})}),  # a <tool_call name="..."> cannot hold it
    ("duplicate_tool_names", {"tools": tools(WEATHER, {**TIME, "name": "get_weather"})}),
    ("tool_choice_none", {"tools": tools(WEATHER), "tool_choice": "none"}),
    ("tool_choice_unsupported", {"tools": tools(WEATHER), "tool_choice": "any"}),
    ("tool_choice_unsupported", {"tools": tools(WEATHER), "tool_choice": {"type": "custom", "custom": {"name": "sql"}}}),
    ("tool_choice_unsupported", {"tools": tools(WEATHER), "tool_choice": {"type": "function"}}),
    ("tool_choice_unsupported", {"tools": tools(WEATHER), "tool_choice": {"type": ["function"]}}),
    ("tool_choice_unsupported", {"tools": tools(WEATHER), "tool_choice": ["auto"]}),
    ("tool_choice_unknown_function", {"tools": tools(WEATHER), "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
    ("tool_choice_unknown_function", {"tools": tools(WEATHER), "tool_choice": {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]}}}),
    ("tool_result_in_conversation", {"tools": tools(WEATHER), "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 3}"},
        {"role": "user", "content": "And in Bergen?"}]}),
    ("tool_result_in_conversation", {"tools": tools(WEATHER), "messages": [
        {"role": "user", "content": "Weather in Oslo?"}, {"role": "function", "name": "get_weather", "content": "3"},
        {"role": "user", "content": "And in Bergen?"}]}),
    ("assistant_tool_calls_in_conversation", {"tools": tools(WEATHER), "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "user", "content": "Never mind."}]}),
    ("last_message_not_user", {"tools": tools(WEATHER), "messages": [
        {"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": "Calling"}]}),
    ("last_message_not_user", {"tools": tools(WEATHER), "messages": [{"role": "system", "content": "Weather in Oslo?"}]}),
    ("empty_user_text", {"tools": tools(WEATHER), "messages": [{"role": "user", "content": " \n"}]}),
    ("not_eval_messages", {"model": "toolcall"}),  # a plain chat with a track's name
    ("not_eval_messages", {"model": "toolcall", "messages": eval_messages(system="You are a pirate.")}),
    ("not_eval_messages", {"model": "toolcall", "messages": eval_messages(lambda p: p.replace('": "', '":"'))}),
    ("not_eval_messages", {"model": "toolcall", "messages": eval_messages(lambda p: p.replace("Request:", "Task:"))}),
    ("not_eval_messages", {"model": "toolcall", "messages": eval_messages(lambda p: "Please. " + p)}),
    ("not_eval_messages", {"model": "structured", "messages": eval_messages()}),  # the other track's prompt
    ("not_eval_messages", {"model": "toolcall", "messages": [*eval_messages(), {"role": "assistant", "content": "ok"}]}),
]


@pytest.mark.parametrize(("reason", "body"), NOT_SWAPPABLE, ids=[f"{r}-{i}" for i, (r, _) in enumerate(NOT_SWAPPABLE)])
def test_not_swappable_requests_say_why(reason: str, body: dict[str, Any]):
    decision = decide(**body)
    assert isinstance(decision, NotSwappable) and decision.reason == reason, decision
    assert decision.detail


def test_every_reason_in_the_table_is_tested():
    assert {reason for reason, _ in NOT_SWAPPABLE} == set(REASONS)


# --- The SLM's answer in OpenAI's shape ----------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_tool_call_answer_reads_back_through_the_openai_sdk(example: Example):
    answer = get_row_track("toolcall").completion(example.name, example.arguments)  # the SLM's text
    completion = ChatCompletion.model_validate(tool_calls_response(answer, "gpt-4o", Usage(120, 30)))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == example.name
    assert json.loads(call.function.arguments) == example.arguments
    assert completion.usage.total_tokens == 150 and completion.model == "gpt-4o"


def test_tool_call_arguments_keep_unicode_and_numbers():
    arguments = {"city": "Zürich", "days": 3, "ratio": 0.5, "tags": ["a", {"b": None}], "ok": True}
    text = '  <tool_call name="forecast">' + json.dumps(arguments, ensure_ascii=False) + "</tool_call>\n"
    message = ChatCompletion.model_validate(tool_calls_response(text, "m", Usage(1, 1))).choices[0].message
    assert json.loads(message.tool_calls[0].function.arguments) == arguments


def test_each_answer_gets_its_own_ids():
    text = '<tool_call name="get_weather">{"city": "Oslo"}</tool_call>'
    first, second = (tool_calls_response(text, "m", Usage(1, 1)) for _ in range(2))
    assert first["id"] != second["id"]
    assert first["choices"][0]["message"]["tool_calls"][0]["id"] != second["choices"][0]["message"]["tool_calls"][0]["id"]


@pytest.mark.parametrize("text", ["It is sunny.", '<tool_call name="a">[1]</tool_call>',
                                  '<tool_call name="a">{}</tool_call><tool_call name="b">{}</tool_call>'])
def test_an_answer_that_is_not_one_tool_call_is_refused(text):
    with pytest.raises(ValueError):
        tool_calls_response(text, "m", Usage(1, 1))


def test_track_addressed_answer_is_plain_text():
    text = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    completion = ChatCompletion.model_validate(text_response(text, "structured", Usage(40, 12), finish_reason="length"))
    assert completion.choices[0].message.content == text and completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 12


# --- The same answer streamed -------------------------------------------------------------------

def accumulated(chunks: list[dict[str, Any]]) -> ChatCompletion:
    """The chunks read back as the SDK's streaming users read them."""
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


@pytest.mark.parametrize("include_usage", [True, False])
def test_streamed_tool_call_accumulates_to_the_whole_answer(include_usage: bool):
    text = '<tool_call name="forecast">{"city": "Zürich", "days": 3}</tool_call>'
    whole = tool_calls_response(text, "gpt-4o", Usage(120, 30))
    chunks = completion_chunks(whole, include_usage)
    streamed = accumulated(chunks)
    [call] = streamed.choices[0].message.tool_calls
    [expected] = ChatCompletion.model_validate(whole).choices[0].message.tool_calls
    assert (call.id, call.type, call.function.name, call.function.arguments) == (
        expected.id, expected.type, expected.function.name, expected.function.arguments)
    assert streamed.choices[0].finish_reason == "tool_calls" and streamed.choices[0].message.content is None
    assert {chunk["id"] for chunk in chunks} == {whole["id"]} and streamed.model == "gpt-4o"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[1]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    if include_usage:  # OpenAI: usage only in a last chunk without choices
        assert chunks[-1]["choices"] == [] and streamed.usage.total_tokens == 150
        assert all(chunk["usage"] is None for chunk in chunks[:-1])
    else:
        assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks) and streamed.usage is None


def test_streamed_text_answer_accumulates_to_the_text():
    text = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    streamed = accumulated(completion_chunks(text_response(text, "structured", Usage(40, 12)), include_usage=False))
    assert streamed.choices[0].message.content == text and streamed.choices[0].finish_reason == "stop"
    assert not streamed.choices[0].message.tool_calls


def test_server_sent_events_are_data_lines_ending_with_done():
    chunks = completion_chunks(text_response("Grüße\nzwei Zeilen", "m", Usage(1, 1)), include_usage=True)
    events = server_sent_events(chunks)
    assert events[-1] == "data: [DONE]\n\n"
    assert all(event.startswith("data: ") and event.endswith("\n\n") and "\n" not in event[:-2] for event in events)
    assert [json.loads(event.removeprefix("data: ")) for event in events[:-1]] == chunks
