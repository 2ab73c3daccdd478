"""SLM eval throughput on the embedded model: the eval's batched generation vs a one-at-a-time
transformers `generate` loop, on 64 BFCL tool-call prompts, same greedy outputs required.

    .venv/bin/python bench/eval_throughput.py [--prompts 64] [--batch-size 64] [--max-new-tokens 256]

Target: >= 6x examples/s with identical outputs.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slm_swap.core.prompts import build_messages, build_prompt  # noqa: E402
from slm_swap.data.bfcl import load_bfcl  # noqa: E402
from slm_swap.llm.completion import EVAL_BATCH_SIZE, MAX_NEW_TOKENS  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model  # noqa: E402
from slm_swap.llm.local import LocalModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help="default: the eval's own")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="default: the eval's own limit")
    args = parser.parse_args()
    examples, _ = load_bfcl(("simple_python",))
    messages = [build_messages(build_prompt("toolcall", e.request, e.functions)) for e in examples[: args.prompts]]
    model = LocalModel(fetch_embedded_model(), max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    started = time.perf_counter()
    one_at_a_time = [model.reference_generate(model.render(m)) for m in messages]
    sequential = time.perf_counter() - started

    started = time.perf_counter()
    batched = [""] * len(messages)
    for completion in model.complete(messages):
        batched[completion.index] = completion.text
    batch_time = time.perf_counter() - started

    same = sum(a == b for a, b in zip(one_at_a_time, batched))
    n = len(messages)
    print(f"prompts={n} batch_size={args.batch_size} max_new_tokens={args.max_new_tokens} threads={os.cpu_count()}")
    print(f"one-at-a-time: {sequential:.1f}s ({n / sequential:.2f} ex/s)")
    print(f"batched:       {batch_time:.1f}s ({n / batch_time:.2f} ex/s)")
    print(f"identical outputs: {same}/{n}")
    print(f"speedup: {sequential / batch_time:.1f}x (target >= 6x, identical outputs)")


if __name__ == "__main__":
    main()
