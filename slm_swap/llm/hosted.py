"""The hosted LLM through the real `openai` SDK: Azure AI, or any OpenAI-compatible base URL.

Azure (default): AZURE_ENDPOINT, AZURE_DEPLOYMENT, AZURE_API_KEY, AZURE_API_VERSION. The endpoint
may already end in `/openai/deployments/<name>` (as the seed writes it); the name is taken from it.
Any OpenAI-compatible server: HOSTED_BASE_URL, HOSTED_MODEL, HOSTED_API_KEY.

Temperature 0. Requests run on a bounded number of threads. Retries are the SDK's own: 408/409/429/5xx
and connection errors, exponential backoff with jitter, honouring `Retry-After`/`retry-after-ms`.
A request that still fails comes back as a `Completion` with `error` set; the caller decides
what an error budget is. Error texts are scrubbed of every configured secret before they leave
this client, so a server that echoes the API key back cannot put it in records, logs or Prefect's
database. Answers come back raw, to be scored exactly as the model sent them; whatever records,
traces or prints one scrubs it (`slm_swap.infra.recordable`, with `HostedClient.scrub`).
"""

from __future__ import annotations

import re
import time
from typing import Iterator
from urllib.parse import urlsplit

import openai

from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.workers import in_threads
from slm_swap.llm.completion import MAX_NEW_TOKENS, Completion

_DEPLOYMENT_IN_ENDPOINT = re.compile(r"^(?P<root>.+?)/openai/deployments/(?P<name>[^/?#]+)/?$")


def check_url(value: str, setting: str) -> str:
    """An http(s) URL with a host, or a one-line error naming the setting."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SlmSwapError(f"{setting} must be an http(s) URL such as https://NAME.openai.azure.com, got {value!r}")
    return value.strip()


def split_azure_endpoint(endpoint: str, deployment: str | None) -> tuple[str, str]:
    """(resource endpoint, deployment) from AZURE_ENDPOINT and AZURE_DEPLOYMENT."""
    endpoint = check_url(endpoint, "AZURE_ENDPOINT").rstrip("/")
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


MAX_TIMEOUT_S = 86_400


def check_request_limits(concurrency: int, timeout_s: float, max_retries: int) -> None:
    """The client's flags, one line each when out of range."""
    if concurrency < 1:
        raise SlmSwapError(f"--concurrency must be >= 1, got {concurrency}")
    # A day at most: the HTTP stack turns a longer one into a deadline past what the OS can wait for.
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise SlmSwapError(f"--timeout must be a number of seconds > 0 and <= {MAX_TIMEOUT_S}, got {timeout_s}")
    if max_retries < 0:
        raise SlmSwapError(f"--max-retries must be >= 0, got {max_retries}")


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
        check_request_limits(concurrency, timeout_s, max_retries)
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.scrub = settings.scrub
        common = {"timeout": timeout_s, "max_retries": max_retries}
        if settings.hosted_base_url:
            if not settings.hosted_model:
                raise SlmSwapError("HOSTED_BASE_URL is set but HOSTED_MODEL is not: name the model to call")
            key = settings.hosted_api_key.get_secret_value() if settings.hosted_api_key else "unused"
            self.client = openai.OpenAI(base_url=check_url(settings.hosted_base_url, "HOSTED_BASE_URL"), api_key=key, **common)
            self.model = settings.hosted_model
            self.identity = f"openai-compatible:{self.model}@{host_of(settings.hosted_base_url)}"
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
            self.identity = f"azure:{deployment}@{host_of(endpoint)}"

    def _create(self, messages: list[dict[str, str]]):
        return self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens
        )

    def complete(self, messages_list: list[list[dict[str, str]]]) -> Iterator[Completion]:
        """Completions in the order they finish (each carries its index), `concurrency` requests at
        a time; when the caller stops early, requests in flight are abandoned (see `workers`)."""
        return in_threads(messages_list, self._one, self.concurrency, "hosted")

    def _one(self, index: int, messages: list[dict[str, str]]) -> Completion:
        started = time.perf_counter()
        try:
            response = self._create(messages)
            text, usage = response.choices[0].message.content or "", response.usage
            # The model that answered (Azure names the model, not the deployment) and its token
            # counts: Langfuse prices the generation from them.
            # The raw text: scored as the model sent it; whoever records or prints it scrubs it (`recordable`).
            return Completion(index, text, None, time.perf_counter() - started, response.model or self.model,
                              usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None)
        except openai.OpenAIError as exc:
            return Completion(index, None, self.scrub(describe_api_error(exc)), time.perf_counter() - started)

    def close(self) -> None:
        self.client.close()


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def describe_api_error(exc: openai.OpenAIError) -> str:
    """A short, secret-free description: status and the server's message, never the request."""
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", "") or exc).splitlines()[0][:300]
    return f"{type(exc).__name__}" + (f" ({status})" if status else "") + f": {message}"
