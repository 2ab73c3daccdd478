"""`slm-swap serve`: an OpenAI-compatible HTTP server for the local SLM and its LoRA adapters.

    slm-swap serve --port 8000 --adapter structured=slm_swap/04_ft/adapter_structured
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "structured", "messages": [...]}'

Routes: `GET /v1/models`, `POST /v1/chat/completions` (model chosen by name: the base model's name
or an adapter's), and Azure's `POST /openai/deployments/{name}/chat/completions?api-version=...`
(the deployment name chooses the model), so both `openai.OpenAI` and `openai.AzureOpenAI` work
against it. Decoding is greedy whatever sampling parameters say: this server exists to reproduce
evaluation outputs. One worker thread owns the model; requests queue and those waiting for the
same model are generated together as one batch. Batches are formed fairly: the oldest waiting
request is always in the next batch, so steady traffic to one adapter cannot starve another.
A prompt that with its `max_tokens` would not fit the model's context is refused (400) before it
is queued, and so is a body nested too deeply to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, ValidationError

from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.batching import Job, ModelWorker, cut_at_stop
from slm_swap.llm.completion import MAX_NEW_TOKENS, SERVE_BATCH_WAIT_MS
from slm_swap.llm.local import BASE, LocalModel

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TOKENS_CAP = 2048
DISCONNECT_POLL_S = 1.0  # how often a waiting request checks whether its client is still there


def check_adapter_name(name: str) -> str:
    """Names become lookup keys and folder names: nothing that could leave the adapter folder."""
    if not ADAPTER_NAME.match(name) or ".." in name:
        raise SlmSwapError(f"adapter name {name!r} is not allowed: use letters, digits, '_', '-', '.'")
    return name


def parse_adapter_specs(specs: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise SlmSwapError(f"--adapter {spec!r}: expected NAME=DIR")
        adapters[check_adapter_name(name)] = Path(path)
    return adapters


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")  # image_url, ... are accepted and ignored
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, ... are accepted and ignored
    model: str | None = None
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop or [] if s]


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def max_token_chars(tokenizer) -> int:
    """The longest token's text: no token covers more characters, so a prompt of C characters is
    at least C / this many tokens. (Byte-level BPE vocabularies spell each byte as one character,
    so a token's spelling is at least as long as the text it covers.)"""
    return max(1, max(map(len, tokenizer.get_vocab())))


def context_problem(model: LocalModel, messages: list[dict[str, str]], max_tokens: int, max_chars_per_token: int) -> str | None:
    """Why the rendered prompt plus `max_tokens` cannot fit the model's context, or None if it fits.
    Rendering and tokenizing a long prompt takes a while: call it off the event loop."""
    context = model.context_length
    if context is None:
        return None
    prompt = model.render(messages)
    if len(prompt) > max_chars_per_token * context:  # clearly too long: not worth tokenizing
        return (
            f"This model's maximum context length is {context} tokens. However, your messages make a prompt of "
            f"{len(prompt)} characters, more than {context} tokens can hold (and you requested {max_tokens} tokens "
            "for the completion). Please reduce the length of the messages."
        )
    # Tokenized as the worker will tokenize it (no special tokens added: the template has them).
    prompt_tokens = len(model.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])
    if prompt_tokens + max_tokens > context:
        return (
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    return None


def create_app(
    model: LocalModel,
    model_name: str,
    api_key: str | None = None,
    batch_size: int = 8,
    batch_wait_s: float = SERVE_BATCH_WAIT_MS / 1000,
) -> FastAPI:
    """The app around an already loaded model (adapters added to `model` before this call).
    `batch_wait_s`: how long a batch short of `batch_size` waits for more requests (see `ModelWorker`)."""
    worker = ModelWorker(model, batch_size, gather_s=batch_wait_s)
    chars_per_token = max_token_chars(model.tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.stop()

    app = FastAPI(title="slm-swap serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    served = {model_name: BASE, **{name: name for name in model.adapters}}
    created = int(time.time())

    @app.middleware("http")
    async def _authenticate(request: Request, call_next):
        if api_key:
            bearer = request.headers.get("authorization", "")
            given = bearer[7:] if bearer.lower().startswith("bearer ") else request.headers.get("api-key", "")
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return _error(401, "Invalid or missing API key.", "invalid_request_error", "invalid_api_key")
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "slm-swap"} for name in served],
        }

    async def chat(request: Request, name: str | None) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Request body is not valid JSON.", "invalid_request_error")
        except RecursionError:  # e.g. 100000 nested '[': json gives up, which is the client's doing
            return _error(400, "Request body is nested too deeply.", "invalid_request_error")
        try:
            chat_request = ChatRequest.model_validate(body)
        except RecursionError:
            return _error(400, "Request body is nested too deeply.", "invalid_request_error")
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            return _error(400, f"Invalid request: {where}: {problem['msg']}", "invalid_request_error", param=where)
        name = name or chat_request.model
        if not name:
            return _error(400, "Missing required parameter: 'model'.", "invalid_request_error", param="model")
        if name not in served:
            return _error(404, f"The model '{name}' does not exist. Served: {', '.join(served)}.", "invalid_request_error", "model_not_found", "model")
        if chat_request.stream or chat_request.n != 1:
            return _error(400, "Only n=1 without streaming is supported.", "invalid_request_error", param="stream" if chat_request.stream else "n")
        if not chat_request.messages:
            return _error(400, "'messages' must not be empty.", "invalid_request_error", param="messages")
        max_tokens = next(
            (v for v in (chat_request.max_completion_tokens, chat_request.max_tokens) if v is not None), model.max_new_tokens
        )
        if not 1 <= max_tokens <= MAX_TOKENS_CAP:
            return _error(400, f"max_tokens must be between 1 and {MAX_TOKENS_CAP}.", "invalid_request_error", param="max_tokens")
        messages = [{"role": m.role, "content": m.text()} for m in chat_request.messages]
        # Checked here, not in the worker: an oversized prompt would hold the model (and every
        # request queued behind it) for minutes before failing or producing garbage.
        try:
            problem = await asyncio.to_thread(context_problem, model, messages, max_tokens, chars_per_token)
        except TemplateError as exc:  # the chat template refuses these messages (roles, order, ...)
            return _error(400, f"Invalid messages for this model's chat template: {exc}", "invalid_request_error", param="messages")
        if problem:
            return _error(400, problem, "invalid_request_error", "context_length_exceeded", "messages")
        future = worker.submit(Job(messages, served[name], max_tokens, chat_request.stop_sequences()))
        waiting = asyncio.wrap_future(future)
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if not waiting.done() and await request.is_disconnected():
                future.cancel()  # still queued: the worker skips it; already running: it finishes unused
                return _error(499, "Client closed the request.", "invalid_request_error")
        try:
            result = waiting.result()
        except Exception as exc:
            return _error(500, f"Generation failed: {type(exc).__name__}: {exc}", "server_error")
        text, stopped = cut_at_stop(result.text, chat_request.stop_sequences())
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop" if stopped else result.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens,
                },
            }
        )

    @app.post("/v1/chat/completions")
    async def openai_chat(request: Request) -> JSONResponse:
        return await chat(request, None)

    @app.post("/openai/deployments/{deployment}/chat/completions")
    async def azure_chat(deployment: str, request: Request) -> JSONResponse:
        return await chat(request, deployment)

    return app


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def discover_adapters(adapters_dir: Path) -> dict[str, Path]:
    """`<dir>/adapter_<track>/` folders holding a PEFT adapter, served under the name `<track>`."""
    found = {}
    for folder in sorted(Path(adapters_dir).glob("adapter_*")):
        if (folder / "adapter_config.json").is_file():
            found[check_adapter_name(folder.name.removeprefix("adapter_"))] = folder
    return found


def serve(
    model_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    adapters: dict[str, Path] | None = None,
    api_key: str | None = None,
    model_name: str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    load_in_4bit: bool | None = None,
    batch_wait_ms: float = SERVE_BATCH_WAIT_MS,
) -> None:
    """Load the model and adapters, then serve until interrupted."""
    import uvicorn

    if batch_size < 1:
        raise SlmSwapError(f"--batch-size must be >= 1, got {batch_size}")
    if not 1 <= max_new_tokens <= MAX_TOKENS_CAP:
        raise SlmSwapError(f"--max-new-tokens must be between 1 and {MAX_TOKENS_CAP}, got {max_new_tokens}")
    if not (0 <= batch_wait_ms <= 60_000):
        raise SlmSwapError(f"--batch-wait-ms must be between 0 and 60000, got {batch_wait_ms}")

    if not is_loopback(host) and not api_key:
        print(f"warning: serving on {host} without --api-key or SLM_SWAP_SERVE_API_KEY: anyone who can reach this port can use the model")
    model = LocalModel(model_path, max_new_tokens=max_new_tokens, batch_size=batch_size, load_in_4bit=load_in_4bit)
    for name, path in (adapters or {}).items():
        model.add_adapter(name, path)
    name = model_name or Path(model_path).name
    if name in model.adapters:
        raise SlmSwapError(f"adapter name {name!r} clashes with the base model's name: rename one (--model-name)")
    app = create_app(model, name, api_key=api_key, batch_size=batch_size, batch_wait_s=batch_wait_ms / 1000)
    print(f"serving {name}" + "".join(f", {a}" for a in model.adapters) + f" on http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
