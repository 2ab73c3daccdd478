"""The flow `slm-swap-distill`: Phase II end to end, from the hosted model's work to a tuned agent.

    slm-swap distill --limit 64                                            # in-process, from the shell
    prefect deployment run 'slm-swap-distill/weekly' --watch               # a deployment on a server

Graph: `capture` (the teacher as the CodeAct agent) -> `filter` -> `build` -> `eval-hosted-agent` and
`eval-slm-agent` (the same agent, prompt, tools and step limit, on build's test tasks) ->
`compare-agent-baseline` -> where `needs_training` says so: the `slm-swap-finetune` subflow with
`track=agent` (observation-masked training; on the GPU pool as its deployment when the server has
it), `eval-slm-ft-agent`, `compare-agent-finetuned` -> `report` (report.md/.json/.png in the eval
folder, markdown and table artifacts). Every Langfuse trace id (capture, filter, build, evals,
compares, training) becomes a `langfuse:<id>` tag on the flow run. The steps are the library's
(`slm_swap.app.distill`, `slm_swap.app.pipeline`); the eval, compare, fine-tune and report tasks are the
pipeline's own.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.finetune import run_finetune
from flows.runtime import add_trace_tags, gpu_tagged, refusal, run_in_process
from slm_swap.app.distill import check_distill_config, data_preface, pipeline_config
from slm_swap.app.flow_configs import DistillConfig
from slm_swap.app.finetune_step import adapter_dir
from slm_swap.app.pipeline import needs_training
from slm_swap.app.report import TrackReport
from slm_swap.infra.config import load_settings
from tasks import build_dataset, build_report, capture_trajectories, compare, eval_hosted, eval_slm, filter_trajectories


@flow(name="slm-swap-distill", log_prints=True)
def slm_swap_distill(config: DistillConfig = DistillConfig()) -> dict[str, Any]:
    """Capture, filter and build the teacher's trajectories; evaluate teacher and student as agents;
    fine-tune the student on the accepted trajectories where it trails; re-evaluate; report.

    Args:
        config: the run's settings (source and limit, step limit, tools, split sizes, folders, delta,
            finetune auto|always|never, teacher timeouts, ...): see `slm_swap.app.distill.DistillConfig`.
    """
    logger = get_run_logger()
    run_id = flow_run.id
    if (refused := refusal(lambda: check_distill_config(load_settings(), config))) is not None:
        return refused  # the run's state: Failed, its message the one line
    logger.info("config: %s", config.model_dump_json())
    logger.info("settings: %s", json.dumps(load_settings().public_view(), default=str))

    captured = capture_trajectories(config, flow_run_id=run_id)
    filtered = filter_trajectories(config, flow_run_id=run_id)
    built = build_dataset(config, flow_run_id=run_id)
    add_trace_tags(run_id, [captured["langfuse_trace_id"], filtered["langfuse_trace_id"], built["langfuse_trace_id"]])

    pipeline = pipeline_config(config)
    hosted_run = eval_hosted.submit(pipeline, "agent", flow_run_id=run_id)
    with gpu_tagged():
        slm_run = eval_slm.submit(pipeline, "agent", flow_run_id=run_id)
    hosted, slm = hosted_run.result(), slm_run.result()
    decision = compare(pipeline, hosted, slm, flow_run_id=run_id)
    add_trace_tags(run_id, [hosted.langfuse_trace_id, slm.langfuse_trace_id, decision.langfuse_trace_id])

    report = TrackReport("agent", hosted.metrics, slm.metrics, decision)
    if needs_training(decision, config.finetune):
        manifest = run_finetune(pipeline, "agent")
        with gpu_tagged():
            tuned = eval_slm(pipeline, "agent", adapter=adapter_dir(pipeline, "agent"), flow_run_id=run_id)
        final = compare(pipeline, hosted, tuned, flow_run_id=run_id, stage="finetuned")
        add_trace_tags(run_id, [manifest.get("langfuse_trace_id"), tuned.langfuse_trace_id, final.langfuse_trace_id])
        report = TrackReport("agent", hosted.metrics, slm.metrics, decision, True, manifest, tuned.metrics, final)
    else:
        logger.info("agent: no fine-tune (FINE_TUNE=%d, finetune=%s)", decision.fine_tune, config.finetune)
    data = {"capture": captured, "filter": filtered, "build": {k: built[k] for k in ("sizes", "source", "filter", "langfuse_trace_id")}}
    return build_report(pipeline, [report], flow_run_id=run_id, preface=data_preface(captured, filtered, built),
                        extra={"data": data})


def run_distill(config: DistillConfig) -> tuple[str | None, dict[str, Any]]:
    """Check the config (`SlmSwapError`: one line, before Prefect starts), then run the flow in this
    process; (flow-run id, summary). Raises what the flow raised (`SlmSwapError` as it is, anything
    else as `FlowFailed`)."""
    check_distill_config(load_settings(), config)
    return run_in_process(slm_swap_distill, config)
