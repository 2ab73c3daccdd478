"""Training throughput on the embedded model on CPU: random batches (naive padding) vs
length-grouped batches (no packing, so no attention across examples), one epoch each on the
same rows, in fp32; then length-grouped with bf16 autocast (`precision="bf16"`), which `auto`
picks on CPUs with AVX512-BF16/AMX; then the same with TRL's own LM head, which on a CPU projects
every position, against ours, which projects the labelled ones (`slm_swap.train.labelled_loss`);
also the demo-size fine-tune's wall time.

    .venv/bin/python bench/train_throughput.py [--track toolcall] [--examples 32]

Target: >= 1.3x tokens/s for length-grouped batches.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import slm_swap.train.labelled_loss as labelled_loss  # noqa: E402
from slm_swap.app.cli import main as cli  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model  # noqa: E402
from slm_swap.train.run import TrainRequest, train  # noqa: E402


@contextlib.contextmanager
def trl_head():
    """`train()` on CPU with TRL's SFTTrainer as it is (every position through the LM head).
    `train()` imports the trainer class from `labelled_loss` when it is called, so swapping the
    module's name here is what it picks up."""
    from trl import SFTTrainer

    ours = labelled_loss.LabelledPositionsSFTTrainer
    labelled_loss.LabelledPositionsSFTTrainer = SFTTrainer
    try:
        yield
    finally:
        labelled_loss.LabelledPositionsSFTTrainer = ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--track", default="toolcall", choices=("structured", "toolcall"))
    parser.add_argument("--examples", type=int, default=32, help="train rows (the demo uses 32)")
    args = parser.parse_args()
    model = fetch_embedded_model()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        assert cli(["prepare", "--source", "bfcl", "--train", str(args.examples), "--out-dir", str(data)]) == 0
        results = {}
        # One untimed step first: the first optimizer step pays one-off costs (allocations, kernel
        # selection) that would otherwise count against whichever mode runs first.
        for sampling in ("warm-up", "random", "group_by_length", "group_by_length bf16", "group_by_length bf16 trl-head"):
            request = TrainRequest(
                track=args.track,
                train_path=data / args.track / "train.jsonl",
                val_path=data / args.track / "val.jsonl",
                out_dir=Path(tmp) / f"adapter_{sampling.replace(' ', '_')}",
                model_path=model,
                backend="cpu",
                sampling="random" if sampling == "warm-up" else sampling.split()[0],
                precision="bf16" if "bf16" in sampling else "fp32",
                save_steps=10_000,
                max_steps=1 if sampling == "warm-up" else -1,
            )
            with trl_head() if sampling.endswith("trl-head") else contextlib.nullcontext():
                results[sampling] = train(request)
        del results["warm-up"]
    for sampling, manifest in results.items():
        print(f"{sampling:>16}: {manifest['duration_s']:.1f}s, {manifest['train_tokens_per_s']:.1f} tokens/s, "
              f"steps={manifest['steps']} train_loss={manifest['train_loss']:.3f} val_loss {manifest['val_loss_before']:.3f} -> {manifest['val_loss']:.3f}")
    ratio = results["group_by_length"]["train_tokens_per_s"] / results["random"]["train_tokens_per_s"]
    bf16 = results["group_by_length bf16"]["train_tokens_per_s"] / results["group_by_length"]["train_tokens_per_s"]
    head = results["group_by_length bf16"]["train_tokens_per_s"] / results["group_by_length bf16 trl-head"]["train_tokens_per_s"]
    print(f"bf16 autocast vs fp32 (length-grouped): {bf16:.2f}x")
    print(f"LM head on the labelled positions vs TRL's on every position (length-grouped, bf16): {head:.2f}x")
    print(f"speedup: {ratio:.2f}x (target >= 1.3x); demo-size fine-tune ({args.examples} rows, 1 epoch): "
          f"{results['group_by_length']['duration_s']:.0f}s")


if __name__ == "__main__":
    main()
