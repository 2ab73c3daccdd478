"""Does fine-tuning visibly learn? The embedded model's tool-call metrics on the BFCL test split
before and after one fine-tune with the seed's fixed settings, side by side.

    .venv/bin/python bench/finetune_gain.py [--train 256] [--test 32] [--track toolcall]

Target: valid_call_rate from 0 to >= 0.5 on the test split. The fine-tune is the library's own
(`slm_swap.train.run.train`, cpu backend, LoRA r=64 alpha=16 dropout=0.1, lr 2e-4, one epoch);
the evals are the library's own (`slm_swap.evaluation.rows.run_eval` through the batched local client).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANGFUSE_DISABLED", "1")

from slm_swap.app.cli import main as cli  # noqa: E402
from slm_swap.core.tracks import AST_METRIC, get_track  # noqa: E402
from slm_swap.evaluation.rows import run_eval  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model  # noqa: E402
from slm_swap.llm.local import load_local_model  # noqa: E402
from slm_swap.train.run import TrainRequest, train  # noqa: E402

TARGET = ("valid_call_rate", 0.5)


def evaluate(model: Path, data: Path, track: str, out: Path, adapter: Path | None) -> dict:
    started = time.perf_counter()
    client = load_local_model(model, adapter)
    document = run_eval(track=track, split="test", data_dir=data, out=out, client=client, adapter=adapter, progress="off")
    document["seconds"] = time.perf_counter() - started
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--track", default="toolcall", choices=("structured", "toolcall"))
    parser.add_argument("--train", type=int, default=256, help="train rows from BFCL simple_python (default: %(default)s)")
    parser.add_argument("--val", type=int, default=16, help="validation rows (default: %(default)s)")
    parser.add_argument("--test", type=int, default=32, help="test rows (default: %(default)s)")
    args = parser.parse_args()
    model = fetch_embedded_model()
    with tempfile.TemporaryDirectory() as tmp:
        data, adapter = Path(tmp) / "data", Path(tmp) / f"adapter_{args.track}"
        assert cli(["prepare", "--source", "bfcl", "--train", str(args.train), "--val", str(args.val),
                    "--test", str(args.test), "--out-dir", str(data)]) == 0
        before = evaluate(model, data, args.track, Path(tmp) / "before.json", None)
        manifest = train(TrainRequest(track=args.track, train_path=data / args.track / "train.jsonl",
                                      val_path=data / args.track / "val.jsonl", out_dir=adapter, model_path=model,
                                      backend="cpu", save_steps=10_000))
        after = evaluate(model, data, args.track, Path(tmp) / "after.json", adapter)
    print(f"{args.track}: {args.train} train rows, {args.test} test rows; fine-tune {manifest['steps']} steps in "
          f"{manifest['duration_s']:.0f} s, val_loss {manifest['val_loss_before']:.3f} -> {manifest['val_loss']:.3f}; "
          f"evals {before['seconds']:.0f} s and {after['seconds']:.0f} s")
    print(f"{'metric':<22} {'before':>8} {'after':>8} {'gain':>8}")
    for name in [*get_track(args.track).core_metrics, AST_METRIC]:
        if name in before:
            print(f"{name:<22} {before[name]:>8.3f} {after[name]:>8.3f} {after[name] - before[name]:>+8.3f}")
    metric, goal = TARGET
    if metric in after:
        print(f"target: {metric} >= {goal} after fine-tuning: {'met' if after[metric] >= goal else 'NOT met'} "
              f"({before[metric]:.3f} -> {after[metric]:.3f})")


if __name__ == "__main__":
    main()
