"""Capture's concurrency: 64 trajectories against a teacher that takes 200 ms per step, with
`--concurrency N` against one at a time, side by side in one run.

    .venv/bin/python bench/capture_concurrency.py [--requests 64] [--step-delay 0.2] [--concurrency 16]

The teacher is the scripted one (`slm_swap.trajectories.teacher`, every row answered correctly in two
steps), on 127.0.0.1; capture is the library's own (`capture` with the hosted teacher built from
HOSTED_BASE_URL, as `slm-swap capture` builds it). Target: >= 8x faster, no trajectory lost.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ["LANGFUSE_DISABLED"] = "1"

from slm_swap.data.bfcl import load_bfcl  # noqa: E402
from slm_swap.infra.config import load_settings  # noqa: E402
from slm_swap.llm.agent_models import hosted_agent_model  # noqa: E402
from slm_swap.trajectories.capture import capture  # noqa: E402
from slm_swap.trajectories.records import read_trajectories  # noqa: E402
from slm_swap.trajectories.teacher import ScriptedTeacher  # noqa: E402


def run(examples, teacher_url: str, out: Path, concurrency: int) -> tuple[float, int]:
    os.environ.update(HOSTED_BASE_URL=teacher_url, HOSTED_MODEL="scripted")
    teacher = hosted_agent_model(load_settings())
    started = time.perf_counter()
    capture(examples, {"name": "bfcl"}, out=out, model=teacher, max_steps=4, concurrency=concurrency, progress="off")
    wall = time.perf_counter() - started
    finished = sum(1 for record in read_trajectories(out) if record["finished"] and not record["error"])
    return wall, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument("--step-delay", type=float, default=0.2, help="teacher seconds per step (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="(default: %(default)s)")
    args = parser.parse_args()
    examples = load_bfcl(("simple_python",))[0][: args.requests]
    with ScriptedTeacher(examples, step_delay_s=args.step_delay) as teacher, tempfile.TemporaryDirectory() as tmp:
        one_wall, one_done = run(examples, teacher.url, Path(tmp) / "one.jsonl", 1)
        many_wall, many_done = run(examples, teacher.url, Path(tmp) / "many.jsonl", args.concurrency)
    print(f"{args.requests} trajectories, teacher {args.step_delay * 1000:.0f} ms per step (2 steps each)")
    print(f"{'mode':<16} {'wall s':>8} {'traj/s':>8} {'finished':>9}")
    print(f"{'one at a time':<16} {one_wall:>8.2f} {args.requests / one_wall:>8.2f} {one_done:>9}")
    print(f"{f'concurrency {args.concurrency}':<16} {many_wall:>8.2f} {args.requests / many_wall:>8.2f} {many_done:>9}")
    ratio = one_wall / many_wall
    print(f"speed-up: {ratio:.1f}x (target >= 8x, nothing lost): "
          f"{'met' if ratio >= 8 and one_done == many_done == args.requests else 'NOT met'}")


if __name__ == "__main__":
    main()
