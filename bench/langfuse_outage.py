"""What a Langfuse outage costs one `slm-swap eval`: the whole command (a process of its own, its
exit included) against a healthy local Langfuse receiver, one answering 503 to everything, one that
accepts connections and never answers, and a closed port; the hosted side is a local stub.

    .venv/bin/python bench/langfuse_outage.py [--limit 8] [--repeats 2]

Target: every outage costs at most the 10 s flush bound plus the 1 s shutdown bound over the healthy
run, the metrics file is written, and stderr has one line saying what was not delivered.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from langfuse_receiver import LangfuseReceiver  # noqa: E402
from openai_stub import OpenAIStub  # noqa: E402

SLM_SWAP = [sys.executable, "-m", "slm_swap.app.cli"]


def eval_once(data_dir: Path, out: Path, env: dict[str, str], limit: int) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([*SLM_SWAP, "eval", "--track", "toolcall", "--model-kind", "azure", "--data-dir", str(data_dir),
                           "--out", str(out), "--limit", str(limit)],
                          env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"eval failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, "\n".join(line for line in done.stderr.splitlines() if "not delivered" in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="langfuse-outage-"))
    data_dir = work / "data"
    subprocess.run([*SLM_SWAP, "prepare", "--source", "xlam", "--dataset-path", str(ROOT / "tests/fixtures/xlam_sample.json"),
                    "--train", "20", "--val", "4", "--test", "12", "--out-dir", str(data_dir)], check=True,
                   capture_output=True)
    base = {**os.environ, "LANGFUSE_SECRET_KEY": "sk-lf-bench-secret", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
            "AZURE_API_KEY": "azure-bench-key-123", "PYTHONPATH": str(ROOT)}
    base.pop("LANGFUSE_DISABLED", None)
    results: dict[str, list[float]] = {}
    with OpenAIStub(lambda messages: '<tool_call name="x">{}</tool_call>') as stub:
        base["AZURE_ENDPOINT"] = f"{stub.url}/openai/deployments/gpt"
        for mode in ("healthy", "503", "hanging", "refused"):
            for repeat in range(args.repeats):
                with LangfuseReceiver(fail_with=503 if mode == "503" else None, hang=mode == "hanging") as receiver:
                    env = {**base, "LANGFUSE_PUBLIC_KEY": receiver.public_key, "LANGFUSE_HOST": receiver.url}
                    if mode != "refused":
                        elapsed, line = eval_once(data_dir, work / f"{mode}-{repeat}.json", env, args.limit)
                if mode == "refused":  # the receiver is closed: nothing listens on its port
                    elapsed, line = eval_once(data_dir, work / f"{mode}-{repeat}.json", env, args.limit)
                results.setdefault(mode, []).append(elapsed)
                if mode != "healthy" and repeat == 0:
                    print(f"{mode}: {line}")
    healthy = min(results["healthy"])
    print(f"\n{'langfuse':<10} {'command s (each run)':<24} {'extra over healthy, worst'}")
    for mode, times in results.items():
        print(f"{mode:<10} {', '.join(f'{t:.2f}' for t in times):<24} {max(times) - healthy:+.2f} s")


if __name__ == "__main__":
    main()
