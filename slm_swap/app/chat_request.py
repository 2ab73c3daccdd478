"""The body of a chat completion request as `slm-swap serve` reads it: at most `BODY_MAX_BYTES`,
through `infra.json_input` (which refuses deep nesting, lone surrogates, huge numbers, invalid
UTF-8), then checked against the request OpenAI's chat API defines (`ChatRequest`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError
from starlette.requests import Request

from slm_swap.infra.json_input import BODY_MAX_BYTES

# The roles OpenAI's chat API defines (the openai SDK's `ChatCompletionRole`); anything else is a 400.
Role = Literal["developer", "system", "user", "assistant", "tool", "function"]
# What each role is called in the chat template. OpenAI's newer models take their instructions as
# `developer` messages "in place of system messages"; templates such as SmolLM2's know only
# `system` (a template's own default system prompt would otherwise be added as well).
TEMPLATE_ROLE = {"developer": "system"}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url, ... are accepted and ignored
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, tool_call_id, ... are accepted and ignored
    role: Role
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""

    def for_template(self) -> dict[str, str]:
        return {"role": TEMPLATE_ROLE.get(self.role, self.role), "content": self.text()}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, ... are accepted and ignored
    model: str | None = None
    messages: list[Message]
    # Strict: `true` is not a token count, nor is 16.5 (pydantic would read them as 1 and refuse).
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stop: str | list[str] | None = None

    def stop_sequences(self) -> list[str]:  # an empty string would stop every completion before it starts
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop or []) if s]


FIELD_NAMES = {name for model in (ChatRequest, Message, ContentPart) for name in model.model_fields}


def invalid_request(exc: ValidationError) -> tuple[str, str]:
    """(the field at fault written as the client wrote it, e.g. `messages[0].role`; why). Of the
    errors pydantic lists, the one that got deepest into the body says most. Pydantic names each
    alternative of a union in the location (`content.str`, `content.list[ContentPart]`): those
    names are not the client's and are left out."""
    problem = max(exc.errors(), key=lambda error: len(error["loc"]))
    where = ""
    for part in problem["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part in FIELD_NAMES:
            where += f".{part}" if where else part
    return where or "body", problem["msg"]


class BodyTooLarge(Exception):
    """The body passed `BODY_MAX_BYTES` (the server answers 413)."""


async def read_body(request: Request) -> bytes:
    """The body, refused (`BodyTooLarge`) once it passes `BODY_MAX_BYTES`, before all of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 12 or int(declared) > BODY_MAX_BYTES):
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
