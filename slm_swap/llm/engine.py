"""The SLM on an inference engine by URL (SLM_BASE_URL): `slm-swap serve`, vLLM or llama.cpp's server,
through the openai SDK, for `eval --model-kind slm` and the pipeline's SLM evals.

    client = EngineClient(settings, adapter=Path("slm_swap/04_ft/adapter_toolcall"))  # loaded there, by name
    client = EngineClient(settings, model="toolcall")   # an adapter the engine already serves under that name
    client = EngineClient(settings)                     # the engine's first listed model: its base model

Adapters are chosen by model name, as vLLM's `--lora-modules NAME=DIR` and `slm-swap serve --adapter
NAME=DIR` expose them. Given a folder, the client asks the engine to load it through vLLM's
`POST /v1/load_lora_adapter` under a name made from its weights' hash (the same weights, the same
name: loaded once), unless the engine already lists that name. The engine reads the folder itself,
so it must see the same path. An engine that does not allow loading gets one line saying how to
serve the adapter. Requests, retries, timeouts and error scrubbing are the hosted client's; only the
URL, the key (SLM_API_KEY) and the model differ. The identity, `engine:<model>@<host>`, names the
engine and the adapter's name in every metrics file.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import sha256_file
from slm_swap.llm.completion import MAX_NEW_TOKENS
from slm_swap.llm.hosted import HostedClient, check_request_limits, check_url, describe_api_error, host_of
from slm_swap.llm.local import check_adapter

LOAD_TIMEOUT_S = 600.0  # loading an adapter into a busy engine waits for its batch to end


def served_name(adapter: Path) -> str:
    """The engine's name for an adapter folder: its folder name and the hash of its weights."""
    adapter = Path(adapter)
    return f"{adapter.resolve().name}-{sha256_file(adapter / 'adapter_model.safetensors')[:12]}"


class EngineClient(HostedClient):
    kind = "slm"

    def __init__(self, settings: Settings, *, model: str | None = None, adapter: Path | None = None,
                 concurrency: int = 8, timeout_s: float = 60.0, max_retries: int = 4,
                 max_tokens: int = MAX_NEW_TOKENS):
        if not settings.slm_base_url:
            raise SlmSwapError("SLM_BASE_URL is not set: the SLM is evaluated in process")
        if model is not None and adapter is not None:
            raise SlmSwapError("--slm-model and --adapter both choose the engine's model: give one")
        check_request_limits(concurrency, timeout_s, max_retries)
        if adapter is not None:
            check_adapter(Path(adapter))
        url = check_url(settings.slm_base_url, "SLM_BASE_URL")
        self.concurrency, self.max_tokens, self.scrub = concurrency, max_tokens, settings.scrub
        key = settings.slm_api_key.get_secret_value() if settings.slm_api_key else "unused"
        self.client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout_s, max_retries=max_retries)
        self.url = url
        served = self._served_models()
        if adapter is not None:
            model = served_name(Path(adapter))
            if model not in served:
                self._load(model, Path(adapter))
        elif model is None:
            if not served:
                raise SlmSwapError(f"SLM_BASE_URL {url}: the engine lists no model")
            model = served[0]
        elif model not in served:
            raise SlmSwapError(f"--slm-model {model!r}: not served by the engine at {url} (it serves "
                               f"{', '.join(served) or 'nothing'})")
        self.model = model
        self.identity = f"engine:{model}@{host_of(url)}"

    def _served_models(self) -> list[str]:
        try:
            return [entry.id for entry in self.client.models.list()]
        except openai.OpenAIError as exc:
            raise SlmSwapError(f"SLM_BASE_URL {self.url}: {self.scrub(describe_api_error(exc))}") from None

    def _load(self, name: str, adapter: Path) -> None:
        """The engine loads the folder under `name` (vLLM's runtime LoRA loading API)."""
        try:
            self.client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": str(adapter.resolve())},
                             cast_to=httpx.Response, options={"timeout": LOAD_TIMEOUT_S})
        except openai.NotFoundError:
            raise SlmSwapError(
                f"--adapter {adapter}: the engine at {self.url} does not load adapters at runtime. Serve it there "
                f"under a name and pass --slm-model NAME (vLLM: --enable-lora --lora-modules NAME={adapter.resolve()}; "
                f"slm-swap serve: --adapter NAME={adapter.resolve()}), or let the engine load it (vLLM: "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; slm-swap serve: --allow-adapter-loading)") from None
        except openai.OpenAIError as exc:
            if "already" in str(exc).lower():  # vLLM: loaded by an earlier eval meanwhile
                return
            raise SlmSwapError(f"--adapter {adapter}: the engine at {self.url} did not load it: "
                               f"{self.scrub(describe_api_error(exc))}") from None


__all__ = ["EngineClient", "served_name"]
