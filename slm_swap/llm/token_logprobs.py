"""Token log-probabilities in OpenAI's chat shape (`choices[0].logprobs`), as `slm-swap serve` returns
them when a request asks `logprobs: true`.

    choice["logprobs"] = openai_logprobs(model.token_texts(g.tokens), g.token_logprobs, len(text))

Each entry is one completion token: its text (what it adds to the message content), that text's
UTF-8 bytes, its log-probability, and no alternatives (`top_logprobs` is always empty: the server
refuses a request for them). The entries' texts joined are the content exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slm_swap.llm.chat_api import ChatRequest


def openai_logprobs(texts: Sequence[str], logprobs: Sequence[float], kept_chars: int) -> dict[str, Any]:
    """`{"content": [...], "refusal": None}` for the tokens that made the first `kept_chars`
    characters of the completion (a completion cut at a stop string keeps fewer than it generated):
    a token that straddles the cut is kept with its text cut there; tokens after it are left out.
    Tokens that add no text (special tokens, half a character) are kept while the content goes on."""
    content = []
    used = 0
    for text, logprob in zip(texts, logprobs, strict=True):
        if used >= kept_chars and (text or used > kept_chars):
            break
        piece = text[: kept_chars - used]
        used += len(text)
        content.append({"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8")), "top_logprobs": []})
    return {"content": content, "refusal": None}


def logprobs_problem(chat_request: ChatRequest) -> str | None:
    """Why the request's `top_logprobs` cannot be answered: out of OpenAI's range, without
    `logprobs: true` (as OpenAI refuses it), or above 0, since only the chosen token's log-probability
    is computed (alternatives would cost a top-k over the vocabulary at every step of every row)."""
    top = chat_request.top_logprobs
    if top is None:
        return None
    if not 0 <= top <= 20:
        return f"top_logprobs must be between 0 and 20, got {top}."
    if top and not chat_request.logprobs:
        return "top_logprobs requires logprobs to be true."
    if top:
        return "top_logprobs > 0 is not supported: this server returns the chosen token's logprob only (use 0)."
    return None
