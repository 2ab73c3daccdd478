"""What every model client returns (`Completion`) and the budgets both sides share."""

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
    # Each completion token's log-probability, where the client reports them (the local SLM).
    token_logprobs: tuple[float, ...] | None = None
