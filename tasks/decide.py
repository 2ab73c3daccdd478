"""`compare`: the decision rule on two metrics files (`slm_swap.app.runs.traced_compare`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.pipeline import EvalOutcome, compare_step
from slm_swap.core.compare import Decision, format_decision
from slm_swap.infra.config import load_settings


def _compare_name(parameters: dict[str, Any]) -> str:
    return f"compare-{parameters['hosted'].track}-{parameters.get('stage', 'baseline')}"


@task(name="compare", task_run_name=_compare_name, cache_policy=NO_CACHE, log_prints=True)
def compare(config: PipelineConfig, hosted: EvalOutcome, slm: EvalOutcome, flow_run_id: str | None = None,
            stage: str = "baseline") -> Decision:
    """Hosted vs SLM on one track: the `FINE_TUNE=` decision (recorded in Langfuse)."""
    decision = compare_step(load_settings(), config, hosted, slm, flow_run_id=flow_run_id)
    print(f"{stage}\n{format_decision(decision)}")
    return decision
