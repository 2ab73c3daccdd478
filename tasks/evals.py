"""`eval-hosted` and `eval-slm`: one eval each, reused/resumed/run by `slm_swap.app.pipeline.run_eval_step`.

- Hosted evals retry when the failure may pass (the error budget ran out, a crash), not on bad
  input or settings; a retry resumes from the records already written.
- SLM evals run one after another in the pipeline, and a loaded model is dropped before another is
  loaded: one process never holds two models. Against a Prefect server the flow also tags them
  `slm-gpu` (`flows.runtime.gpu_tagged`), whose tag concurrency limit of 1 (created by
  `deployments/setup_work_pools.sh`) lets one task at a time, across all flow runs, use the GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.pipeline import EvalOutcome, retryable, run_eval_step
from slm_swap.infra.config import load_settings


def _retry_if_transient(task, task_run, state) -> bool:
    return retryable(state.result(raise_on_failure=False))


def _said(outcome: EvalOutcome) -> EvalOutcome:
    print(f"{outcome.path}: {outcome.action} (n={outcome.metrics['n']}, errors={outcome.metrics['errors']})")
    return outcome


def _slm_eval_name(parameters: dict[str, Any]) -> str:
    return f"eval-slm{'-ft' if parameters.get('adapter') else ''}-{parameters['track']}"


@task(name="eval-hosted", task_run_name="eval-hosted-{track}", retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=_retry_if_transient, cache_policy=NO_CACHE, log_prints=True)
def eval_hosted(config: PipelineConfig, track: str, flow_run_id: str | None = None) -> EvalOutcome:
    """The hosted model (Azure or any OpenAI-compatible server) on one track."""
    return _said(run_eval_step(load_settings(), config, track=track, kind="azure", flow_run_id=flow_run_id))


@task(name="eval-slm", task_run_name=_slm_eval_name, cache_policy=NO_CACHE, log_prints=True)
def eval_slm(config: PipelineConfig, track: str, adapter: Path | None = None, flow_run_id: str | None = None) -> EvalOutcome:
    """The local SLM (with a LoRA adapter when given) on one track."""
    return _said(run_eval_step(load_settings(), config, track=track, kind="slm", adapter=adapter, flow_run_id=flow_run_id))
