"""`capture`, `filter-trajectories` and `build-dataset`: the distill flow's data steps, one library call
each (`slm_swap.app.distill`), each one Langfuse trace."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slm_swap.app.distill import build_step, capture_step, filter_step
from slm_swap.app.flow_configs import DistillConfig
from slm_swap.infra.config import load_settings


@task(name="capture", task_run_name="capture", cache_policy=NO_CACHE, log_prints=True)
def capture_trajectories(config: DistillConfig, flow_run_id: str | None = None) -> dict[str, Any]:
    """The teacher as a CodeAct agent over the source's tasks; one trajectory each (resumed when identical)."""
    summary = capture_step(load_settings(), config, flow_run_id=flow_run_id)
    print(f"{summary['out']}: {summary['n']} trajectories ({summary['captured_this_run']} this run), "
          f"{summary['finished']} finished, {summary['errors']} failed requests")
    return summary


@task(name="filter-trajectories", task_run_name="filter", cache_policy=NO_CACHE, log_prints=True)
def filter_trajectories(config: DistillConfig, flow_run_id: str | None = None) -> dict[str, Any]:
    """Automatic correctness checks: accepted and rejected trajectories, counts by reason."""
    summary = filter_step(load_settings(), config, flow_run_id=flow_run_id)
    print(f"accepted {summary['accepted']} of {summary['n']}; rejected: {summary['reasons'] or 'none'}")
    return summary


@task(name="build-dataset", task_run_name="build", cache_policy=NO_CACHE, log_prints=True)
def build_dataset(config: DistillConfig, flow_run_id: str | None = None) -> dict[str, Any]:
    """Accepted trajectories -> train/val/test: v0 rows of both tracks and observation-masked agent rows."""
    manifest = build_step(load_settings(), config, flow_run_id=flow_run_id)
    print(f"{config.data_dir}: sizes {manifest['sizes']}")
    return manifest
