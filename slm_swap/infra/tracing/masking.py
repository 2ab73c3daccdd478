"""What leaves for Langfuse: secrets scrubbed (by key and by value) and values capped in size."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from langfuse.types import MaskOtelSpansResult, OtelSpanPatch
from pydantic import BaseModel, SecretBytes, SecretStr

from slm_swap.infra.config import REDACTED, scrub_secrets

SECRET_KEY_PARTS = ("key", "secret", "token", "password")  # broad: hides "max_tokens" too, rather than leak
VALUE_CAP_BYTES = 4096  # per value, or per top-level entry of a bigger mapping


class Mask:
    """The client's `mask=` (inputs, outputs, metadata) and `mask_otel_spans=` (every exported
    string attribute): secrets out by key and by value, then capped."""

    secrets: tuple[str, ...] = ()

    def text(self, text: str) -> str:
        return scrub_secrets(text, self.secrets)

    def scrub(self, value: Any, depth: int = 0) -> Any:
        if depth > 32 or isinstance(value, (SecretStr, SecretBytes)):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")  # SecretStr fields dump as "**********"
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            return {k: REDACTED if any(p in str(k).lower() for p in SECRET_KEY_PARTS) else self.scrub(v, depth + 1)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub(item, depth + 1) for item in value]
        return value

    def __call__(self, *, data: Any, **_: Any) -> Any:
        data = self.scrub(data)
        return {k: truncate(v) for k, v in data.items()} if isinstance(data, dict) and _size(data) > VALUE_CAP_BYTES \
            else truncate(data)

    def spans(self, *, params: Any, **_: Any) -> MaskOtelSpansResult | None:
        patches = {key: {name: self.text(v) for name, v in span.attributes.items() if isinstance(v, str) and self.text(v) != v}
                   for key, span in params.spans.items()}
        patches = {key: OtelSpanPatch(set_attributes=changed) for key, changed in patches.items() if changed}
        return MaskOtelSpansResult(span_patches=patches) if patches else None


def _size(value: Any) -> int:
    return len((value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)).encode())


def truncate(value: Any) -> Any:
    """`value`, or its first VALUE_CAP_BYTES (as text) with a note of its full size when it is bigger."""
    if _size(value) <= VALUE_CAP_BYTES:
        return value
    encoded = (value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)).encode()
    return f"{encoded[:VALUE_CAP_BYTES].decode(errors='ignore')}... [truncated: {len(encoded)} bytes, first {VALUE_CAP_BYTES} kept]"


MASK = Mask()  # the process's: its secrets grow with every Settings a client is opened for
