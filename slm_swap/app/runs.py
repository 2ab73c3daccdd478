"""Eval and compare as traced runs: what `slm-swap eval|compare` and the Prefect tasks call.

Each opens a tracer first (so missing Langfuse settings stop the command before any model is
loaded or request sent), runs the library function inside one trace, flushes within a bound, and
returns the result with its `langfuse_trace_id`. The fine-tune's trace is opened by the training
process itself (`slm_swap.train`), on the main rank.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from slm_swap.core.compare import Decision, decide, parse_delta
from slm_swap.core.prompts import build_messages
from slm_swap.core.tracks import get_track
from slm_swap.data.examples import load_rows
from slm_swap.evaluation.rows import check_eval_inputs, run_eval
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import check_writable_file, read_json, sha256_file, write_json
from slm_swap.infra.progress import Progress
from slm_swap.infra.tracing import open_tracer, trace_url
from slm_swap.llm.clients import build_client
from slm_swap.llm.completion import EVAL_BATCH_SIZE


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
    from slm_swap.train.run import MANIFEST

    manifest_path = Path(adapter) / MANIFEST
    trained_for = read_json(manifest_path, "adapter manifest").get("track") if manifest_path.is_file() else None
    if trained_for is not None and trained_for != track:
        raise SlmSwapError(f"--adapter {adapter}: trained for track {trained_for!r} ({manifest_path}), "
                           f"not for {track!r}: evaluate it on its own track or train one for {track!r}")


def traced_eval(
    settings: Settings,
    *,
    track: str,
    split: str,
    data_dir: Path,
    out: Path,
    model_kind: str,
    adapter: Path | None = None,
    limit: int | None = None,
    resume: bool = False,
    max_errors: int | None = None,
    concurrency: int = 8,
    timeout_s: float = 60.0,
    max_retries: int = 4,
    batch_size: int = EVAL_BATCH_SIZE,
    load_in_4bit: bool | None = None,
    progress: Progress = "bar",
    flow_run_id: str | None = None,
    max_steps: int | None = None,
    tools_spec: str | None = None,
) -> dict[str, Any]:
    """One eval run in one trace; returns the metrics document (with `langfuse_trace_id`).
    Inputs are checked before the model is loaded or a request sent; the client is closed after.
    The agent track runs the model as the CodeAct agent (`traced_agent_eval`; `max_steps` and
    `tools_spec` apply to it only)."""
    if get_track(track).rows == "messages":
        return traced_agent_eval(
            settings, split=split, data_dir=data_dir, out=out, model_kind=model_kind, adapter=adapter, limit=limit,
            resume=resume, max_errors=max_errors, concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries,
            batch_size=batch_size, load_in_4bit=load_in_4bit, progress=progress, flow_run_id=flow_run_id,
            max_steps=max_steps, tools_spec=tools_spec)
    if max_steps is not None or tools_spec is not None:
        raise SlmSwapError("--max-steps and --tools apply to --track agent only")
    check_adapter_track(adapter, track)
    with open_tracer(settings) as tracer:
        split_data = check_eval_inputs(track=track, split=split, data_dir=data_dir, out=out, limit=limit,
                                       max_errors=max_errors)
        client = build_client(model_kind, settings, adapter=adapter, concurrency=concurrency, timeout_s=timeout_s,
                              max_retries=max_retries, batch_size=batch_size, load_in_4bit=load_in_4bit)
        rows_path = split_data[0]
        trace_input = {
            "track": track,
            "split": split,
            "dataset_path": str(rows_path),
            "dataset_sha256": sha256_file(rows_path),
            "model_kind": model_kind,
            "model_identity": client.identity,
            "adapter": str(adapter) if adapter else None,
            "metrics_path": str(out),
            "limit": limit,
        }
        metadata = {"command": "eval", "resume": resume, "prefect_flow_run_id": flow_run_id or settings.prefect_flow_run_id}
        try:
            with tracer.run(f"eval {track} {model_kind}{' ft' if adapter else ''}", input=trace_input, metadata=metadata) as run:
                name, items, dataset_metadata = eval_dataset(data_dir, track, split, rows_path, trace_input["dataset_sha256"])
                run.use_dataset(name, items, metadata=dataset_metadata,
                                experiment=f"{model_kind} {client.identity}" + (f" adapter {adapter}" if adapter else ""))
                document = run_eval(track=track, split=split, data_dir=data_dir, out=out, client=client, adapter=adapter,
                                    limit=limit, resume=resume, max_errors=max_errors, progress=progress, trace=run,
                                    split_data=split_data)
        finally:
            client.close()
        tracer.flush()
        if run.experiment:  # the dataset run this eval became, for the report's comparison link
            document = {**document, "langfuse_experiment": run.experiment}
            write_json(out, document)
    announce_trace(settings, "eval", document["langfuse_trace_id"], document.get("langfuse_experiment"))
    return document


def traced_agent_eval(
    settings: Settings,
    *,
    split: str,
    data_dir: Path,
    out: Path,
    model_kind: str,
    adapter: Path | None = None,
    limit: int | None = None,
    resume: bool = False,
    max_errors: int | None = None,
    concurrency: int = 8,
    timeout_s: float = 60.0,
    max_retries: int = 4,
    batch_size: int = EVAL_BATCH_SIZE,
    load_in_4bit: bool | None = None,
    progress: Progress = "bar",
    flow_run_id: str | None = None,
    max_steps: int | None = None,
    tools_spec: str | None = None,
) -> dict[str, Any]:
    """`eval --track agent`: the model (hosted, or the SLM with its adapter) as the CodeAct agent on
    the split's tasks (`trajectories.agent_eval`), in one trace: a child per trajectory with its
    steps, and the split as a Langfuse dataset whose run holds each task's scores."""
    from slm_swap.llm.clients import check_model_kind
    from slm_swap.evaluation.agent import check_tools_match, load_tasks, run_agent_eval, tasks_path
    from slm_swap.llm.agent_models import build_agent_model
    from slm_swap.trajectories.codeact import DEFAULT_TOOLS

    check_model_kind(model_kind, adapter=adapter, load_in_4bit=load_in_4bit)
    tasks = tasks_path(data_dir, split)
    loaded = load_tasks(tasks, limit)
    if max_errors is not None and max_errors < 0:
        raise SlmSwapError(f"--max-errors must be >= 0, got {max_errors}")
    if max_steps is not None and max_steps < 1:
        raise SlmSwapError(f"--max-steps must be >= 1, got {max_steps}")
    tools_spec = tools_spec or DEFAULT_TOOLS
    check_tools_match(tasks, loaded, tools_spec)
    check_writable_file(Path(out), "--out")
    check_adapter_track(adapter, "agent")
    with open_tracer(settings) as tracer:
        model, model_record = build_agent_model(model_kind, settings, adapter=adapter, timeout_s=timeout_s,
                                                max_retries=max_retries, concurrency=concurrency,
                                                batch_size=batch_size, load_in_4bit=load_in_4bit)
        sha256 = sha256_file(tasks)
        trace_input = {"track": "agent", "split": split, "dataset_path": str(tasks), "dataset_sha256": sha256,
                       "model_kind": model_kind, "model_identity": model_record["identity"],
                       "adapter": model_record["adapter"], "metrics_path": str(out), "limit": limit,
                       "max_steps": max_steps or loaded.max_steps, "max_turn_tokens": loaded.max_turn_tokens,
                       "tools": tools_spec}
        metadata = {"command": "eval", "resume": resume, "prefect_flow_run_id": flow_run_id or settings.prefect_flow_run_id}
        items = [{"input": {"task": e.request, "functions": e.functions},
                  "expected_output": {"name": e.name, "arguments": e.arguments}} for e in loaded.examples]
        try:
            with tracer.run(f"eval agent {model_kind}{' ft' if adapter else ''}", input=trace_input, metadata=metadata) as run:
                name, items, dataset_metadata = eval_dataset(data_dir, "agent", split, tasks, sha256, items)
                run.use_dataset(name, items, metadata=dataset_metadata,
                                experiment=f"{model_kind} {model_record['identity']}" + (f" adapter {adapter}" if adapter else ""))
                document = run_agent_eval(split=split, tasks=tasks, out=out, model=model, model_record=model_record,
                                          limit=limit, max_steps=max_steps, tools_spec=tools_spec,
                                          concurrency=concurrency, resume=resume, max_errors=max_errors,
                                          progress=progress, trace=run)
        finally:
            model.close()
        tracer.flush()
        if run.experiment:
            document = {**document, "langfuse_experiment": run.experiment}
            write_json(out, document)
    announce_trace(settings, "eval", document["langfuse_trace_id"], document.get("langfuse_experiment"))
    return document


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
    with open_tracer(settings) as tracer:
        trace_input = {"track": track, "azure_metrics": str(reference_path), "slm_metrics": str(candidate_path),
                       "delta": float(exact_delta)}
        metadata = {"command": "compare", "prefect_flow_run_id": flow_run_id or settings.prefect_flow_run_id}
        with tracer.run(f"compare {track}", input=trace_input, metadata=metadata) as run:
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
        tracer.flush()
    announce_trace(settings, "compare", decision.langfuse_trace_id)
    return decision
