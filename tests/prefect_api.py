"""One local Prefect API server for a test module's real flow runs, and the graph of a flow run as
the API reports it. Import `prefect_api` (a module-scoped fixture) and `run_graph` from here."""

from __future__ import annotations

import time
from uuid import UUID

import pytest


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One local Prefect API server (SQLite in a temp dir) for this module's flow runs."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings(updates={PREFECT_HOME: str(tmp_path_factory.mktemp("prefect-home"))}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def run_graph(flow_run_id: str, expect_tasks: int, timeout_s: float = 30.0) -> dict:
    """The flow run, its task runs (once `expect_tasks` are final: task states arrive as events),
    its child flow runs and its artifacts, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    run_id = UUID(flow_run_id)
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            if (len(tasks) >= expect_tasks and all(t.state and t.state.is_final() for t in tasks)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {
            "run": client.read_flow_run(run_id),
            "tasks": {t.name: t for t in tasks},
            "children": client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))),
            "artifacts": {a.key: a for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))},
            "flow_name": client.read_flow(client.read_flow_run(run_id).flow_id).name,
        }
