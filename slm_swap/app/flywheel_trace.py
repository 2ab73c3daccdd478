"""One flywheel round as one Langfuse trace, the way `runs.TracedCommand` traces every command.

    with traced_round(settings, request, flow_run_id) as trace:   # trace.trace_id: None when tracing is off
        state = ...                                                # the round's steps
        trace.update(output=round_trace_output(state))

    state = run_traced_round(settings, request)                    # `slm-swap flywheel`: all of it, one trace

The trace holds what the round came to (status, reason, row counts per source, the gate's decision,
the promoted version, the calibrated threshold) and never a prompt or an answer: the rows may carry
user text. The evals and the training inside the round keep their own traces (a traced command starts
from an empty context); `round_trace_ids` lists them for the flow run's tags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from slm_swap.app.flywheel import Round, check_round, run_round
from slm_swap.app.requests import FlywheelRequest
from slm_swap.app.runs import TracedCommand
from slm_swap.infra.config import Settings
from slm_swap.infra.fileio import read_json
from slm_swap.infra.tracing import Run, check_tracing_settings


def check_traced_round(settings: Settings, request: FlywheelRequest) -> None:
    """`check_round`, plus the Langfuse settings the round's trace needs (one line, nothing sent)."""
    check_tracing_settings(settings)
    check_round(settings, request)


def round_trace_input(request: FlywheelRequest) -> dict[str, Any]:
    """The round's settings as the trace's input: files and numbers, no row text."""
    return {"track": request.track, "records": str(request.records), "registry": str(request.registry),
            "delta": request.delta, "max_steps": request.max_steps, "heldout_per_round": request.heldout_per_round,
            "min_new_rows": request.min_new_rows}


def round_trace_output(state: Round) -> dict[str, Any]:
    """What the round came to: counts and the decision, no prompt or answer text."""
    calibration = state.calibration or {}
    return {"round": state.number, "status": state.status, "reason": state.reason, "counts": state.counts,
            "decision": state.decision.as_dict() if state.decision else None,
            "promoted_version": state.promoted.version if state.promoted else None,
            "threshold": calibration.get("threshold")}


def round_trace_ids(state: Round) -> list[str | None]:
    """The trace ids of the round's evals (from their metrics files), for the flow run's tags."""
    return [read_json(path, "metrics file").get("langfuse_trace_id") for path in state.metrics.values()]


@contextlib.contextmanager
def traced_round(settings: Settings, request: FlywheelRequest, flow_run_id: str | None = None) -> Iterator[Run]:
    """The round's trace, open around its steps; an exception inside marks it as an error."""
    command = TracedCommand(settings, "flywheel", flow_run_id=flow_run_id)
    with command.run(f"flywheel {request.track}", input=round_trace_input(request), track=request.track) as run:
        yield run


def run_traced_round(settings: Settings, request: FlywheelRequest) -> Round:
    """One whole round (`flywheel.run_round`) inside its trace: what `slm-swap flywheel` runs."""
    check_traced_round(settings, request)
    with traced_round(settings, request) as trace:
        state = run_round(settings, request)
        trace.update(output=round_trace_output(state))
    return state


__all__ = ["check_traced_round", "round_trace_ids", "round_trace_input", "round_trace_output", "run_traced_round",
           "traced_round"]
