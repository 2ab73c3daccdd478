"""Model clients. Both kinds answer `complete(messages_list)` with `Completion`s as they finish:
`hosted` (the openai SDK, Azure or any OpenAI-compatible URL) and `local` (transformers)."""

from __future__ import annotations

from dataclasses import dataclass

# One completion budget for both sides, so neither model is cut off where the other is not.
# Single tool calls and their JSON fit comfortably; a rambling model stops here.
MAX_NEW_TOKENS = 256

# SLM prompts decoded together in an eval. Throughput rises with the batch: on the embedded model
# on 2 CPU cores, 64 BFCL prompts took 110.6 s in batches of 16, 76.9 s of 32 and 60.6 s of 64.
# The KV cache grows with it (64 prompts of 1,000 tokens on a 40-layer 4-bit model: about 16 GB
# across the GPUs); lower `--batch-size` if memory runs out.
EVAL_BATCH_SIZE = 64

# How long `slm-swap serve` holds a batch short of its size for more requests. A client's parallel
# requests reach the server milliseconds apart: without a wait the first is decoded alone and the
# others only after it, which takes twice as long. 50 ms is small beside a completion's seconds.
SERVE_BATCH_WAIT_MS = 50.0


@dataclass(frozen=True)
class Completion:
    """One request's outcome: `text` is the raw model output, or None with `error` set; the model
    that answered and its token counts when known (recorded as a Langfuse generation)."""

    index: int
    text: str | None
    error: str | None = None
    latency_s: float = 0.0
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def check_model_kind(kind: str, *, adapter=None, load_in_4bit: bool | None = None) -> None:
    """`--model-kind` and the flags that apply to the SLM only, checked before anything is built."""
    from slm_swap.errors import SlmSwapError

    if kind not in ("azure", "slm"):
        raise SlmSwapError(f"unknown model kind {kind!r}: expected azure or slm")
    if kind == "azure" and adapter is not None:
        raise SlmSwapError("--adapter applies to --model-kind slm only")
    if kind == "azure" and load_in_4bit is not None:
        raise SlmSwapError("--load-in-4bit applies to --model-kind slm only")


def build_client(kind: str, settings, *, adapter=None, concurrency: int = 8, timeout_s: float = 60.0,
                 max_retries: int = 4, batch_size: int = EVAL_BATCH_SIZE, load_in_4bit: bool | None = None):
    """The client for `--model-kind azure|slm` (heavy imports only for the kind asked for)."""
    check_model_kind(kind, adapter=adapter, load_in_4bit=load_in_4bit)
    if kind == "azure":
        from slm_swap.clients.hosted import HostedClient

        return HostedClient(settings, concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries)
    from slm_swap.clients.local import load_local_model

    return load_local_model(settings.slm_model_path, adapter, batch_size, load_in_4bit)
