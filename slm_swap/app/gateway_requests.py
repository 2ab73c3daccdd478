"""Which chat requests the gateway's SLM may take, what it is asked, and its answer in OpenAI's shape.

    chat = ChatRequest.model_validate(body)
    decision = classify(chat, track_models={"structured", "toolcall"})
    if isinstance(decision, NotSwappable):   # decision.reason: a code of REASONS; the hosted model answers
        ...
    messages = slm_messages(decision)        # exactly what the evaluation sends for that track
    body = tool_calls_response(slm_text, model=chat.model, usage=Usage(12, 9))   # decision.answer_as == "tool_calls"
    body = text_response(slm_text, model=chat.model, usage=Usage(12, 9))         # decision.answer_as == "text"
    events = server_sent_events(completion_chunks(body, include_usage=True))    # the same answer for `stream: true`

Two kinds of request are swappable:
- OpenAI tool calling (what agent frameworks send), whatever the model name: function tools, the
  last message the user's, no tool round trip yet. The SLM sees the toolcall track's prompt built
  from the last user message's text and the tools' signatures; earlier system or plain-text turns
  are not part of that prompt (the track was evaluated on a request and its functions alone).
- A request addressed to a track by model name (`structured`, `toolcall`) whose messages are the
  evaluation's `[system, user]` messages, as the Mastra client sends them. Its answer is plain text.
The Azure route names the model in its path: set `chat.model` to the deployment before classifying.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from slm_swap.core.prompts import SYSTEM_PROMPT, build_messages, build_prompt
from slm_swap.core.tracks import get_row_track, parse_toolcall
from slm_swap.infra import json_input
from slm_swap.infra.fileio import canonical_json
from slm_swap.llm.chat_api import ChatRequest, Message

# Why a request goes to the hosted model: the code recorded as `not_swappable`, and what it means.
REASONS: dict[str, str] = {
    "no_messages": "the request has no messages",
    "n_not_1": "n asks for more than one choice; the SLM gives one",
    "logprobs_requested": "logprobs/top_logprobs asked: the SLM's tokens are of its own format, not of the answer sent",
    "audio_requested": "audio output asked (`audio`, or `modalities` with audio)",
    "web_search_requested": "web_search_options: the answer needs a web search",
    "legacy_functions": "the deprecated `functions`/`function_call` parameters instead of `tools`",
    "image_content": "a message carries an image",
    "non_text_content": "a message carries a part that is neither text nor an image (audio, a file, a refusal)",
    "no_tools": "no tools, and the model named is not a track",
    "tool_type_not_function": "a tool is not of type function (custom, or a built-in tool)",
    "malformed_tools": "tools are not function definitions with a usable name and object parameters",
    "duplicate_tool_names": "two tools share a name, so a call could not say which one it means",
    "tool_choice_none": "tool_choice none: the client wants a text answer, not a call",
    "tool_choice_unsupported": "tool_choice is not auto, required, one named function or allowed function tools",
    "tool_choice_unknown_function": "tool_choice names a function that is not among the tools",
    "tool_result_in_conversation": "a tool (or function) result is in the conversation: a later turn of a tool loop",
    "assistant_tool_calls_in_conversation": "an assistant message made tool calls: a later turn of a tool loop",
    "last_message_not_user": "the conversation's last message is not the user's",
    "empty_user_text": "the last user message has no text",
    "not_eval_messages": "addressed to a track, but the messages are not the evaluation's [system, user] prompt",
}

# A name the toolcall track's answer can carry (`<tool_call name="...">`, see core.tracks).
_CALLABLE_NAME = re.compile(r'[^"<>]+')


@dataclass(frozen=True)
class Swappable:
    """The SLM may answer: on `track`, from `user_text` and `functions` (the project's signature shape
    `{"name", "description", "parameters"}`), answered as OpenAI `tool_calls` or as plain text."""

    track: str
    user_text: str
    functions: tuple[dict[str, Any], ...]
    answer_as: Literal["tool_calls", "text"]
    forced_name: str | None = None  # tool_choice named this function: the call must be to it


@dataclass(frozen=True)
class NotSwappable:
    """The hosted model answers. `reason` is a code of `REASONS`; `detail` says what in the request."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


# The request's extra fields (ChatRequest accepts them unchecked), read as OpenAI defines them.
class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")  # strict, ... are accepted and not used
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: _Function


class _Name(BaseModel):
    name: str


class _NamedChoice(BaseModel):  # {"type": "function", "function": {"name": ...}}
    type: Literal["function"]
    function: _Name


class _Allowed(BaseModel):
    mode: Literal["auto", "required"]
    tools: list[_NamedChoice]


class _AllowedChoice(BaseModel):  # {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}
    type: Literal["allowed_tools"]
    allowed_tools: _Allowed


def classify(chat: ChatRequest, track_models: set[str]) -> Swappable | NotSwappable:
    """Whether the SLM may answer `chat`. `track_models`: the track names a request may address as its
    model (row tracks, e.g. {"structured", "toolcall"})."""
    extra = chat.model_extra or {}
    refusal = _request_refusal(chat, extra)
    if refusal:
        return refusal
    if extra.get("tools"):  # tools win over a track's model name: the client expects tool_calls back
        return _tool_calling(chat, extra)
    if chat.model in track_models:
        return _track_addressed(chat, chat.model)
    return NotSwappable("no_tools", f"no tools, and model {chat.model!r} is not one of {sorted(track_models)}")


def slm_messages(swappable: Swappable) -> list[dict[str, str]]:
    """The messages the SLM gets: the track's prompt, rendered as the evaluation renders it."""
    return build_messages(build_prompt(swappable.track, swappable.user_text, list(swappable.functions)))


def _request_refusal(chat: ChatRequest, extra: dict[str, Any]) -> NotSwappable | None:
    """What rules out the SLM whatever the request's kind."""
    if not chat.messages:
        return NotSwappable("no_messages", "messages is empty")
    if chat.n != 1:
        return NotSwappable("n_not_1", f"n is {chat.n}")
    if chat.logprobs is True or chat.top_logprobs:
        return NotSwappable("logprobs_requested", "logprobs or top_logprobs is set")
    modalities = extra.get("modalities")
    if extra.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        return NotSwappable("audio_requested", "audio output is asked")
    if extra.get("web_search_options") is not None:
        return NotSwappable("web_search_requested", "web_search_options is set")
    if extra.get("functions") is not None or extra.get("function_call") is not None:
        return NotSwappable("legacy_functions", "functions/function_call are set; use tools")
    for index, message in enumerate(chat.messages):
        for part in message.content if isinstance(message.content, list) else []:
            if part.type == "image_url":
                return NotSwappable("image_content", f"messages[{index}] has an image_url part")
            if part.type != "text":
                return NotSwappable("non_text_content", f"messages[{index}] has a {part.type!r} part")
    return None


def _tool_calling(chat: ChatRequest, extra: dict[str, Any]) -> Swappable | NotSwappable:
    functions = _functions(extra["tools"])
    if isinstance(functions, NotSwappable):
        return functions
    chosen = _chosen_functions(extra.get("tool_choice"), functions)
    if isinstance(chosen, NotSwappable):
        return chosen
    for index, message in enumerate(chat.messages):
        if message.role in ("tool", "function"):
            return NotSwappable("tool_result_in_conversation", f"messages[{index}] has role {message.role!r}")
        message_extra = message.model_extra or {}
        if message.role == "assistant" and (message_extra.get("tool_calls") or message_extra.get("function_call")):
            return NotSwappable("assistant_tool_calls_in_conversation", f"messages[{index}] made tool calls")
    last = chat.messages[-1]
    if last.role != "user":
        return NotSwappable("last_message_not_user", f"the last message's role is {last.role!r}")
    if not last.text().strip():
        return NotSwappable("empty_user_text", "the last user message has no text")
    functions, forced_name = chosen
    return Swappable("toolcall", last.text(), tuple(functions), "tool_calls", forced_name)


def _functions(tools: Any) -> list[dict[str, Any]] | NotSwappable:
    """The tools as the project's signatures, in the request's order."""
    if not isinstance(tools, list):
        return NotSwappable("malformed_tools", "tools is not a list")
    functions: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "function":
            return NotSwappable("tool_type_not_function", f"tools[{index}] has type {kind!r}")
        try:
            function = _Tool.model_validate(tool).function
        except ValidationError as exc:
            return NotSwappable("malformed_tools", f"tools[{index}]: {exc.errors()[0]['msg']}")
        if not _CALLABLE_NAME.fullmatch(function.name):
            return NotSwappable("malformed_tools", f"tools[{index}]: the name {function.name!r} cannot be called")
        # OpenAI: no `parameters` is a function that takes none.
        parameters = function.parameters if function.parameters is not None else {"type": "object", "properties": {}}
        functions.append({"name": function.name, "description": function.description or "", "parameters": parameters})
    names = [function["name"] for function in functions]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        return NotSwappable("duplicate_tool_names", f"tool names repeat: {repeated}")
    return functions


Chosen = tuple[list[dict[str, Any]], str | None]  # (the functions a call may use, the name it must use or None)


def _chosen_functions(choice: Any, functions: list[dict[str, Any]]) -> Chosen | NotSwappable:
    """What `tool_choice` leaves to the SLM: every function, the allowed ones, or the one named."""
    if choice is None or choice in ("auto", "required"):
        return functions, None
    if choice == "none":
        return NotSwappable("tool_choice_none", "tool_choice is 'none'")
    kind = choice.get("type") if isinstance(choice, dict) else None
    model = {"function": _NamedChoice, "allowed_tools": _AllowedChoice}.get(kind) if isinstance(kind, str) else None
    try:
        parsed = model.model_validate(choice) if model else None
    except ValidationError:
        parsed = None
    if parsed is None:
        return NotSwappable("tool_choice_unsupported", f"tool_choice {str(choice)[:80]}")
    named = isinstance(parsed, _NamedChoice)
    wanted = [parsed.function.name] if named else [tool.function.name for tool in parsed.allowed_tools.tools]
    unknown = [name for name in wanted if name not in {function["name"] for function in functions}]
    if unknown or not wanted:
        return NotSwappable("tool_choice_unknown_function", f"tool_choice names {unknown or 'no function'}")
    chosen = [function for function in functions if function["name"] in wanted]
    return chosen, parsed.function.name if named else None


def _track_addressed(chat: ChatRequest, track: str) -> Swappable | NotSwappable:
    """Swappable when the messages are exactly `build_messages(build_prompt(track, request, functions))`."""
    parsed = _eval_prompt(track, chat.messages)
    if parsed is None:
        return NotSwappable("not_eval_messages", f"model {track!r}: the messages are not the {track} track's evaluation prompt")
    request, functions = parsed
    return Swappable(track, request, tuple(functions), "text")


def _eval_prompt(track: str, messages: list[Message]) -> tuple[str, list[dict[str, Any]]] | None:
    """(the user's request, the functions) read back from the evaluation's messages, or None."""
    wire = [message.for_template() for message in messages]  # `developer` is the system role too
    if len(wire) != 2 or wire[0] != {"role": "system", "content": SYSTEM_PROMPT} or wire[1]["role"] != "user":
        return None
    prompt = wire[1]["content"]
    # The template is `...{functions}<separator>{request}`; a rendered function is one JSON line
    # (json.dumps escapes newlines), so the first separator after the head is the template's own.
    head, _, rest = get_row_track(track).template.partition("{functions}")
    separator = rest.removesuffix("{request}")
    if not prompt.startswith(head) or separator not in prompt[len(head):]:
        return None
    functions_text, _, request = prompt[len(head):].partition(separator)
    try:
        functions = [json_input.loads(line) for line in functions_text.split("\n")] if functions_text else []
    except json_input.JsonInputError:
        return None
    if not all(isinstance(function, dict) for function in functions):
        return None
    # Rendering them again must give the prompt back: anything else was written some other way.
    return (request, functions) if build_prompt(track, request, functions) == prompt else None


def tool_calls_response(text: str, model: str, usage: Usage) -> dict[str, Any]:
    """The SLM's `<tool_call name="...">{json}</tool_call>` as an OpenAI chat.completion with one tool
    call, its arguments a JSON string (canonical: sorted keys, as the metrics compare them). The
    gateway validates the answer first: text that is not one tool call is a ValueError."""
    call = parse_toolcall(text)
    if call is None:
        raise ValueError("the SLM's answer is not one <tool_call name=...>{json object}</tool_call>")
    name, arguments = call
    tool_call = {"id": f"call_{uuid.uuid4().hex}", "type": "function",
                 "function": {"name": name, "arguments": canonical_json(arguments)}}
    return _completion(model, {"role": "assistant", "content": None, "tool_calls": [tool_call]}, "tool_calls", usage)


def text_response(text: str, model: str, usage: Usage, finish_reason: str = "stop") -> dict[str, Any]:
    """The SLM's answer to a track-addressed request, as `slm-swap serve` gives it: plain text."""
    return _completion(model, {"role": "assistant", "content": text}, finish_reason, usage)


def completion_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A whole `tool_calls_response`/`text_response` as the `chat.completion.chunk`s OpenAI streams:
    the role, then the text or each tool call whole (index, id, type, name, JSON-string arguments),
    then the finish reason; with `include_usage` (`stream_options`), a last chunk of no choices
    carries the usage and the others `usage: null`, as OpenAI sends them."""
    choice = completion["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls")
    body = ({"tool_calls": [{"index": index, **call} for index, call in enumerate(calls)]} if calls
            else {"content": message["content"]})
    deltas = [{"role": "assistant", "content": None if calls else ""}, body]
    choices = [[{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}] for delta in deltas]
    choices.append([{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"], "logprobs": None}])
    head = {key: completion[key] for key in ("id", "created", "model")}
    chunks = [{**head, "object": "chat.completion.chunk", "choices": each} for each in choices]
    if include_usage:
        chunks = [{**chunk, "usage": None} for chunk in chunks]
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": completion["usage"]})
    return chunks


def server_sent_events(chunks: list[dict[str, Any]]) -> list[str]:
    """The chunks as OpenAI's SSE stream: one `data:` event each, then `data: [DONE]`."""
    return [f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in chunks] + ["data: [DONE]\n\n"]


def _completion(model: str, message: dict[str, Any], finish_reason: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.prompt_tokens + usage.completion_tokens},
    }
