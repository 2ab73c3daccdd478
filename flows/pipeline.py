"""The parent flow `slm-swap-pipeline`: evals per track x model, compare, (fine-tune, re-eval, compare), report.

    slm-swap pipeline --finetune auto                                     # in-process, from the shell
    prefect deployment run 'slm-swap-pipeline/nightly' --watch            # a deployment on a server

    from flows.pipeline import slm_swap_pipeline
    from slm_swap.app.flow_configs import PipelineConfig
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
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.finetune import run_finetune
from flows.runtime import add_trace_tags, gpu_tagged, refusal, run_in_process
from slm_swap.app.finetune_step import adapter_dir
from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.pipeline import check_pipeline_config, needs_training
from slm_swap.app.report import TrackReport
from slm_swap.infra.config import load_settings
from tasks import build_report, compare, eval_hosted, eval_slm, prepare_data


@flow(name="slm-swap-pipeline", log_prints=True)
def slm_swap_pipeline(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:
    """Evaluate hosted and SLM per track, compare, fine-tune where needed, re-evaluate, report.

    Args:
        config: the run's settings (tracks, split, delta, finetune auto|always|never, data source and
            folders, accelerate config, limit, ...): see `slm_swap.app.pipeline.PipelineConfig`.
    """
    logger = get_run_logger()
    run_id = flow_run.id
    if (refused := refusal(lambda: check_pipeline_config(load_settings(), config))) is not None:
        return refused  # the run's state: Failed, its message the one line
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
        manifest = run_finetune(config, track)
        with gpu_tagged():
            ft = eval_slm(config, track, adapter=adapter_dir(config, track), flow_run_id=run_id)
        final = compare(config, h, ft, flow_run_id=run_id, stage="finetuned")
        add_trace_tags(run_id, [manifest.get("langfuse_trace_id"), ft.langfuse_trace_id, final.langfuse_trace_id])
        reports.append(TrackReport(track, h.metrics, s.metrics, decision, True, manifest, ft.metrics, final))

    return build_report(config, reports, flow_run_id=run_id)


def run_pipeline(config: PipelineConfig) -> tuple[str | None, dict[str, Any]]:
    """Check the config (`SlmSwapError`: one line, before Prefect starts), then run the flow in this
    process; (flow-run id, summary). Raises what the flow raised (`SlmSwapError` as it is, anything
    else as `FlowFailed`)."""
    check_pipeline_config(load_settings(), config)
    return run_in_process(slm_swap_pipeline, config)
