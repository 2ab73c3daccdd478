"""`train-adapter`: `accelerate launch ... -m slm_swap.train` through prefect-shell's `ShellOperation`,
its output streamed into the flow run's logs. The fine-tune flow tags it `slm-gpu` like the SLM evals
(against a server): training and evaluation never hold the GPU at the same time."""

from __future__ import annotations

import shlex
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect_shell import ShellOperation

from slm_swap.app.finetune_step import TrainingPlan, read_adapter_manifest, reusable_adapter, training_command, training_env
from slm_swap.infra.config import load_settings


@task(name="train-adapter", task_run_name="train-adapter-{plan.track}", cache_policy=NO_CACHE, log_prints=True)
def train_adapter(plan: TrainingPlan, flow_run_id: str | None = None) -> dict[str, Any]:
    """Train (or reuse a fresh identical adapter); returns the adapter manifest (with `langfuse_trace_id`)."""
    reused = reusable_adapter(load_settings(), plan)
    if reused is not None:
        print(f"reusing {plan.out} (trained {reused.get('finished_at')} from the same data and base model)")
        return reused
    command = shlex.join(training_command(plan))
    print(f"$ {command}")
    ShellOperation(commands=[command], env=training_env(flow_run_id), stream_output=True).run()
    return read_adapter_manifest(plan.out)
