"""Prefect-side glue the flows share: flow-run tags, the `slm-gpu` task tag, whether the
fine-tune deployment can be used (each one Prefect API request or two), a refused config as the
flow run's failure, and running a flow in this process from the command line."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable
from uuid import UUID

from prefect import get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.states import Failed, State

from slm_swap.app.pipeline import SLM_GPU_TAG, merge_tags, trace_tags
from slm_swap.infra.errors import SlmSwapError


class FlowFailed(Exception):
    def __init__(self, flow_run_id: str | None, error: BaseException):
        super().__init__(f"flow run {flow_run_id} failed: {type(error).__name__}: {error}")
        self.flow_run_id = flow_run_id


def refusal(check: Callable[[], None]) -> State | None:
    """None when `check()` passes; when it raises `SlmSwapError`, a Failed state whose message is that
    one line (what `prefect deployment run` and the UI show; no traceback in the run's logs) and whose
    result raises the error again (so `run_in_process` re-raises it as it is)."""
    try:
        check()
    except SlmSwapError as exc:
        get_run_logger().error("refused: %s", exc)
        return Failed(message=str(exc), data=exc)
    return None


# What a temporary server started here is given, unless the user's environment or Prefect profile
# says otherwise: no usage telemetry sent off this machine (docs/prefect.md, "Analytics").
TEMPORARY_SERVER_SETTINGS = {"server.analytics_enabled": False}


def _temporary_server_settings() -> dict[str, Any]:
    chosen = get_current_settings().to_environment_variables(exclude_unset=True)
    return {name: value for name, value in TEMPORARY_SERVER_SETTINGS.items()
            if "PREFECT_" + name.upper().replace(".", "_") not in chosen}


def run_in_process(flow_function: Callable[..., Any], config: Any) -> tuple[str | None, Any]:
    """Run a flow in this process; (flow-run id, its result). Raises `SlmSwapError` (bad input) as
    it is and anything else as `FlowFailed`.

    Without a configured server (PREFECT_API_URL unset) Prefect starts a temporary local API server
    for the run: it gets analytics off (`TEMPORARY_SERVER_SETTINGS`) unless the user set
    PREFECT_SERVER_ANALYTICS_ENABLED, and flow-run heartbeats are off: they let a server spot crashed
    deployment runs, and a temporary API dies with this process anyway, while the heartbeat thread
    holds up every flow run's exit by up to a second (it sleeps in whole seconds and is joined at the
    end; PrefectHQ/prefect#19641).
    """
    quiet = contextlib.nullcontext() if PREFECT_API_URL.value() else temporary_settings(
        updates={"flows.heartbeat_frequency": None, **_temporary_server_settings()})
    with quiet:
        state = flow_function(config, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    try:
        return run_id, state.result()
    except SlmSwapError:
        raise
    except Exception as exc:
        raise FlowFailed(run_id, exc) from exc


def add_trace_tags(flow_run_id: str | None, trace_ids: Iterable[str | None]) -> list[str]:
    """Add `langfuse:<id>` for each trace id to a flow run's tags (read, merge, write back).
    Returns the tags added; none when tracing is off (every id is None)."""
    tags = trace_tags(trace_ids)
    if not tags or not flow_run_id:
        return []
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run_id)))
        merged = merge_tags(run.tags or [], tags)
        if merged != list(run.tags or []):
            client.update_flow_run(run.id, tags=merged)
    get_run_logger().info("flow run tags: %s", ", ".join(tags))
    return tags


def deployment_available(name: str | None) -> bool:
    """True when a Prefect API server is configured (PREFECT_API_URL) and it has deployment `name`."""
    if not name or not PREFECT_API_URL.value():
        return False
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def gpu_tagged() -> contextlib.AbstractContextManager:
    """Tag task runs started inside with `slm-gpu` when a Prefect API server is configured.

    The server's tag concurrency limit on `slm-gpu` (1, created by deployments/setup_work_pools.sh)
    lets one task at a time load the SLM or train, across all flow runs and workers. Without a
    server (the ephemeral API of a local `slm-swap pipeline`) there is no other flow run to share
    the GPU with, the pipeline's own ordering keeps one model at a time, and the tag is left off:
    each tagged task would ask the temporary SQLite-backed API for a slot, and SQLite's "database is
    locked" answers (503, retried after ~2 s; PrefectHQ/prefect#18934) stall task starts.
    """
    return tags(SLM_GPU_TAG) if PREFECT_API_URL.value() else contextlib.nullcontext()
