"""The Langfuse settings: whether tracing is configured (or explicitly off), and the trace and
experiment-comparison URLs built from them offline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from pydantic import SecretStr

from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError


def langfuse_settings(settings: Settings) -> dict[str, str]:
    """LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and LANGFUSE_HOST as plain stripped text ("" when unset)."""
    text = lambda v: (v.get_secret_value() if isinstance(v, SecretStr) else v or "").strip()  # noqa: E731
    return {"LANGFUSE_PUBLIC_KEY": text(settings.langfuse_public_key),
            "LANGFUSE_SECRET_KEY": text(settings.langfuse_secret_key),
            "LANGFUSE_HOST": text(settings.langfuse_host).rstrip("/")}


def check_tracing_settings(settings: Settings) -> None:
    """Raise `SlmSwapError` (one line) unless tracing is configured or explicitly disabled."""
    if not settings.langfuse_disabled:
        require_langfuse_settings(settings)


def require_langfuse_settings(settings: Settings) -> None:
    """Raise `SlmSwapError` (one line) unless every LANGFUSE_* setting is there and the host is a URL."""
    values = langfuse_settings(settings)
    if missing := [name for name, value in values.items() if not value]:
        one = len(missing) == 1
        raise SlmSwapError(f"Langfuse tracing is required but {', '.join(missing)} {'is' if one else 'are'} not set; "
                           f"set {'it' if one else 'them'} (environment or .env), or set LANGFUSE_DISABLED=1 to run "
                           "without tracing (local dry runs only)")
    if not values["LANGFUSE_HOST"].startswith(("http://", "https://")):
        raise SlmSwapError("LANGFUSE_HOST must be an http(s) URL such as https://cloud.langfuse.com, "
                           f"got {values['LANGFUSE_HOST']!r}")


def trace_url(settings: Settings, trace_id: str | None) -> str | None:
    """A trace's page, built offline (Langfuse redirects `{host}/trace/{id}` to its project)."""
    host = langfuse_settings(settings)["LANGFUSE_HOST"]
    return f"{host}/trace/{trace_id}" if trace_id and host and not settings.langfuse_disabled else None


def comparison_url(experiments: Sequence[Mapping[str, Any] | None]) -> str | None:
    """Langfuse's experiment comparison of these dataset runs (metrics files' `langfuse_experiment`),
    the first as the baseline; None when none was recorded."""
    if not (found := [e for e in experiments if e and e.get("url") and e.get("id")]):
        return None
    query = urlencode([("baseline", found[0]["id"])] + [("c", e["id"]) for e in found[1:]])
    return f"{found[0]['url'].split('?', 1)[0]}?{query}"
