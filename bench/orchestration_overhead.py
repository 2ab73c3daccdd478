"""Prefect orchestration overhead: the same steps through the `slm-swap-pipeline` flow and through
the library directly (what `slm-swap eval` / `slm-swap compare` call), same inputs.

Steps: 2 tracks x (hosted eval against a local OpenAI-compatible stub + SLM eval on the embedded
SmolLM2-135M-Instruct, 8 examples each: the main job's shape) + compare + the report, `finetune=never`,
reuse off. The stub runs in a process of its own, as a hosted model would. The flow runs on
Prefect's ephemeral local API; its one-off start-up is timed separately. Each round clears the SLM
cache so both sides load the model.

    .venv/bin/python bench/orchestration_overhead.py [--rounds 3] [--latency 0.0] [--limit 8] [--model embedded]
    .venv/bin/python bench/orchestration_overhead.py --model tiny --limit 12   # the fixed cost, magnified

Target: pipeline wall time <= 1.15x direct (overhead <= 15%). Prefect's cost is a fixed fraction
of a second per run, so `--model tiny` (a random model that evaluates in about a second) shows it
as a large share; the embedded model shows it against a real eval.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LANGFUSE_DISABLED", "1")
WORK = Path(tempfile.mkdtemp(prefix="slm-swap-bench-orch-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", str(WORK / "prefect-home"))  # a fresh ephemeral API database
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_stub import OpenAIStub  # noqa: E402
from slm_swap.app.cli import main as cli  # noqa: E402
from slm_swap.data.examples import load_rows  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model  # noqa: E402
from slm_swap.llm.tiny_model import build_tiny_model  # noqa: E402

TRACKS = ("structured", "toolcall")


def direct(data_dir: Path, eval_dir: Path, limit: int) -> None:
    """The library calls `slm-swap eval` and `slm-swap compare` make, one after another (as a script
    would), then the same report the flow writes (report.md/.json/.png)."""
    from slm_swap.infra.config import load_settings
    from slm_swap.evaluation.rows import default_out_path
    from slm_swap.app.report import TrackReport, write_report
    from slm_swap.app.requests import EvalRequest
    from slm_swap.app.runs import traced_compare, traced_eval

    settings = load_settings()
    reports = []
    for track in TRACKS:
        paths, documents = {}, {}
        for kind in ("azure", "slm"):
            paths[kind] = default_out_path(eval_dir, track, kind, "test", None)
            request = EvalRequest(track=track, model_kind=kind, split="test", data_dir=data_dir, limit=limit)
            documents[kind] = traced_eval(settings, request, out=paths[kind], progress="off")
        decision = traced_compare(settings, track=track, reference_path=paths["azure"], candidate_path=paths["slm"], delta=0.01)
        reports.append(TrackReport(track, documents["azure"], documents["slm"], decision))
    write_report(reports, eval_dir)


def pipeline(data_dir: Path, eval_dir: Path, limit: int) -> None:
    from flows.pipeline import run_pipeline
    from slm_swap.app.flow_configs import PipelineConfig

    run_pipeline(PipelineConfig(tracks=list(TRACKS), data_dir=data_dir, eval_dir=eval_dir, ft_dir=WORK / "04_ft",
                                limit=limit, finetune="never", reuse_max_age_hours=0))


def serve_stub(data_dir: Path, latency_s: float) -> None:
    """The hosted stand-in (`--serve-stub`): answers each test prompt with its gold completion,
    prints its URL, and serves until its stdin closes."""
    answers = {row["prompt"]: row["completion"] for track in TRACKS for row in load_rows(data_dir / track / "test.jsonl")}
    with OpenAIStub(lambda messages: answers[messages[-1]["content"]], latency_s=latency_s) as stub:
        print(stub.url, flush=True)
        sys.stdin.read()


def start_stub(data_dir: Path, latency_s: float) -> tuple[subprocess.Popen, str]:
    # Its own process: in this one its request threads would compete for the GIL with the evals,
    # which costs the flow (hosted evals run beside the SLM's) more than the sequential library
    # calls, and is not what a remote hosted model costs either.
    process = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(data_dir), str(latency_s)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def main() -> None:
    if sys.argv[1:2] == ["--serve-stub"]:
        return serve_stub(Path(sys.argv[2]), float(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="hosted stub latency per request, seconds")
    parser.add_argument("--limit", type=int, default=8, help="examples per eval (at most 12: the xLAM fixture's test split)")
    parser.add_argument("--model", choices=("tiny", "embedded"), default="embedded",
                        help="SLM: the tiny random model (seconds) or the embedded SmolLM2-135M-Instruct (realistic)")
    args = parser.parse_args()

    import logging

    import torch
    from prefect import flow
    from slm_swap.llm.local import load_local_model

    torch.set_num_threads(1)
    data_dir = WORK / "data"
    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "xlam_sample.json"
    assert cli(["prepare", "--source", "xlam", "--dataset-path", str(fixture), "--train", "20", "--val", "4", "--test", "12",
                "--out-dir", str(data_dir)]) == 0
    embedded = fetch_embedded_model()
    os.environ["SLM_MODEL_PATH"] = str(embedded if args.model == "embedded" else build_tiny_model(embedded, WORK / "tiny-model"))
    logging.getLogger("prefect").setLevel(logging.WARNING)  # the flow's INFO logs, not the timing, would fill the screen

    stub, stub_url = start_stub(data_dir, args.latency)
    try:
        os.environ.update({"HOSTED_BASE_URL": f"{stub_url}/v1", "HOSTED_MODEL": "stub"})
        started = time.perf_counter()
        flow(name="warm-up")(lambda: None)()  # starts the ephemeral Prefect API once
        startup = time.perf_counter() - started
        times: dict[str, list[float]] = {"direct": [], "pipeline": []}
        for i in range(args.rounds + 1):  # round 0 warms imports and caches on both sides, not counted
            for name, run in (("direct", direct), ("pipeline", pipeline)):
                load_local_model.cache_clear()
                started = time.perf_counter()
                run(data_dir, WORK / f"{name}-{i}", args.limit)
                if i:
                    times[name].append(time.perf_counter() - started)
    finally:
        stub.stdin.close()
        stub.wait(timeout=10)

    direct_s, pipeline_s = statistics.median(times["direct"]), statistics.median(times["pipeline"])
    print(f"steps: {len(TRACKS)} tracks x (hosted eval + SLM eval, {args.limit} examples each) + compare + report; "
          f"hosted latency {args.latency * 1000:.0f} ms; {args.model} model; median of {args.rounds} rounds")
    print(f"direct (library calls):        {direct_s:.2f} s   rounds: {', '.join(f'{t:.2f}' for t in times['direct'])}")
    print(f"pipeline (Prefect flow):       {pipeline_s:.2f} s   rounds: {', '.join(f'{t:.2f}' for t in times['pipeline'])}")
    print(f"Prefect API start-up (one-off, ephemeral, fresh database): {startup:.2f} s")
    overhead = (pipeline_s - direct_s) / direct_s * 100
    print(f"overhead: {overhead:+.1f}% ({pipeline_s - direct_s:+.2f} s per run; target <= 15%)")
    print(f"overhead incl. API start-up once: {(pipeline_s + startup - direct_s) / direct_s * 100:+.1f}%")


if __name__ == "__main__":
    main()
