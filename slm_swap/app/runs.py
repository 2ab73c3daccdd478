"""The traced commands: eval, compare, capture, filter and build as one Langfuse trace each, what
`slm-swap` and the Prefect tasks call.

`TracedCommand` is the one way a command is traced: it opens the tracer first (so missing Langfuse
settings stop the command before any model is loaded or request sent), runs the work inside one trace
whose metadata carries the command and its Prefect flow run, flushes within a bound, and announces
the trace (and the eval's Langfuse experiment) on stderr. The fine-tune's trace is opened by the
training process itself (`slm_swap.train`), on the main rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slm_swap.app.path_checks import check_eval_paths
from slm_swap.app.requests import EvalRequest
from slm_swap.core.compare import Decision, decide, parse_delta
from slm_swap.core.prompts import build_messages
from slm_swap.core.tracks import get_track
from slm_swap.data.examples import load_rows
from slm_swap.evaluation.agent import check_tools_match, load_tasks, run_agent_eval, tasks_path
from slm_swap.evaluation.rows import check_eval_inputs, run_eval
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import check_writable_file, read_json, sha256_file, write_json
from slm_swap.infra.progress import Progress
from slm_swap.infra.tracing import Run, open_tracer, trace_url
from slm_swap.llm.agent_models import build_agent_model
from slm_swap.llm.clients import build_client, check_model_kind
from slm_swap.train.run import MANIFEST
from slm_swap.trajectories.codeact import DEFAULT_TOOLS


class TracedCommand:
    """One command as one trace. Built first: opening the tracer checks the Langfuse settings before
    any work. `run(...)` is the trace; after it the trace id and the experiment are known and announced."""

    def __init__(self, settings: Settings, command: str, *, flow_run_id: str | None = None):
        self.settings, self.command = settings, command
        self.metadata = {"command": command, "prefect_flow_run_id": flow_run_id or settings.prefect_flow_run_id}
        self.tracer = open_tracer(settings)

    @contextlib.contextmanager
    def run(self, name: str, *, input: dict[str, Any], **metadata: Any) -> Iterator[Run]:
        with self.tracer:
            with self.tracer.run(name, input=input, metadata={**self.metadata, **metadata}) as run:
                yield run
            self.tracer.flush()
        announce_trace(self.settings, self.command, run.trace_id, run.experiment)


def announce_trace(settings: Settings, kind: str, trace_id: str | None, experiment: dict[str, Any] | None = None) -> None:
    if trace_id:
        url = trace_url(settings, trace_id)
        print(f"langfuse trace ({kind}): {trace_id}" + (f" {url}" if url else ""), file=sys.stderr)
    if experiment:  # the eval as a dataset run: Langfuse's experiment comparison, this run the baseline
        print(f"langfuse experiment ({kind}): {experiment['dataset']} / {experiment['run']}"
              + (f" {experiment['url']}" if experiment.get("url") else ""), file=sys.stderr)


def eval_dataset(data_dir: Path, track: str, split: str, rows_path: Path, sha256: str,
                 items: list[dict[str, Any]] | None = None) -> tuple[str, list, dict]:
    """(name, items, metadata) of an eval's split as a Langfuse dataset: named from its source
    (`dataset.json`, else the data folder), track and split; one item per row, by default the
    messages every client sends as input and the gold completion as expected output."""
    try:
        source = read_json(Path(data_dir) / "dataset.json", "dataset manifest")["source"]["name"]
    except (SlmSwapError, KeyError, TypeError):
        source = Path(data_dir).resolve().name
    if items is None:
        items = [{"input": build_messages(row["prompt"]), "expected_output": row["completion"]} for row in load_rows(rows_path)]
    metadata = {"sha256": sha256, "path": str(rows_path), "rows": len(items), "track": track, "split": split}
    return f"slm-swap/{source}/{track}/{split}", items, metadata


def check_adapter_track(adapter: Path | None, track: str) -> None:
    """An adapter whose manifest says it was trained for another track is refused (one made
    elsewhere, without a manifest, is taken as it is)."""
    if adapter is None:
        return
    manifest_path = Path(adapter) / MANIFEST
    trained_for = read_json(manifest_path, "adapter manifest").get("track") if manifest_path.is_file() else None
    if trained_for is not None and trained_for != track:
        raise SlmSwapError(f"--adapter {adapter}: trained for track {trained_for!r} ({manifest_path}), "
                           f"not for {track!r}: evaluate it on its own track or train one for {track!r}")


def traced_eval(settings: Settings, request: EvalRequest, *, out: Path, progress: Progress = "bar",
                flow_run_id: str | None = None) -> dict[str, Any]:
    """One eval in one trace, as a Langfuse experiment over the split; returns the metrics document
    (with `langfuse_trace_id`). Inputs are checked before the model is loaded or a request sent; the
    model is closed after. The agent track runs the model as the CodeAct agent over the split's tasks."""
    # Before anything is loaded, and before `run_eval` deletes an old --out.
    check_eval_paths(request, Path(out), settings.slm_model_path)
    prepare = _prepare_agent_eval if get_track(request.track).runs_as_agent else _prepare_row_eval
    command = TracedCommand(settings, "eval", flow_run_id=flow_run_id)
    evaluation = prepare(settings, request, Path(out), progress)
    adapter = request.adapter
    try:
        with command.run(f"eval {request.track} {request.model_kind}{' ft' if adapter else ''}",
                         input=evaluation.trace_input, resume=request.resume) as run:
            name, items, dataset_metadata = eval_dataset(request.rows_dir(), request.track, request.split,
                                                         evaluation.dataset_path, evaluation.trace_input["dataset_sha256"],
                                                         evaluation.items)
            run.use_dataset(name, items, metadata=dataset_metadata, experiment=f"{request.model_kind} "
                            f"{evaluation.trace_input['model_identity']}" + (f" adapter {adapter}" if adapter else ""))
            document = evaluation.evaluate(run)
    finally:
        evaluation.close()
    if run.experiment:  # the dataset run this eval became, for the report's comparison link
        document = {**document, "langfuse_experiment": run.experiment}
        write_json(Path(out), document)
    return document


@dataclasses.dataclass(frozen=True)
class PreparedEval:
    """An eval whose inputs are checked and whose model is ready: what its trace records, the split
    as dataset items (None: the rows' messages and gold completions), the work, and the model's close."""

    trace_input: dict[str, Any]
    dataset_path: Path
    items: list[dict[str, Any]] | None
    evaluate: Callable[[Run], dict[str, Any]]
    close: Callable[[], None]


def _prepare_row_eval(settings: Settings, request: EvalRequest, out: Path, progress: Progress) -> PreparedEval:
    if request.max_steps is not None or request.tools is not None:
        raise SlmSwapError("--max-steps and --tools apply to --track agent only")
    check_adapter_track(request.adapter, request.track)
    split_data = check_eval_inputs(track=request.track, split=request.split, data_dir=request.rows_dir(), out=out,
                                   limit=request.limit, max_errors=request.max_errors)
    client = build_client(request.model_kind, settings, adapter=request.adapter, concurrency=request.concurrency,
                          timeout_s=request.timeout_s, max_retries=request.max_retries, batch_size=request.batch_size,
                          load_in_4bit=request.load_in_4bit, slm_model=request.slm_model, precision=request.precision)
    rows_path = split_data[0]
    trace_input = {"track": request.track, "split": request.split, "dataset_path": str(rows_path),
                   "dataset_sha256": sha256_file(rows_path), "model_kind": request.model_kind,
                   "model_identity": client.identity, "adapter": str(request.adapter) if request.adapter else None,
                   "metrics_path": str(out), "limit": request.limit}

    def evaluate(run: Run) -> dict[str, Any]:
        return run_eval(track=request.track, split=request.split, data_dir=request.rows_dir(), out=out, client=client,
                        adapter=request.adapter, limit=request.limit, resume=request.resume,
                        max_errors=request.max_errors, progress=progress, trace=run, split_data=split_data,
                        scrub=settings.scrub)

    return PreparedEval(trace_input, rows_path, None, evaluate, client.close)


def _prepare_agent_eval(settings: Settings, request: EvalRequest, out: Path, progress: Progress) -> PreparedEval:
    """`eval --track agent`: the model (hosted, or the SLM with its adapter) as the CodeAct agent on
    the split's tasks (`evaluation.agent`): a child per trajectory with its steps in the trace."""
    check_model_kind(request.model_kind, adapter=request.adapter, load_in_4bit=request.load_in_4bit)
    tasks = tasks_path(request.rows_dir(), request.split)
    loaded = load_tasks(tasks, request.limit)
    if request.max_errors is not None and request.max_errors < 0:
        raise SlmSwapError(f"--max-errors must be >= 0, got {request.max_errors}")
    if request.max_steps is not None and request.max_steps < 1:
        raise SlmSwapError(f"--max-steps must be >= 1, got {request.max_steps}")
    tools_spec = request.tools or DEFAULT_TOOLS
    check_tools_match(tasks, loaded, tools_spec)
    check_writable_file(out, "--out")
    check_adapter_track(request.adapter, request.track)
    model, model_record = build_agent_model(request.model_kind, settings, adapter=request.adapter,
                                            timeout_s=request.timeout_s, max_retries=request.max_retries,
                                            concurrency=request.concurrency, batch_size=request.batch_size,
                                            load_in_4bit=request.load_in_4bit, slm_model=request.slm_model,
                                            precision=request.precision)
    trace_input = {"track": request.track, "split": request.split, "dataset_path": str(tasks),
                   "dataset_sha256": sha256_file(tasks), "model_kind": request.model_kind,
                   "model_identity": model_record["identity"], "adapter": model_record["adapter"],
                   "metrics_path": str(out), "limit": request.limit, "max_steps": request.max_steps or loaded.max_steps,
                   "max_turn_tokens": loaded.max_turn_tokens, "tools": tools_spec}
    items = [{"input": {"task": e.request, "functions": e.functions},
              "expected_output": {"name": e.name, "arguments": e.arguments}} for e in loaded.examples]

    def evaluate(run: Run) -> dict[str, Any]:
        return run_agent_eval(split=request.split, tasks=tasks, out=out, model=model, model_record=model_record,
                              limit=request.limit, max_steps=request.max_steps, tools_spec=tools_spec,
                              concurrency=request.concurrency, resume=request.resume, max_errors=request.max_errors,
                              progress=progress, trace=run)

    return PreparedEval(trace_input, tasks, items, evaluate, model.close)


def traced_compare(
    settings: Settings,
    *,
    track: str,
    reference_path: Path,
    candidate_path: Path,
    delta: str | float,
    flow_run_id: str | None = None,
) -> Decision:
    """The decision, recorded as a Langfuse event with the per-metric gaps."""
    exact_delta = parse_delta(delta)  # a bad delta stops here, before anything is traced
    command = TracedCommand(settings, "compare", flow_run_id=flow_run_id)
    trace_input = {"track": track, "azure_metrics": str(reference_path), "slm_metrics": str(candidate_path),
                   "delta": float(exact_delta)}
    with command.run(f"compare {track}", input=trace_input) as run:
        decision = dataclasses.replace(decide(track, reference_path, candidate_path, exact_delta), langfuse_trace_id=run.trace_id)
        summary = decision.as_dict()
        run.event("decision", metadata={
            "FINE_TUNE": int(decision.fine_tune),
            "delta": float(exact_delta),
            "trailing": decision.trailing,
            "gaps": {name: m["gap"] for name, m in summary["metrics"].items()},
        })
        run.score("fine_tune", float(decision.fine_tune))
        run.update(output=summary)
    return decision
