"""The fine-tune subflow `slm-swap-finetune`: `accelerate launch ... -m slm_swap.train` as `slm-swap train`
runs it (one line when it fails), its output in the run's logs, the training's Langfuse trace id as a tag.

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
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.runtime import add_trace_tags, deployment_available, gpu_tagged
from slm_swap.app.finetune_step import adapter_dir, read_adapter_manifest, training_plan
from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.requests import Track
from slm_swap.infra.config import DEFAULT_DATA_DIR, DEFAULT_FT_DIR
from slm_swap.train.options import ONE_EPOCH, StepCap
from tasks.train import train_adapter


@flow(name="slm-swap-finetune", flow_run_name="finetune-{track}", log_prints=True)
def slm_swap_finetune(
    track: Track,
    data_dir: Path = DEFAULT_DATA_DIR,
    ft_dir: Path = DEFAULT_FT_DIR,
    accelerate_config: Path | None = None,
    max_steps: StepCap = ONE_EPOCH,
    reuse_max_age_hours: float = 12.0,
) -> dict[str, Any]:
    """Train `<ft_dir>/adapter_<track>` on `<data_dir>/<track>/{train,val}.jsonl`; returns the adapter manifest.

    Args:
        track: structured, toolcall or agent (the agent rows of `slm-swap build`).
        data_dir: dataset folder (default: slm_swap/02_dataset).
        ft_dir: adapters folder (default: slm_swap/04_ft).
        accelerate_config: default: accelerate_config/phi4_4gpu.yaml with CUDA, else cpu.yaml.
        max_steps: cap optimizer steps, >= 1 (-1, the default: the seed's one epoch).
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


def run_finetune(config: PipelineConfig, track: str) -> dict[str, Any]:
    """The fine-tune subflow: as a deployment on the GPU pool if one is there, else in-process."""
    parameters = {
        "track": track,
        "data_dir": str(config.data_dir),
        "ft_dir": str(config.ft_dir),
        "accelerate_config": str(config.accelerate_config) if config.accelerate_config else None,
        "max_steps": config.max_steps,
        "reuse_max_age_hours": config.reuse_max_age_hours,
    }
    logger = get_run_logger()
    if deployment_available(config.finetune_deployment):
        logger.info("fine-tune %s: deployment %s", track, config.finetune_deployment)
        child = run_deployment(config.finetune_deployment, parameters=parameters, as_subflow=True,
                               flow_run_name=f"finetune-{track}", poll_interval=5)
        if child.state is None or not child.state.is_completed():
            raise RuntimeError(f"fine-tune run {child.id} ({config.finetune_deployment}) ended "
                               f"{child.state.name if child.state else 'without a state'}")
        return read_adapter_manifest(adapter_dir(config, track))  # the GPU box shares the ft folder
    logger.info("fine-tune %s: in-process subflow", track)
    return slm_swap_finetune(**parameters)
