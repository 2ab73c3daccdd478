"""One evaluation run: a track's split through one client, scored, written as a metrics file.

Per-example records are appended to `<out>.records.jsonl` as they complete, so a killed run can
be finished with `resume=True`: examples already recorded (without an error) are not asked again,
and the final metrics equal an uninterrupted run's. The metrics file itself is written once, at
the end, atomically. `<out>.run.json` pins what the records were made with, so a resume against
another model, adapter or dataset is refused instead of silently mixing results.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any, Protocol, Iterator

from slm_swap.data.examples import load_rows
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.completion import Completion
from slm_swap.infra.fileio import (
    atomic_write_text,
    check_writable_file,
    jsonl_text,
    naming_path,
    read_json,
    read_jsonl,
    remove_stale_temps,
    sha256_file,
    write_json,
)
from slm_swap.core.metrics import gold_problem
from slm_swap.core.prompts import build_messages
from slm_swap.core.results import metrics_document
from slm_swap.core.tracks import get_row_track
from slm_swap.infra.progress import Progress, progress_meter
from slm_swap.infra.recordable import recordable
from slm_swap.infra.tracing import NullRun, Run


class Client(Protocol):
    kind: str
    identity: str

    def complete(self, messages_list: list[list[dict[str, str]]]) -> Iterator[Completion]: ...


def default_out_path(eval_dir: Path, track: str, kind: str, split: str, adapter: Path | None) -> Path:
    """The seed's naming: 05_eval/<track>_<kind>[_ft]_<split>.json."""
    return Path(eval_dir) / f"{track}_{kind}{'_ft' if adapter else ''}_{split}.json"


def records_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".records.jsonl")


def _run_path_for(out: Path) -> Path:
    return out.with_name(out.stem + ".run.json")


def load_split(data_dir: Path, track: str, split: str, limit: int | None = None) -> tuple[Path, list[dict], list[dict] | None]:
    """(rows path, rows, BFCL possible answers or None), cut to `limit` rows. Every row must be
    scorable, checked here so a bad row stops the eval before any request is sent."""
    rows_path = get_row_track(track).split_file(data_dir, split)
    if limit is not None and limit < 1:
        raise SlmSwapError(f"--limit must be >= 1, got {limit}")
    rows = load_rows(rows_path)
    if not rows:
        raise SlmSwapError(f"{rows_path}: no rows")
    for number, row in enumerate(rows, start=1):
        if problem := gold_problem(track, row["completion"]):
            raise SlmSwapError(f"{rows_path}: row {number}: {problem}")
    answers_path = rows_path.with_name(f"{split}.answers.jsonl")
    answers = None
    if answers_path.exists():
        answers = read_jsonl(answers_path, "answers file")
        if len(answers) != len(rows):
            raise SlmSwapError(f"{answers_path}: {len(answers)} answers for {len(rows)} rows in {rows_path}")
        for number, answer in enumerate(answers, start=1):
            if not (isinstance(answer, dict) and isinstance(answer.get("possible_answer"), dict)
                    and isinstance(answer.get("functions"), list)):
                raise SlmSwapError(f"{answers_path}: row {number}: expected an object with 'possible_answer' "
                                   "(an object) and 'functions' (a list)")
    if limit is not None:
        rows, answers = rows[:limit], answers[:limit] if answers else None
    return rows_path, rows, answers


def check_eval_inputs(*, track: str, split: str, data_dir: Path, out: Path, limit: int | None,
                      max_errors: int | None) -> tuple[Path, list[dict], list[dict] | None]:
    """Everything about an eval that can be wrong before a model is loaded or a request sent:
    the split's rows and answers (returned), the output path, the error budget."""
    if max_errors is not None and max_errors < 0:
        raise SlmSwapError(f"--max-errors must be >= 0, got {max_errors}")
    split_data = load_split(data_dir, track, split, limit)
    check_writable_file(Path(out), "--out")
    return split_data


def _read_records(path: Path, keys: list[str]) -> dict[int, dict[str, Any]]:
    """Finished records by index; a torn last line (killed mid-write), errored examples and records
    without a pass/fail value for every one of `keys` (an edited file) are dropped: asked again."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json_input.loads(line)
        except json_input.JsonInputError:
            continue
        if (isinstance(record, dict) and isinstance(record.get("index"), int) and not record.get("error")
                and all(isinstance(record.get(key), bool) for key in keys)):
            done[record["index"]] = record
    return done


def run_eval(
    *,
    track: str,
    split: str,
    data_dir: Path,
    out: Path,
    client: Client,
    adapter: Path | None = None,
    limit: int | None = None,
    resume: bool = False,
    max_errors: int | None = None,
    progress: Progress = "bar",
    trace: Run = NullRun(),
    split_data: tuple[Path, list[dict], list[dict] | None] | None = None,
    scrub: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Evaluate, write records and the metrics file, and record it all on `trace` (one
    observation per example, the rates as scores). `split_data` is `check_eval_inputs`'s result
    when the caller already checked the inputs (before loading the model); `scrub` (`Settings.scrub`)
    takes the configured secrets out of what is recorded and traced, never out of what is scored."""
    rows_path, rows, answers = split_data or check_eval_inputs(
        track=track, split=split, data_dir=data_dir, out=out, limit=limit, max_errors=max_errors)
    out = Path(out)
    records_path, run_path = records_path_for(out), _run_path_for(out)
    run = {
        "track": track,
        "split": split,
        "dataset": {"path": str(rows_path), "sha256": sha256_file(rows_path)},
        "n": len(rows),
        "model": {"kind": client.kind, "identity": client.identity, "adapter": str(adapter) if adapter else None},
    }
    previous = read_json(run_path, "run file") if resume and run_path.exists() else None
    if previous is not None and previous != run:
        raise SlmSwapError(
            f"--resume: {records_path} was made by a different run ({_first_difference(previous, run)}); "
            "run again without --resume"
        )
    # This run's metrics file is written at its end: the previous one goes now, so a run that fails
    # never leaves an older result beside its new records for `compare` to pick up.
    out.unlink(missing_ok=True)
    for path in (out, records_path, run_path):
        remove_stale_temps(path)  # left by a process killed mid-write
    if previous is not None:
        core_keys = [name.removesuffix("_rate") for name in get_row_track(track).core_metrics]
        done = {i: r for i, r in _read_records(records_path, core_keys).items() if i < len(rows)}
    else:
        done = {}
        write_json(run_path, run)
        atomic_write_text(records_path, "")
    row_track = get_row_track(track)
    budget = max_errors if max_errors is not None else max(1, len(rows) // 10)
    pending = [i for i in range(len(rows)) if i not in done]
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    errors = 0
    bar = progress_meter(progress, f"eval {track}/{client.kind}{' ft' if adapter else ''}", len(rows), len(done))
    with open(records_path, "a", encoding="utf-8") as log:
        completions = client.complete([build_messages(rows[i]["prompt"]) for i in pending])
        try:
            for completion in completions:
                index = pending[completion.index]
                # The row, its line of the answers file (BFCL) and the model's output: what the track scores.
                answered = {**rows[index], **(answers[index] if answers else {}), "output": completion.text}
                # Scored as the model sent it; recorded and traced writable and without secrets (`recordable`).
                record = recordable({
                    "index": index,
                    "output": completion.text,
                    "error": completion.error,
                    "latency_s": round(completion.latency_s, 4),
                    **row_track.score(answered),
                }, scrub)
                with naming_path(records_path):  # a full disk: one line naming the file
                    log.write(json.dumps(record, ensure_ascii=False) + "\n")
                    log.flush()
                trace.example(
                    index,
                    input=rows[index]["prompt"],
                    output=record["output"],
                    metadata={k: v for k, v in record.items() if k not in ("output", "parsed", "index")},
                    scores={k: v for k, v in record.items() if isinstance(v, bool)},  # pass/fail per metric
                    generation={"model": completion.model, "prompt_tokens": completion.prompt_tokens,
                                "completion_tokens": completion.completion_tokens, "latency_s": completion.latency_s},
                )
                done[index] = record
                bar.update(1)
                if completion.error:
                    errors += 1
                    if errors > budget:
                        raise SlmSwapError(
                            f"{errors} requests failed (budget {budget}, --max-errors); last: {completion.error}. "
                            f"Finished examples are kept in {records_path}: fix the cause and rerun with --resume"
                        )
        finally:
            bar.close()
            close = getattr(completions, "close", None)
            if close:
                close()
    wall = time.perf_counter() - started
    records = [done[i] for i in range(len(rows))]
    atomic_write_text(records_path, jsonl_text(records))  # sorted, one line per example
    document = metrics_document(
        track=track,
        split=split,
        dataset=run["dataset"],
        model=run["model"],
        records=records,
        records_path=records_path.name,
        timings={
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(wall, 3),
            "examples_this_run": len(pending),
            "examples_per_s": round(len(pending) / wall, 3) if wall > 0 and pending else None,
        },
        langfuse_trace_id=trace.trace_id,
    )
    write_json(out, document)
    rates = {name: value for name, value in document.items() if name.endswith("_rate")}
    for name, value in rates.items():
        trace.score(name, value)
    trace.update(output={"metrics_path": str(out), **rates}, metadata={"n": document["n"], "errors": document["errors"]})
    return document


def _first_difference(previous: dict[str, Any], current: dict[str, Any]) -> str:
    for key in current:
        if previous.get(key) != current[key]:
            return f"{key} was {previous.get(key)!r}, now {current[key]!r}"
    return "different settings"
