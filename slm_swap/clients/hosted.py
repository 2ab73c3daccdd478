"""The hosted LLM through the real `openai` SDK: Azure AI, or any OpenAI-compatible base URL.

Azure (default): AZURE_ENDPOINT, AZURE_DEPLOYMENT, AZURE_API_KEY, AZURE_API_VERSION. The endpoint
may already end in `/openai/deployments/<name>` (as the seed writes it); the name is taken from it.
Any OpenAI-compatible server: HOSTED_BASE_URL, HOSTED_MODEL, HOSTED_API_KEY.

Temperature 0. Requests run on a bounded thread pool. Retries are the SDK's own: 408/409/429/5xx
and connection errors, exponential backoff with jitter, honouring `Retry-After`/`retry-after-ms`.
A request that still fails comes back as a `Completion` with `error` set; the caller decides
what an error budget is.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator
from urllib.parse import urlsplit

import openai

from slm_swap.clients import MAX_NEW_TOKENS, Completion
from slm_swap.config import Settings
from slm_swap.errors import SlmSwapError

_DEPLOYMENT_IN_ENDPOINT = re.compile(r"^(?P<root>.+?)/openai/deployments/(?P<name>[^/?#]+)/?$")


def split_azure_endpoint(endpoint: str, deployment: str | None) -> tuple[str, str]:
    """(resource endpoint, deployment) from AZURE_ENDPOINT and AZURE_DEPLOYMENT."""
    endpoint = endpoint.strip().rstrip("/")
    match = _DEPLOYMENT_IN_ENDPOINT.match(endpoint)
    if match:
        named = match.group("name")
        if deployment and deployment != named:
            raise SlmSwapError(
                f"AZURE_ENDPOINT names deployment {named!r} but AZURE_DEPLOYMENT is {deployment!r}: make them agree"
            )
        return match.group("root"), named
    if not deployment:
        raise SlmSwapError("AZURE_DEPLOYMENT is not set (and AZURE_ENDPOINT does not end in /openai/deployments/<name>)")
    return endpoint, deployment


class HostedClient:
    kind = "azure"

    def __init__(
        self,
        settings: Settings,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        max_tokens: int = MAX_NEW_TOKENS,
    ):
        if concurrency < 1:
            raise SlmSwapError(f"--concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        common = {"timeout": timeout_s, "max_retries": max_retries}
        if settings.hosted_base_url:
            if not settings.hosted_model:
                raise SlmSwapError("HOSTED_BASE_URL is set but HOSTED_MODEL is not: name the model to call")
            key = settings.hosted_api_key.get_secret_value() if settings.hosted_api_key else "unused"
            self.client = openai.OpenAI(base_url=settings.hosted_base_url, api_key=key, **common)
            self.model = settings.hosted_model
            self.identity = f"openai-compatible:{self.model}@{_host(settings.hosted_base_url)}"
        else:
            missing = [name for name, value in (("AZURE_ENDPOINT", settings.azure_endpoint), ("AZURE_API_KEY", settings.azure_api_key)) if not value]
            if missing:
                raise SlmSwapError(
                    f"hosted model not configured: set {', '.join(missing)} (Azure), "
                    "or HOSTED_BASE_URL and HOSTED_MODEL for an OpenAI-compatible server"
                )
            endpoint, deployment = split_azure_endpoint(settings.azure_endpoint, settings.azure_deployment)
            self.client = openai.AzureOpenAI(
                azure_endpoint=endpoint,
                azure_deployment=deployment,
                api_key=settings.azure_api_key.get_secret_value(),
                api_version=settings.azure_api_version,
                **common,
            )
            self.model = deployment
            self.identity = f"azure:{deployment}@{_host(endpoint)}"

    def complete_one(self, messages: list[dict[str, str]]) -> str:
        response = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens
        )
        return response.choices[0].message.content or ""

    def complete(self, messages_list: list[list[dict[str, str]]]) -> Iterator[Completion]:
        """Completions in the order they finish (each carries its index)."""

        def one(index: int, messages: list[dict[str, str]]) -> Completion:
            started = time.perf_counter()
            try:
                text = self.complete_one(messages)
                return Completion(index, text, None, time.perf_counter() - started)
            except openai.OpenAIError as exc:
                return Completion(index, None, _describe(exc), time.perf_counter() - started)

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="hosted") as pool:
            futures = [pool.submit(one, i, messages) for i, messages in enumerate(messages_list)]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                # The caller stopped early (error budget, Ctrl-C): drop what has not started.
                for future in futures:
                    future.cancel()

    def close(self) -> None:
        self.client.close()


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _describe(exc: openai.OpenAIError) -> str:
    """A short, secret-free description: status and the server's message, never the request."""
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc).splitlines()[0][:300]
    return f"{type(exc).__name__}" + (f" ({status})" if status else "") + f": {message}"
