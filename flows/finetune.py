"""The fine-tune subflow `slm-swap-finetune`: `accelerate launch ... -m slm_swap.train` through
prefect-shell, its output in the run's logs, the training's Langfuse trace id as a tag.

Deployed as `slm-swap-finetune/gpu` on the `gpu` work pool (see prefect.yaml, docs/prefect.md):

    prefect deployment run 'slm-swap-finetune/gpu' --param track=toolcall --watch

The parent pipeline runs it as that deployment when it exists (the subflow shows under the parent),
else in-process. Paths are as seen by the machine that trains (the GPU box shares them with the
pipeline: same box or a shared volume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.runtime import add_trace_tags, gpu_tagged
from slm_swap.config import DEFAULT_DATA_DIR, DEFAULT_FT_DIR
from slm_swap.pipeline import PipelineConfig, Track, training_plan
from tasks.train import train_adapter


@flow(name="slm-swap-finetune", flow_run_name="finetune-{track}", log_prints=True)
def slm_swap_finetune(
    track: Track,
    data_dir: Path = DEFAULT_DATA_DIR,
    ft_dir: Path = DEFAULT_FT_DIR,
    accelerate_config: Path | None = None,
    max_steps: int = -1,
    reuse_max_age_hours: float = 12.0,
) -> dict[str, Any]:
    """Train `<ft_dir>/adapter_<track>` on `<data_dir>/<track>/{train,val}.jsonl`; returns the adapter manifest.

    Args:
        track: structured or toolcall.
        data_dir: dataset folder (default: slm_swap/02_dataset).
        ft_dir: adapters folder (default: slm_swap/04_ft).
        accelerate_config: default: accelerate_config/phi4_4gpu.yaml with CUDA, else cpu.yaml.
        max_steps: cap optimizer steps (-1: the seed's one epoch).
        reuse_max_age_hours: reuse an adapter trained from the same data and base model at most this long ago (0: never).
    """
    config = PipelineConfig(tracks=[track], data_dir=data_dir, ft_dir=ft_dir, accelerate_config=accelerate_config,
                            max_steps=max_steps, reuse_max_age_hours=reuse_max_age_hours)
    plan = training_plan(config, track)
    run_id = flow_run.id
    get_run_logger().info("training plan: %s", plan)
    with gpu_tagged():
        manifest = train_adapter(plan, flow_run_id=run_id)
    add_trace_tags(run_id, [manifest.get("langfuse_trace_id")])
    return manifest
