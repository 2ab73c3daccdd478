"""`slm-swap gateway calibrate`: choose the gateway's confidence threshold for one track.

    slm-swap eval --track toolcall --model-kind azure --split val        # the hosted model's accuracy
    slm-swap gateway calibrate --track toolcall --adapter slm_swap/04_ft/adapter_toolcall --split val
    # -> slm_swap/06_gateway/policy_toolcall.json and policy_toolcall.png (the risk-coverage chart)

The SLM (in this process, as `eval --model-kind slm` runs it, through the same `run_eval`) answers
the split; each answer gets the validators' verdict against its row's functions (the gateway's own
checks, `core.tool_schema`), its confidence (`evaluation.calibrate.confidence` of its token
log-probabilities) and whether the track's scoring calls it right. The threshold with the most
coverage whose accepted answers reach the target is written as the policy the gateway reads.
The eval's metrics and records are kept beside the policy (`calibration_<track>_<split>.json`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from slm_swap.app.requests import GatewayCalibrateRequest
from slm_swap.app.runs import TracedCommand, check_adapter_track
from slm_swap.core.compare import load_metrics_file, parse_delta
from slm_swap.core.tracks import get_row_track
from slm_swap.evaluation.calibrate import (Point, ThresholdChoice, evidence_needed, example_correct, example_point,
                                           parse_target, pick_threshold, policy_document, prompt_functions)
from slm_swap.evaluation.rows import check_eval_inputs, default_out_path, run_eval
from slm_swap.infra.config import DEFAULT_GATEWAY_RECORDS, Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_bytes, check_writable_file, read_jsonl, sha256_file, write_json
from slm_swap.llm.clients import build_client
from slm_swap.llm.completion import Completion


@dataclass(frozen=True)
class Calibration:
    policy_path: Path
    chart_path: Path
    choice: ThresholdChoice
    target: Fraction
    target_source: dict[str, Any]


def default_policy_path(track: str) -> Path:
    return DEFAULT_GATEWAY_RECORDS.parent / f"policy_{track}.json"


def calibrate(settings: Settings, request: GatewayCalibrateRequest) -> Calibration:
    """Evaluate the SLM on the split, choose the threshold, write the policy and the chart. Every
    input is checked before the model is loaded."""
    track = get_row_track(request.track).name
    policy_path = Path(request.out or default_policy_path(track))
    chart_path = policy_path.with_suffix(".png")
    metrics_path = policy_path.with_name(f"calibration_{track}_{request.split}.json")
    check_adapter_track(request.adapter, track)
    split_data = check_eval_inputs(track=track, split=request.split, data_dir=request.data_dir, out=metrics_path,
                                   limit=request.limit, max_errors=None)
    rows_path, rows, answers = split_data
    functions = [answer["functions"] for answer in answers] if answers else [
        _row_functions(rows_path, number, track, row["prompt"]) for number, row in enumerate(rows, start=1)]
    if request.target is not None:
        target, source = parse_target(request.target), {"source": "--target"}
    else:
        target, source = hosted_target(request, track, rows_path, len(rows))
    for path, what in ((policy_path, "--out"), (chart_path, "--out (its chart)")):
        check_writable_file(path, what)

    command = TracedCommand(settings, "gateway calibrate")  # Langfuse settings checked before the model loads
    client = _Recording(build_client("slm", settings, adapter=request.adapter, batch_size=request.batch_size,
                                     load_in_4bit=request.load_in_4bit, precision=request.precision))
    trace_input = {"track": track, "split": request.split, "adapter": str(request.adapter) if request.adapter else None}
    try:
        with command.run(f"gateway calibrate {track}", input=trace_input) as run:
            run_eval(track=track, split=request.split, data_dir=request.data_dir, out=metrics_path, client=client,
                     adapter=request.adapter, limit=request.limit, progress="bar", trace=run, split_data=split_data,
                     scrub=settings.scrub)
    finally:
        client.close()
    points = [_point(track, rows[i], answers[i] if answers else {}, functions[i], client.completions.get(i), rows_path, i)
              for i in range(len(rows))]
    choice = pick_threshold(points, target)
    document = policy_document(
        track=track, split=request.split,
        model={"kind": "slm", "identity": client.identity, "adapter": str(request.adapter) if request.adapter else None},
        dataset={"path": str(rows_path), "sha256": sha256_file(rows_path), "limit": request.limit},
        choice=choice, target=target, target_source={**source, "calibration_metrics": metrics_path.name},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json(policy_path, document)
    write_chart(choice, target, f"{track} / {request.split}: {client.identity}", chart_path)
    return Calibration(policy_path, chart_path, choice, target, source)


def hosted_target(request: GatewayCalibrateRequest, track: str, rows_path: Path, n: int) -> tuple[Fraction, dict[str, Any]]:
    """The hosted model's accuracy on the same examples of the split (its eval's records, scored as
    the SLM's are) minus --delta, floored at 0; or one line asking for --target."""
    delta = parse_delta(request.delta)
    path = default_out_path(request.eval_dir, track, "azure", request.split, None)
    ask = f"run `slm-swap eval --track {track} --model-kind azure --split {request.split}` first, or give --target"
    if not path.is_file():
        raise SlmSwapError(f"{path}: no hosted metrics for {track}/{request.split} to derive the target from: {ask}")
    metrics = load_metrics_file(path, track)
    if metrics["dataset"]["sha256"] != sha256_file(rows_path):
        raise SlmSwapError(f"{path}: the hosted eval used another dataset than {rows_path}: {ask}")
    records_path = path.parent / str(metrics.get("records_path") or "")
    records = read_jsonl(records_path, "records file") if metrics.get("records_path") and records_path.is_file() else []
    by_index = {r["index"]: r for r in records if isinstance(r, dict) and isinstance(r.get("index"), int)}
    if any(i not in by_index for i in range(n)):
        raise SlmSwapError(f"{path}: its per-example records ({records_path.name}) are missing or incomplete: {ask}")
    correct = sum(example_correct(track, by_index[i]) for i in range(n))
    target = max(Fraction(0), Fraction(correct, n) - delta)
    return target, {"source": "hosted", "hosted_metrics": str(path), "hosted_correct": correct, "hosted_n": n,
                    "delta": str(delta)}


class _Recording:
    """The SLM client, keeping each completion (text and token log-probabilities) by row index."""

    def __init__(self, client):
        self.client, self.kind, self.identity = client, client.kind, client.identity
        self.completions: dict[int, Completion] = {}

    def complete(self, messages_list: list[list[dict[str, str]]]) -> Iterator[Completion]:
        for completion in self.client.complete(messages_list):
            self.completions[completion.index] = completion  # no resume: the index is the row's
            yield completion

    def close(self) -> None:
        self.client.close()


def _row_functions(rows_path: Path, number: int, track: str, prompt: str) -> list[dict[str, Any]]:
    try:
        return prompt_functions(track, prompt)
    except SlmSwapError as exc:
        raise SlmSwapError(f"{rows_path}: row {number}: {exc}") from None


def _point(track: str, row: dict[str, Any], answer: dict[str, Any], functions: list[dict[str, Any]],
           completion: Completion | None, rows_path: Path, index: int) -> Point:
    """The validators' verdict, the confidence and the correctness of one row's SLM answer."""
    if completion is None or completion.text is None:
        return Point(False, float("-inf"), False)
    try:
        return example_point(track, {**row, **answer, "output": completion.text}, functions, completion.token_logprobs or ())
    except ValueError as exc:  # a function's schema no validator can use: a data bug, not a bad answer
        raise SlmSwapError(f"{rows_path}: row {index + 1}: {exc}") from None


def write_chart(choice: ThresholdChoice, target: Fraction, title: str, path: Path) -> Path:
    """Risk (share of accepted answers that are wrong) against coverage (share of all examples
    accepted), one point per threshold; the target risk dashed, the operating point starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    n = choice.n or 1
    coverage = [c.accepted / n for c in choice.curve]
    risk = [1 - c.correct / c.accepted for c in choice.curve]
    ax.plot(coverage, risk, marker="o", markersize=3, color="#4c72b0", label="SLM, thresholds high to low")
    ax.axhline(float(1 - target), linestyle="--", color="#c44e52", label=f"target risk {float(1 - target):.3f}")
    if choice.threshold is not None:
        point_risk = 1 - choice.correct / choice.accepted
        ax.plot([choice.accepted / n], [point_risk], marker="*", markersize=14, color="#55a868", linestyle="none",
                label=f"operating point: threshold {choice.threshold:.4f}, coverage {choice.accepted}/{choice.n}")
    else:
        ax.text(0.5, 0.5, "no threshold reaches the target: coverage 0", transform=ax.transAxes, ha="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("coverage (accepted / all examples)")
    ax.set_ylabel("risk (wrong / accepted)")
    ax.set_title(title[:90], fontsize="small")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    atomic_write_bytes(Path(path), png.getvalue())
    return Path(path)


def describe(result: Calibration) -> str:
    """The operating point in one line, as the command prints it."""
    choice, target = result.choice, result.target
    source = result.target_source
    derived = (f" (hosted {source['hosted_correct']}/{source['hosted_n']} minus delta {source['delta']})"
               if source.get("source") == "hosted" else "")
    head = f"{result.policy_path}: target accuracy {float(target):.4f}{derived}; "
    if choice.threshold is None:
        return (head + f"no threshold reaches it with 95% confidence (one-sided exact binomial test): coverage "
                f"0/{choice.n}, every request goes to the hosted model "
                f"({choice.valid}/{choice.n} answers valid; {evidence_needed(target)}); chart {result.chart_path}")
    return (head + f"threshold {choice.threshold:.6g} accepts {choice.accepted}/{choice.n} "
            f"(coverage {float(choice.coverage):.3f}), {choice.correct}/{choice.accepted} right; chart {result.chart_path}")
