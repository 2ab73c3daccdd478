"""`train-adapter`: `accelerate launch ... -m slm_swap.train`, as `slm-swap train` runs it
(`slm_swap.app.finetune_step.launch_training`), its output streamed into the flow run's logs and a
failure one line: the training process's own error, without the launcher's traceback. The fine-tune
flow tags it `slm-gpu` like the SLM evals (against a server): training and evaluation never hold the
GPU at the same time."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from slm_swap.app.finetune_step import (TrainingPlan, check_training_plan, launch_training, read_adapter_manifest,
                                        reusable_adapter)
from slm_swap.infra.config import load_settings


class _LogLines:
    """The training's output as log records, one per line. A progress bar's redraws (segments ending
    in "\r") would each be a record: only its last state before a newline is kept."""

    def __init__(self) -> None:
        self.redraw = ""

    def __call__(self, text: str) -> None:
        if text.endswith("\r"):
            self.redraw = text
            return
        line, self.redraw = (self.redraw if text == "\n" else text), ""
        if line.strip():
            print(line.strip("\r\n"))


@task(name="train-adapter", task_run_name="train-adapter-{plan.track}", cache_policy=NO_CACHE, log_prints=True)
def train_adapter(plan: TrainingPlan, flow_run_id: str | None = None) -> dict[str, Any]:
    """Train (or reuse a fresh identical adapter); returns the adapter manifest (with `langfuse_trace_id`)."""
    settings = load_settings()
    reused = reusable_adapter(settings, plan)
    if reused is not None:
        print(f"reusing {plan.out} (trained {reused.get('finished_at')} from the same data and base model)")
        return reused
    check_training_plan(settings, plan)
    launch_training(plan, flow_run_id, echo=_LogLines(), merge_stdout=True)
    return read_adapter_manifest(plan.out)
