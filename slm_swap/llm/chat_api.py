"""The chat-completions request as OpenAI's API defines it, for the servers that answer one
(`slm-swap serve`, the scripted teacher): the same types, the same roles, the same 400s.

    chat = ChatRequest.model_validate(body)          # body: from infra.json_input.loads
    except ValidationError as exc: where, why = invalid_request(exc)   # e.g. ("messages[0].role", ...)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

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
    logprobs: StrictBool | None = None  # the chosen tokens' log-probabilities in the choice
    top_logprobs: StrictInt | None = None  # alternatives per position (0 to 20; `logprobs` must be true)

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
