"""The parent flow `slm-swap-pipeline`: evals per track x model, compare, (fine-tune, re-eval, compare), report.

    slm-swap pipeline --finetune auto                                     # in-process, from the shell
    prefect deployment run 'slm-swap-pipeline/nightly' --watch            # a deployment on a server

    from flows.pipeline import slm_swap_pipeline
    from slm_swap.pipeline import PipelineConfig
    slm_swap_pipeline(PipelineConfig(tracks=["toolcall"], limit=4))

Graph: `eval-hosted-<track>` tasks run side by side (hosted requests); `eval-slm-<track>` tasks run one
after another (one SLM on the GPU; against a server they also carry the `slm-gpu` tag); `compare-<track>-baseline` per
track. Then, per track where `needs_training(decision, config.finetune)`: the `slm-swap-finetune`
subflow (as the deployment `config.finetune_deployment` on the GPU pool when a server has it, else
in-process), `eval-slm-ft-<track>`, `compare-<track>-finetuned`. Last, `report`: report.md/.json/.png
in the eval folder and markdown/table artifacts. Every Langfuse trace id becomes a `langfuse:<id>`
tag on the flow run (the training's on the subflow run too).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.finetune import slm_swap_finetune
from flows.runtime import add_trace_tags, deployment_available, gpu_tagged
from slm_swap.config import load_settings
from slm_swap.errors import SlmSwapError
from slm_swap.pipeline import PipelineConfig, adapter_dir, needs_training, read_adapter_manifest
from slm_swap.report import TrackReport
from tasks import build_report, compare, eval_hosted, eval_slm, prepare_data


def _finetune(config: PipelineConfig, track: str) -> dict[str, Any]:
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


@flow(name="slm-swap-pipeline", log_prints=True)
def slm_swap_pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:
    """Evaluate hosted and SLM per track, compare, fine-tune where needed, re-evaluate, report.

    Args:
        config: the run's settings (tracks, split, delta, finetune auto|always|never, data source and
            folders, accelerate config, limit, ...): see `slm_swap.pipeline.PipelineConfig`.
    """
    logger = get_run_logger()
    run_id = flow_run.id
    logger.info("config: %s", config.model_dump_json())
    logger.info("settings: %s", json.dumps(load_settings().public_view(), default=str))
    if config.data.source != "prepared":
        prepare_data(config)

    # Baselines: hosted evals side by side, SLM evals one at a time (one model on the GPU).
    hosted = {track: eval_hosted.submit(config, track, flow_run_id=run_id) for track in config.tracks}
    slm, previous = {}, None
    for track in config.tracks:
        with gpu_tagged():
            slm[track] = eval_slm.submit(config, track, flow_run_id=run_id, wait_for=[previous] if previous else None)
        previous = slm[track]
    decisions = {track: compare.submit(config, hosted[track], slm[track], flow_run_id=run_id) for track in config.tracks}
    baselines = {track: (hosted[track].result(), slm[track].result(), decisions[track].result()) for track in config.tracks}
    for track, (h, s, d) in baselines.items():
        add_trace_tags(run_id, [h.langfuse_trace_id, s.langfuse_trace_id, d.langfuse_trace_id])

    # The branch: fine-tune, re-evaluate and compare again where the rule says so (one track at a time).
    reports = []
    for track, (h, s, decision) in baselines.items():
        if not needs_training(decision, config.finetune):
            logger.info("%s: no fine-tune (FINE_TUNE=%d, finetune=%s)", track, decision.fine_tune, config.finetune)
            reports.append(TrackReport(track, h.metrics, s.metrics, decision))
            continue
        manifest = _finetune(config, track)
        with gpu_tagged():
            ft = eval_slm(config, track, adapter=adapter_dir(config, track), flow_run_id=run_id)
        final = compare(config, h, ft, flow_run_id=run_id, stage="finetuned")
        add_trace_tags(run_id, [manifest.get("langfuse_trace_id"), ft.langfuse_trace_id, final.langfuse_trace_id])
        reports.append(TrackReport(track, h.metrics, s.metrics, decision, True, manifest, ft.metrics, final))

    return build_report(config, reports, flow_run_id=run_id)


def run_pipeline(config: PipelineConfig) -> tuple[str | None, dict[str, Any]]:
    """Run the flow in this process; (flow-run id, summary). Raises what the flow raised.

    Without a configured server (PREFECT_API_URL unset: Prefect's temporary local API) flow-run
    heartbeats are off: they let a server spot crashed deployment runs, and a temporary API dies
    with this process anyway, while the heartbeat thread holds up every flow run's exit by up to a
    second (it sleeps in whole seconds and is joined at the end; PrefectHQ/prefect#19641).
    """
    quiet = nullcontext() if PREFECT_API_URL.value() else temporary_settings(updates={"flows.heartbeat_frequency": None})
    with quiet:
        state = slm_swap_pipeline(config, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    try:
        return run_id, state.result()
    except SlmSwapError:
        raise
    except Exception as exc:
        raise PipelineFailed(run_id, exc) from exc


class PipelineFailed(Exception):
    def __init__(self, flow_run_id: str | None, error: BaseException):
        super().__init__(f"flow run {flow_run_id} failed: {type(error).__name__}: {error}")
        self.flow_run_id = flow_run_id
