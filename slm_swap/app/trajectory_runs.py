"""Capture, filter and build as traced commands (`runs.TracedCommand`): what `slm-swap
capture|filter|build` and the Prefect tasks call.

Each refuses outputs that would overwrite its inputs (`path_checks`) before anything is written, and
is one Langfuse trace: capture's has a child per trajectory with its steps as generations;
filter's carries the acceptance rate as a score; build's the split sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_swap.app.path_checks import check_build_paths, check_capture_paths, check_filter_paths
from slm_swap.app.runs import TracedCommand
from slm_swap.data.examples import Example
from slm_swap.infra.config import Settings
from slm_swap.infra.progress import Progress
from slm_swap.llm.agent_models import AGENT_MAX_NEW_TOKENS, AgentModel
from slm_swap.trajectories.build import build
from slm_swap.trajectories.capture import capture
from slm_swap.trajectories.codeact import DEFAULT_TOOLS
from slm_swap.trajectories.filter import filter_trajectories


def traced_capture(settings: Settings, examples: list[Example], source: dict[str, Any], *, out: Path, teacher: AgentModel,
                   max_steps: int, max_turn_tokens: int = AGENT_MAX_NEW_TOKENS, tools_spec: str = DEFAULT_TOOLS,
                   concurrency: int = 8, resume: bool = False,
                   max_errors: int | None = None, progress: Progress = "bar", flow_run_id: str | None = None) -> dict[str, Any]:
    check_capture_paths(out, source.get("path"))
    command = TracedCommand(settings, "capture", flow_run_id=flow_run_id)
    trace_input = {"source": source, "rows": len(examples), "teacher": teacher.identity, "max_steps": max_steps,
                   "max_turn_tokens": max_turn_tokens, "tools": tools_spec, "out": str(out)}
    try:
        with command.run("capture", input=trace_input, resume=resume) as run:
            summary = capture(examples, source, out=out, model=teacher, max_steps=max_steps,
                              max_turn_tokens=max_turn_tokens, tools_spec=tools_spec, concurrency=concurrency,
                              resume=resume, max_errors=max_errors, progress=progress, trace=run)
    finally:
        teacher.close()
    return {**summary, "langfuse_trace_id": run.trace_id}


def traced_filter(settings: Settings, trajectories: Path, out_dir: Path, *, max_steps: int | None = None,
                  flow_run_id: str | None = None) -> dict[str, Any]:
    check_filter_paths(trajectories, out_dir)
    command = TracedCommand(settings, "filter", flow_run_id=flow_run_id)
    trace_input = {"trajectories": str(trajectories), "out_dir": str(out_dir), "max_steps": max_steps}
    with command.run("filter", input=trace_input) as run:
        summary = filter_trajectories(trajectories, out_dir, max_steps=max_steps)
        run.score("acceptance_rate", summary["acceptance_rate"])
        run.update(output=summary)
    return {**summary, "langfuse_trace_id": run.trace_id}


def traced_build(settings: Settings, accepted: Path, out_dir: Path, *, val: int, test: int, seed: int = 0,
                 flow_run_id: str | None = None) -> dict[str, Any]:
    check_build_paths(accepted, out_dir)
    command = TracedCommand(settings, "build", flow_run_id=flow_run_id)
    trace_input = {"accepted": str(accepted), "out_dir": str(out_dir), "val": val, "test": test, "seed": seed}
    with command.run("build", input=trace_input) as run:
        manifest = build(accepted, out_dir, val=val, test=test, seed=seed)
        run.update(output={"sizes": manifest["sizes"], "source": manifest["source"], "filter": manifest["filter"]})
    return {**manifest, "langfuse_trace_id": run.trace_id}
