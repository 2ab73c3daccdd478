"""`slm-swap capture`: the hosted model as a CodeAct agent over a source's rows, one trajectory per request.

The teacher is reached exactly as `eval` reaches it (the same settings, `openai` client, timeout,
retries, secret scrubbing: `agent_models.hosted_agent_model`), wrapped in smolagents' model class
for OpenAI-compatible or Azure endpoints and driven by the agent in `codeact`. Requests run
`concurrency` trajectories at a time. The agent eval (`agent_eval`) runs this same loop with the
model under test playing the agent.

Trajectories are appended to the output JSONL as they finish, so a killed capture is finished with
`resume=True`: requests already captured are not asked again. A request the teacher could not answer
(after the SDK's retries) is recorded with `error` set, counts against the error budget and is asked
again on resume. `<out>.run.json` pins what the trajectories were made with (teacher, source, step
limit, new tokens per turn, tools, prompt), so a resume with other settings is refused instead of
mixing them. At the end the file is rewritten in source order, atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from slm_swap.data.examples import Example
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import (atomic_write_text, canonical_json, check_writable_file, jsonl_text, naming_path,
                             read_json, remove_stale_temps, write_json)
from slm_swap.infra.progress import Progress, progress_meter
from slm_swap.infra.recordable import recordable
from slm_swap.infra.tracing import NullRun, Run
from slm_swap.infra.workers import in_threads
from slm_swap.llm.agent_models import AGENT_MAX_NEW_TOKENS, AgentModel
from slm_swap.trajectories.codeact import DEFAULT_TOOLS, SYSTEM_PROMPT, load_tools_factory, make_tools, solve
from slm_swap.trajectories.records import read_trajectories

def run_file_for(out: Path) -> Path:
    return out.with_name(out.stem + ".run.json")


def source_examples(source: str, dataset_path: Path | None = None, categories: tuple[str, ...] = (),
                    limit: int | None = None) -> tuple[list[Example], dict[str, Any]]:
    """(the first `limit` rows of a source, one per distinct task text; its provenance): what capture asks."""
    from slm_swap.data.prepare import load_source

    if limit is not None and limit < 1:
        raise SlmSwapError(f"--limit must be >= 1, got {limit}")
    examples, _, provenance = load_source(source, dataset_path, tuple(categories or ()))
    seen: set[str] = set()
    unique = [e for e in examples if not (e.request in seen or seen.add(e.request))]
    return unique[:limit], provenance


def capture_pin(examples: list[Example], source: dict[str, Any], identity: str, max_steps: int,
                tools_spec: str, max_turn_tokens: int = AGENT_MAX_NEW_TOKENS) -> dict[str, Any]:
    """What a capture's trajectories are made with; `--resume` is refused when it differs."""
    return {
        "teacher": identity,
        "source": source,
        "max_steps": max_steps,
        "max_turn_tokens": max_turn_tokens,
        "tools": tools_spec,
        "system_prompt_sha256": hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest(),
        "request_ids": hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest(),
        "tool_schemas": hashlib.sha256(canonical_json([e.functions for e in examples]).encode()).hexdigest(),
    }


def can_resume(out: Path, pin: dict[str, Any]) -> bool:
    """Whether `out` holds (part of) a capture made with exactly `pin`: resuming it asks only what is missing."""
    run_path = run_file_for(Path(out))
    try:
        return Path(out).is_file() and run_path.is_file() and read_json(run_path, "run file") == pin
    except SlmSwapError:
        return False


def generation_error(exc: BaseException) -> str:
    """A short line for a request the teacher did not answer (scrubbed by the caller)."""
    import openai

    from slm_swap.llm.hosted import describe_api_error

    cause = exc.__cause__ or exc
    if isinstance(cause, openai.OpenAIError):
        return describe_api_error(cause)
    first_line = (str(cause).splitlines() or [""])[0][:300]
    return f"{type(cause).__name__}: {first_line}"


def capture(
    examples: list[Example],
    source: dict[str, Any],
    *,
    out: Path,
    model: AgentModel,
    max_steps: int,
    max_turn_tokens: int = AGENT_MAX_NEW_TOKENS,
    tools_spec: str = DEFAULT_TOOLS,
    concurrency: int = 8,
    resume: bool = False,
    max_errors: int | None = None,
    progress: Progress = "bar",
    trace: Run = NullRun(),
    on_record: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Capture one trajectory per example into `out` with `model` playing the agent; returns the
    run's summary. `on_record` may add to each record before it is written (the agent eval scores it)."""
    if not examples:
        raise SlmSwapError(f"source {source.get('name')!r} has no usable rows (single-call requests with signatures)")
    if max_steps < 1:
        raise SlmSwapError(f"--max-steps must be >= 1, got {max_steps}")
    if max_turn_tokens < 1:
        raise SlmSwapError(f"--max-turn-tokens must be >= 1, got {max_turn_tokens}")
    if concurrency < 1:
        raise SlmSwapError(f"--concurrency must be >= 1, got {concurrency}")
    if max_errors is not None and max_errors < 0:
        raise SlmSwapError(f"--max-errors must be >= 0, got {max_errors}")
    factory = load_tools_factory(tools_spec)
    make_tools(factory, tools_spec, examples[0].functions, [])  # a factory that fails, fails before anything is written
    out = Path(out)
    check_writable_file(out, "--out")
    run_path = run_file_for(out)
    pin = capture_pin(examples, source, model.identity, max_steps, tools_spec, max_turn_tokens)
    previous = read_json(run_path, "run file") if resume and run_path.exists() else None
    if previous is not None and previous != pin:
        changed = next((key for key in pin if previous.get(key) != pin[key]), "settings")
        raise SlmSwapError(f"--resume: {out} was captured with a different {changed}; run again without --resume")
    for path in (out, run_path):
        remove_stale_temps(path)
    done: dict[str, dict[str, Any]] = {}
    if previous is not None and out.exists():
        done = {r["request_id"]: r for r in read_trajectories(out, torn_ok=True) if not r.get("error")}
    else:
        write_json(run_path, pin)
        atomic_write_text(out, "")
    order = {example.id: number for number, example in enumerate(examples)}
    pending = [e for e in examples if e.id not in done]
    budget = max_errors if max_errors is not None else max(1, len(examples) // 10)
    errors, started = 0, time.perf_counter()

    def one(_: int, example: Example) -> dict[str, Any]:
        from smolagents.utils import AgentGenerationError

        begun = time.perf_counter()
        record: dict[str, Any] = {
            "index": order[example.id], "request_id": example.id, "task": example.request, "tools": example.functions,
            "gold": {"name": example.name, "arguments": example.arguments, "possible_answer": example.possible_answer},
            "teacher": model.identity, "max_steps": max_steps, "max_turn_tokens": max_turn_tokens,
            "langfuse_trace_id": trace.trace_id,
        }
        try:
            run = solve(model.make_model(max_turn_tokens), example.request, example.functions, max_steps=max_steps,
                        tools_factory=factory, tools_spec=tools_spec)
        except AgentGenerationError as exc:
            record.update(steps=[], messages=[], finished=False, state="request_failed", final_answer=None,
                          tool_calls=[], error=generation_error(exc))
        else:
            record.update(steps=run.steps, messages=run.messages, finished=run.finished, state=run.state,
                          final_answer=run.final_answer, tool_calls=run.tool_calls, error=None)
        record["latency_s"] = round(time.perf_counter() - begun, 4)
        # The model's text may hold lone surrogates (`recordable`): written and traced as U+FFFD.
        return recordable(record)

    bar = progress_meter(progress, f"{'capture' if on_record is None else 'agent eval'} {model.identity}",
                         len(examples), len(done))
    with open(out, "a", encoding="utf-8") as log:
        results = in_threads(pending, one, concurrency, "capture")
        try:
            for record in results:
                if on_record is not None:  # scored as the model sent it (the agent eval)
                    record = on_record(record)
                record = recordable(record, model.scrub)  # written and traced without secrets
                with naming_path(out):  # a full disk: one line naming the file
                    log.write(json.dumps(record, ensure_ascii=False) + "\n")
                    log.flush()
                _trace_trajectory(trace, record)
                bar.update(1)
                done[record["request_id"]] = record  # a failed request stays in the file; resume asks it again
                if record["error"]:
                    errors += 1
                    if errors > budget:
                        raise SlmSwapError(
                            f"{errors} model requests failed (budget {budget}, --max-errors); last: {record['error']}. "
                            f"Finished trajectories are kept in {out}: fix the cause and rerun with --resume")
        finally:
            bar.close()
            results.close()
    records = sorted(done.values(), key=lambda r: r["index"])
    atomic_write_text(out, jsonl_text(records))
    summary = {
        "out": str(out), "teacher": model.identity, "n": len(records),
        "captured_this_run": len(pending), "finished": sum(1 for r in records if r["finished"]),
        "errors": sum(1 for r in records if r["error"]), "wall_s": round(time.perf_counter() - started, 3),
    }
    trace.update(output=summary)
    return summary


def _trace_trajectory(trace: Run, record: dict[str, Any]) -> None:
    """One child observation per trajectory, its steps as generations under it."""
    steps = [{
        "name": f"step-{step['step']}",
        "input": None,
        "output": step["model_output"],
        "metadata": {"code": step["code"], "observation": step["observation"], "error": step["error"]},
        "generation": {"model": record["teacher"], "latency_s": step["latency_s"] or 0,
                       "prompt_tokens": (step["usage"] or {}).get("input_tokens"),
                       "completion_tokens": (step["usage"] or {}).get("output_tokens")},
    } for step in record["steps"]]
    trace.child(
        f"trajectory-{record['request_id']}", input=record["task"],
        output={"final_answer": record["final_answer"], "tool_calls": record["tool_calls"]},
        metadata={"request_id": record["request_id"], "finished": record["finished"], "state": record["state"],
                  "steps": len(record["steps"]), "error": record["error"], "latency_s": record["latency_s"]},
        children=steps,
    )
