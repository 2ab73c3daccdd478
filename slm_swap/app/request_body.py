"""A request's body as `slm-swap serve` reads it: at most `BODY_MAX_BYTES`, refused (413) as soon as
it passes them, before all of it is read. It is then parsed by `infra.json_input` and checked as
`llm.chat_api.ChatRequest`.
"""

from __future__ import annotations

from starlette.requests import Request

from slm_swap.infra.json_input import BODY_MAX_BYTES


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
