"""`slm-swap eval --track agent`: a model as the CodeAct agent on a split's tasks, scored as the filter judges.

The agent, prompt, tools, step limit and new tokens per turn are capture's (`codeact`, the tasks' own
`max_steps` and `max_turn_tokens`), so the student is asked exactly what the teacher was, with the same
budget. The tasks are `build`'s `<data-dir>/agent/<split>.tasks.jsonl`.
Each task carries a digest of the system prompt the teacher saw; tools (`--tools`) that would show the
student other tool schemas are refused before anything runs.
The run is capture's loop (`capture.capture`) with the model under test playing the agent: each task's
trajectory record, plus its scores (`tracks.AgentTrack.score`), is appended to `<out>.records.jsonl`
as it finishes, so `resume=True` asks only what is missing, and a resume against another model,
adapter, task set or limit is refused. The metrics file has every eval's shape (rates, `ci95`,
`n`, errors, model, dataset path and sha256, timings, `langfuse_trace_id`) plus `mean_steps`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slm_swap.core.results import metrics_document
from slm_swap.core.tracks import TRACKS
from slm_swap.data.examples import Example
from slm_swap.evaluation.rows import records_path_for
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_jsonl, sha256_file, write_json
from slm_swap.infra.progress import Progress
from slm_swap.infra.tracing import NullRun, Run
from slm_swap.llm.agent_models import AGENT_MAX_NEW_TOKENS, AgentModel
from slm_swap.trajectories.capture import capture
from slm_swap.trajectories.codeact import (DEFAULT_MAX_STEPS, DEFAULT_TOOLS, load_tools_factory, prompt_digest,
                                           system_prompt)

AGENT = TRACKS["agent"]


def tasks_path(data_dir: Path, split: str) -> Path:
    return AGENT.split_file(data_dir, split)


@dataclass(frozen=True)
class Tasks:
    """An agent tasks file, checked: what the eval asks, with the capture's limits and prompt digests."""

    examples: list[Example]
    max_steps: int  # model turns per task
    max_turn_tokens: int  # new tokens per model turn
    digests: list[str | None]  # sha256 of each task's capture system prompt (None: not recorded)


def load_tasks(path: Path, limit: int | None = None) -> Tasks:
    """The tasks file checked row by row, cut to `limit` tasks."""
    if limit is not None and limit < 1:
        raise SlmSwapError(f"--limit must be >= 1, got {limit}")
    path = Path(path)
    if not path.is_file():
        raise SlmSwapError(f"{path}: no such agent tasks file (run `slm-swap build` on accepted trajectories)")
    rows = read_jsonl(path, "agent tasks file")
    if not rows:
        raise SlmSwapError(f"{path}: no tasks")
    examples, limits, turn_limits, digests = [], set(), set(), []
    for number, row in enumerate(rows, start=1):
        gold = row.get("gold") if isinstance(row, dict) else None
        if not (isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("task"), str)
                and isinstance(row.get("functions"), list) and row["functions"]
                and all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in row["functions"])
                and isinstance(gold, dict) and isinstance(gold.get("name"), str) and isinstance(gold.get("arguments"), dict)):
            raise SlmSwapError(f"{path}: row {number}: expected an agent task: 'id', 'task', 'functions' (signatures "
                               "with names) and 'gold' ({'name', 'arguments'})")
        if gold["name"] not in {f["name"] for f in row["functions"]}:
            raise SlmSwapError(f"{path}: row {number}: the gold call {gold['name']!r} is not one of the task's tools "
                               f"({', '.join(f['name'] for f in row['functions'])})")
        limits.add(row.get("max_steps", DEFAULT_MAX_STEPS))
        turn_limits.add(row.get("max_turn_tokens", AGENT_MAX_NEW_TOKENS))
        digests.append(row.get("system_prompt_sha256"))
        examples.append(Example(id=row["id"], request=row["task"], functions=row["functions"], name=gold["name"],
                                arguments=gold["arguments"], possible_answer=row.get("possible_answer")))
    if len(limits) != 1 or not all(isinstance(n, int) and n >= 1 for n in limits):
        raise SlmSwapError(f"{path}: tasks must share one whole-number 'max_steps' >= 1, got {sorted(map(str, limits))}")
    if len(turn_limits) != 1 or not all(isinstance(n, int) and n >= 1 for n in turn_limits):
        raise SlmSwapError(f"{path}: tasks must share one whole-number 'max_turn_tokens' >= 1, "
                           f"got {sorted(map(str, turn_limits))}")
    return Tasks(examples[:limit], limits.pop(), turn_limits.pop(), digests[:limit])


def check_tools_match(path: Path, tasks: Tasks, tools_spec: str) -> None:
    """Refuse tools that would show the agent other tool schemas than the teacher was shown when its
    trajectories were captured (another `--tools`, or signatures edited since): the student would be
    asked something it was never trained on, and compared with a teacher that saw something else."""
    factory = load_tools_factory(tools_spec)
    for number, (example, digest) in enumerate(zip(tasks.examples, tasks.digests), start=1):
        if digest is not None and prompt_digest(system_prompt(example.functions, factory, tools_spec)) != digest:
            raise SlmSwapError(
                f"{path}: row {number} ({example.id}): the tools of --tools {tools_spec} do not match the tool schemas "
                "the trajectories were captured with (the agent's system prompt differs): evaluate with the capture's "
                "tools, or capture and build again with these")


def run_agent_eval(
    *,
    split: str,
    tasks: Path,
    out: Path,
    model: AgentModel,
    model_record: dict[str, Any],
    limit: int | None = None,
    max_steps: int | None = None,
    tools_spec: str = DEFAULT_TOOLS,
    concurrency: int = 8,
    resume: bool = False,
    max_errors: int | None = None,
    progress: Progress = "bar",
    trace: Run = NullRun(),
) -> dict[str, Any]:
    """Run the agent on every task, write the records and the metrics file; returns the metrics
    document. `model_record` is the metrics file's `model` ({kind, identity, adapter})."""
    loaded = load_tasks(tasks, limit)
    check_tools_match(tasks, loaded, tools_spec)
    max_steps = max_steps or loaded.max_steps
    out = Path(out)
    out.unlink(missing_ok=True)  # as every eval: a run that fails leaves no older result for `compare`
    dataset = {"path": str(tasks), "sha256": sha256_file(Path(tasks))}
    source = {"name": "agent-tasks", **dataset, "limit": limit}

    def scored(record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, **AGENT.score(record)}
        trace.example(record["index"], input=record["task"], output=record["final_answer"],
                      metadata={k: record[k] for k in ("request_id", "reason", "turns", "error", "latency_s")},
                      scores={key: record[key] for key in AGENT.metric_keys([record])})
        return record

    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    summary = capture(loaded.examples, source, out=records_path_for(out), model=model, max_steps=max_steps,
                      max_turn_tokens=loaded.max_turn_tokens, tools_spec=tools_spec, concurrency=concurrency,
                      resume=resume, max_errors=max_errors,
                      progress=progress, trace=trace, on_record=scored)
    records = read_jsonl(records_path_for(out), "records file")
    wall = time.perf_counter() - started
    document = metrics_document(
        track=AGENT.name, split=split, dataset=dataset, model=model_record, records=records,
        records_path=records_path_for(out).name,
        timings={"started_at": started_at.isoformat(timespec="seconds"),
                 "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": round(wall, 3),
                 "examples_this_run": summary["captured_this_run"],
                 "examples_per_s": round(summary["captured_this_run"] / wall, 3) if wall > 0 and summary["captured_this_run"] else None},
        langfuse_trace_id=trace.trace_id,
    )
    document["mean_steps"] = round(sum(r["turns"] for r in records) / len(records), 3)
    document["max_steps"] = max_steps
    document["max_turn_tokens"] = loaded.max_turn_tokens
    write_json(out, document)
    rates = {name: value for name, value in document.items() if name.endswith("_rate")}
    for name, value in rates.items():
        trace.score(name, value)
    trace.update(output={"metrics_path": str(out), **rates, "mean_steps": document["mean_steps"]},
                 metadata={"n": document["n"], "errors": document["errors"]})
    return document
