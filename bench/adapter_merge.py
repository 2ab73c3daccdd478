"""The LoRA tax on decoding, measured side by side in one run on the embedded model: an adapter kept
as PEFT layers (what `serve` does with several adapters) against the same adapter merged into the
weights (what an eval, a pipeline re-eval and calibration now load), single stream and batched, fp32,
greedy, with the outputs compared token for token.

    .venv/bin/python bench/adapter_merge.py --adapter slm_swap/04_ft/adapter_toolcall   # after scripts/main.sh
    .venv/bin/python bench/adapter_merge.py --adapter DIR --prompts 16 --max-new-tokens 64

Prints ms per generated token single stream (one prompt at a time), seconds for the batch, the
merged/unmerged ratios, and how many outputs are identical (expected: all, in fp32).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slm_swap.core.prompts import build_messages, build_prompt  # noqa: E402
from slm_swap.data.bfcl import load_bfcl  # noqa: E402
from slm_swap.infra.errors import SlmSwapError  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model  # noqa: E402
from slm_swap.llm.local import Generation, LocalModel, check_adapter  # noqa: E402


def timed(model: LocalModel, prompts: list[str], max_new_tokens: int, batched: bool) -> tuple[float, list[Generation]]:
    started = time.perf_counter()
    if batched:
        out = model.generate(prompts, max_new_tokens=max_new_tokens)
    else:
        out = [model.generate([prompt], max_new_tokens=max_new_tokens)[0] for prompt in prompts]
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, required=True, help="a LoRA adapter folder for the embedded model")
    parser.add_argument("--prompts", type=int, default=8, help="BFCL tool-call prompts (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    args = parser.parse_args()
    try:
        check_adapter(args.adapter)
    except SlmSwapError as exc:
        sys.exit(f"error: {exc}")
    examples, _ = load_bfcl(("simple_python",))
    messages = [build_messages(build_prompt("toolcall", e.request, e.functions)) for e in examples[: args.prompts]]

    unmerged = LocalModel(fetch_embedded_model(), batch_size=args.prompts)
    unmerged.add_adapter("adapter", args.adapter)
    unmerged.default_adapter = "adapter"
    merged = LocalModel(fetch_embedded_model(), batch_size=args.prompts)
    merged.merge_adapter(args.adapter)
    prompts = [merged.render(m) for m in messages]
    timed(merged, prompts[:1], 4, False), timed(unmerged, prompts[:1], 4, False)  # warm-up

    print(f"prompts={len(prompts)} max_new_tokens={args.max_new_tokens} threads={os.cpu_count()} fp32, greedy")
    print(f"{'':<28}{'unmerged (PEFT layers)':>24}{'merged':>12}{'merged / unmerged':>20}")
    for batched in (False, True):
        (t_u, out_u), (t_m, out_m) = timed(unmerged, prompts, args.max_new_tokens, batched), \
            timed(merged, prompts, args.max_new_tokens, batched)
        tokens_u, tokens_m = sum(g.completion_tokens for g in out_u), sum(g.completion_tokens for g in out_m)
        same = sum(a.tokens == b.tokens for a, b in zip(out_u, out_m))
        if batched:
            label, u, m = f"batch of {len(prompts)}, s", f"{t_u:.2f}", f"{t_m:.2f}"
        else:
            label, u, m = "single stream, ms/token", f"{1000 * t_u / tokens_u:.1f}", f"{1000 * t_m / tokens_m:.1f}"
        print(f"{label:<28}{u:>24}{m:>12}{t_m / t_u * tokens_u / tokens_m if not batched else t_m / t_u:>20.2f}"
              f"   identical outputs {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
