"""`slm-swap serve`: an OpenAI-compatible HTTP server for the local SLM and its LoRA adapters.

    slm-swap serve --port 8000 --adapter structured=slm_swap/04_ft/adapter_structured
    curl http://127.0.0.1:8000/v1/chat/completions -d '{"model": "structured", "messages": [...]}'

Routes: `GET /v1/models`, `POST /v1/chat/completions` (model chosen by name: the base model's name
or an adapter's), and Azure's `POST /openai/deployments/{name}/chat/completions?api-version=...`
(the deployment name chooses the model), so both `openai.OpenAI` and `openai.AzureOpenAI` work
against it; with --allow-adapter-loading also vLLM's `POST /v1/load_lora_adapter` (`{"lora_name",
"lora_path"}`), which `eval` and the pipeline use to load the adapter they evaluate by URL. Decoding is greedy whatever sampling parameters say: this server exists to reproduce
evaluation outputs. One worker thread owns the model; requests queue and those waiting for the
same model are generated together as one batch. Batches are formed fairly: the oldest waiting
request is always in the next batch, so steady traffic to one adapter cannot starve another.
A prompt that with its `max_tokens` would not fit the model's context is refused (400) before it
is queued, and so is any body `infra.json_input` refuses (nested too deeply, lone surrogates, huge
numbers, not UTF-8, too big) or that is not a chat request OpenAI's API would take (roles included).
A request whose client hangs up is dropped: from the queue, or from its batch at the next decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import ValidationError

from slm_swap.app.http_server import RequireApiKey, is_loopback, listening_socket, openai_error as _error
from slm_swap.app.request_body import BodyTooLarge, read_body
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.json_input import BODY_MAX_BYTES, JsonInputError
from slm_swap.llm.chat_api import ChatRequest, invalid_request
from slm_swap.llm.batching import Job, ModelWorker, cut_at_stop
from slm_swap.llm.completion import MAX_NEW_TOKENS, SERVE_BATCH_WAIT_MS
from slm_swap.llm.local import BASE, LocalModel, check_adapter
from slm_swap.llm.token_logprobs import logprobs_problem, openai_logprobs

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TOKENS_CAP = 2048
# How often a waiting request checks whether its client is still there: a row whose client left
# keeps decoding (holding up the requests behind it) until the next check.
DISCONNECT_POLL_S = 0.2


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
        if name in adapters:
            raise SlmSwapError(f"--adapter {spec!r}: the name {name!r} is given twice")
        adapters[check_adapter_name(name)] = Path(path)
    return adapters


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
    allow_adapter_loading: bool = False,
) -> FastAPI:
    """The app around an already loaded model (adapters added to `model` before this call).
    `batch_wait_s`: how long a batch short of `batch_size` waits for more requests (see `ModelWorker`).
    `allow_adapter_loading`: serve vLLM's `POST /v1/load_lora_adapter` ({"lora_name", "lora_path"}), so
    an eval or the pipeline given SLM_BASE_URL can load the adapter it evaluates (off by default, as in
    vLLM: it reads a folder named by the caller)."""
    worker = ModelWorker(model, batch_size, gather_s=batch_wait_s)
    chars_per_token = max_token_chars(model.tokenizer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.stop()

    app = FastAPI(title="slm-swap serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.worker = worker  # the gateway's in-process engine loads promoted adapters through it

    @app.exception_handler(StarletteHTTPException)
    async def _openai_shaped(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405, ...
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    def served() -> dict[str, str | None]:
        # Read per request: an adapter the worker loads later (`app.state.worker.call`, the gateway's
        # hot reload) is served from then on; its name appears only once it is fully loaded.
        return {model_name: BASE, **{name: name for name in list(model.adapters)}}

    created = int(time.time())

    if api_key:
        app.add_middleware(RequireApiKey, api_key=api_key)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "slm-swap"} for name in served()],
        }

    async def chat(request: Request, name: str | None) -> JSONResponse:
        try:
            body = json_input.loads(await read_body(request), max_bytes=BODY_MAX_BYTES)
        except BodyTooLarge:
            return _error(413, f"Request body is larger than {BODY_MAX_BYTES} bytes.", "invalid_request_error")
        except JsonInputError as exc:  # deep nesting, lone surrogates, huge numbers, not UTF-8, ...
            return _error(400, f"Request body is not valid JSON: {exc}.", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object.", "invalid_request_error")
        try:
            chat_request = ChatRequest.model_validate(body)
        except ValidationError as exc:
            where, why = invalid_request(exc)
            return _error(400, f"Invalid request: {where}: {why}", "invalid_request_error", param=where)
        name = name or chat_request.model
        if not name:
            return _error(400, "Missing required parameter: 'model'.", "invalid_request_error", param="model")
        models = served()
        if name not in models:
            return _error(404, f"The model '{name}' does not exist. Served: {', '.join(models)}.", "invalid_request_error", "model_not_found", "model")
        if chat_request.stream or chat_request.n != 1:
            return _error(400, "Only n=1 without streaming is supported.", "invalid_request_error", param="stream" if chat_request.stream else "n")
        if not chat_request.messages:
            return _error(400, "'messages' must not be empty.", "invalid_request_error", param="messages")
        max_tokens = next(
            (v for v in (chat_request.max_completion_tokens, chat_request.max_tokens) if v is not None), model.max_new_tokens
        )
        if not 1 <= max_tokens <= MAX_TOKENS_CAP:
            return _error(400, f"max_tokens must be between 1 and {MAX_TOKENS_CAP}.", "invalid_request_error", param="max_tokens")
        if problem := logprobs_problem(chat_request):
            return _error(400, problem, "invalid_request_error", param="top_logprobs")
        messages = [m.for_template() for m in chat_request.messages]
        # Checked here, not in the worker: an oversized prompt would hold the model (and every
        # request queued behind it) for minutes before failing or producing garbage.
        try:
            problem = await asyncio.to_thread(context_problem, model, messages, max_tokens, chars_per_token)
        except TemplateError as exc:  # the chat template refuses these messages (roles, order, ...)
            return _error(400, f"Invalid messages for this model's chat template: {exc}", "invalid_request_error", param="messages")
        if problem:
            return _error(400, problem, "invalid_request_error", "context_length_exceeded", "messages")
        job = Job(messages, models[name], max_tokens, chat_request.stop_sequences())
        waiting = asyncio.wrap_future(worker.submit(job))
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if not waiting.done() and await request.is_disconnected():
                job.abandon()  # queued: the worker skips it; being decoded: its row stops at the next step
                return _error(499, "Client closed the request.", "invalid_request_error")
        try:
            result = waiting.result()
        except Exception as exc:
            return _error(500, f"Generation failed: {type(exc).__name__}: {exc}", "server_error")
        text, stopped = cut_at_stop(result.text, chat_request.stop_sequences())
        logprobs = None
        if chat_request.logprobs:  # decoding each prefix costs a moment: off the event loop
            texts = await asyncio.to_thread(model.token_texts, result.tokens)
            logprobs = openai_logprobs(texts, result.token_logprobs, len(text))
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
                        "logprobs": logprobs,
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

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        if not allow_adapter_loading:
            return _error(404, "Loading adapters at runtime is off: start `slm-swap serve` with --allow-adapter-loading.",
                          "invalid_request_error")
        try:
            body = json_input.loads(await read_body(request), max_bytes=BODY_MAX_BYTES)
        except (BodyTooLarge, JsonInputError) as exc:
            return _error(400, f"Request body is not a small JSON object: {exc}.", "invalid_request_error")
        name, path = (body.get("lora_name"), body.get("lora_path")) if isinstance(body, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(path, str):
            return _error(400, "Expected {\"lora_name\": NAME, \"lora_path\": DIR}.", "invalid_request_error")
        try:
            check_adapter_name(name)
            check_adapter(Path(path))
        except SlmSwapError as exc:
            return _error(400, str(exc), "invalid_request_error")
        if name == model_name or (name in model.adapters and Path(model.adapters[name]).resolve() != Path(path).resolve()):
            return _error(400, f"The model '{name}' is already served from another folder.", "invalid_request_error")
        if name not in model.adapters:  # loaded by the worker between two batches, served once whole
            try:
                await asyncio.wrap_future(worker.call(lambda: model.add_adapter(name, Path(path))))
            except SlmSwapError as exc:
                return _error(400, str(exc), "invalid_request_error")
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/openai/deployments/{deployment}/chat/completions")
    async def azure_chat(deployment: str, request: Request) -> JSONResponse:
        return await chat(request, deployment)

    return app


def discover_adapters(adapters_dir: Path) -> dict[str, Path]:
    """`<dir>/adapter_<track>/` folders holding a PEFT adapter, served under the name `<track>`."""
    adapters_dir = Path(adapters_dir)
    if not adapters_dir.is_dir():
        problem = "is not a folder" if adapters_dir.exists() else "does not exist"
        raise SlmSwapError(f"--adapters-dir {adapters_dir}: {problem}")
    found = {}
    for folder in sorted(adapters_dir.glob("adapter_*")):
        if (folder / "adapter_config.json").is_file():
            found[check_adapter_name(folder.name.removeprefix("adapter_"))] = folder
    if not found:
        print(f"warning: --adapters-dir {adapters_dir}: no adapter_<track>/ folder with an adapter_config.json; "
              "serving the base model only")
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
    allow_adapter_loading: bool = False,
    precision: str = "fp32",
    compile: bool = False,
) -> None:
    """Check every setting and bind the port, then load the model and adapters and serve until interrupted
    (`precision` and `compile` as `LocalModel` takes them)."""
    import uvicorn

    if batch_size < 1:
        raise SlmSwapError(f"--batch-size must be >= 1, got {batch_size}")
    if not 1 <= max_new_tokens <= MAX_TOKENS_CAP:
        raise SlmSwapError(f"--max-new-tokens must be between 1 and {MAX_TOKENS_CAP}, got {max_new_tokens}")
    if not (0 <= batch_wait_ms <= 60_000):
        raise SlmSwapError(f"--batch-wait-ms must be between 0 and 60000, got {batch_wait_ms}")
    if api_key is not None and not api_key.strip():
        raise SlmSwapError("--api-key is empty: give a key, or leave it out to serve without one")
    name = model_name or Path(model_path).name
    if name in (adapters or {}):
        raise SlmSwapError(f"adapter name {name!r} clashes with the base model's name: rename one (--model-name)")
    for path in (adapters or {}).values():
        check_adapter(path)
    sock = listening_socket(host, port)
    try:
        if not is_loopback(host) and not api_key:
            print(f"warning: serving on {host} without --api-key or SLM_SWAP_SERVE_API_KEY: anyone who can reach this port can use the model")
        model = LocalModel(model_path, max_new_tokens=max_new_tokens, batch_size=batch_size, load_in_4bit=load_in_4bit,
                           precision=precision, compile=compile)
        for adapter, path in (adapters or {}).items():
            model.add_adapter(adapter, path)
        app = create_app(model, name, api_key=api_key, batch_size=batch_size, batch_wait_s=batch_wait_ms / 1000,
                         allow_adapter_loading=allow_adapter_loading)
        bound_port = sock.getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        how = ", ".join(filter(None, [model.quantization or model.precision, "compiled" if compile else None]))
        print(f"serving {name}" + "".join(f", {a}" for a in model.adapters) + f" ({how}) on http://{url_host}:{bound_port}/v1",
              flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=bound_port, log_level="warning"))
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:  # uvicorn logged why (e.g. the app's startup failed)
        raise SlmSwapError(f"the server on {host}:{bound_port} did not start")
