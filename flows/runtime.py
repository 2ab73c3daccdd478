"""Prefect-side glue the flows share: flow-run tags, the `slm-gpu` task tag, and whether the
fine-tune deployment can be used. Every call is one Prefect API request or two."""

from __future__ import annotations

import contextlib
from typing import Iterable
from uuid import UUID

from prefect import get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from slm_swap.pipeline import SLM_GPU_TAG, merge_tags, trace_tags


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
