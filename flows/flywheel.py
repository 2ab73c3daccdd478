"""The flow `slm-swap-flywheel`: one flywheel round, the library's steps (`slm_swap.app.flywheel`) as tasks.

    from flows.flywheel import slm_swap_flywheel
    from slm_swap.app.requests import FlywheelRequest
    slm_swap_flywheel(FlywheelRequest(track="toolcall"))

Graph: `flywheel-collect` -> `flywheel-rows` -> the `slm-swap-finetune` subflow (the pipeline's: as the
deployment `slm-swap-finetune/gpu` on the GPU pool when a server has it, else in-process; it trains
`<round>/adapter_<track>` from `<round>/data/<track>/`) -> `flywheel-evaluate` -> `flywheel-decide` ->
(`flywheel-calibrate` -> `flywheel-promote` when the gate says so) -> `flywheel-finish`. The tasks hold
no logic; a kill between any two leaves the registry and the watermark as they were (see the library).
The round is one Langfuse trace (`slm_swap.app.flywheel_trace`: counts and decision as its output); its
id, the training's and the evals' are `langfuse:<id>` tags on the flow run, as the pipeline tags its own.

Deployed as `slm-swap-flywheel/nightly` (prefect.yaml: the `default` pool, 04:00 Europe/Berlin):

    prefect deployment run 'slm-swap-flywheel/nightly' --params '{"request": {"track": "toolcall"}}' --watch
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.finetune import run_finetune
from flows.runtime import add_trace_tags, gpu_tagged, refusal
from slm_swap.app import flywheel
from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.flywheel_report import round_line
from slm_swap.app.flywheel_trace import check_traced_round, round_trace_ids, round_trace_output, traced_round
from slm_swap.app.requests import FlywheelRequest
from slm_swap.infra.config import load_settings

_TASK = {"cache_policy": NO_CACHE, "log_prints": True}


@task(name="flywheel-collect", **_TASK)
def collect(state: flywheel.Round, request: FlywheelRequest) -> None:
    flywheel.collect(state, request)


@task(name="flywheel-rows", **_TASK)
def make_rows(state: flywheel.Round, request: FlywheelRequest) -> bool:
    return flywheel.make_rows(state, request, load_settings())


@task(name="flywheel-evaluate", **_TASK)
def evaluate(state: flywheel.Round, request: FlywheelRequest, flow_run_id: str | None) -> None:
    flywheel.evaluate(state, request, load_settings(), flow_run_id)


@task(name="flywheel-decide", **_TASK)
def decide(state: flywheel.Round, request: FlywheelRequest) -> bool:
    return flywheel.decide(state, request).promote


@task(name="flywheel-calibrate", **_TASK)
def calibrate(state: flywheel.Round, request: FlywheelRequest) -> None:
    flywheel.calibrate_candidate(state, request, load_settings())


@task(name="flywheel-promote", **_TASK)
def promote(state: flywheel.Round, request: FlywheelRequest) -> None:
    flywheel.promote(state, request)


@task(name="flywheel-finish", **_TASK)
def finish(state: flywheel.Round, request: FlywheelRequest) -> str:
    flywheel.finish(state, request)
    line = round_line(state)
    print(line)
    return line


def training_config(state: flywheel.Round, request: FlywheelRequest) -> PipelineConfig:
    """The pipeline's fine-tune subflow parameters that train the round's candidate."""
    return PipelineConfig(tracks=[state.track], data_dir=state.data_dir, ft_dir=state.folder,
                          accelerate_config=request.accelerate_config, max_steps=request.max_steps,
                          reuse_max_age_hours=0)


@flow(name="slm-swap-flywheel", log_prints=True)
def slm_swap_flywheel(request: FlywheelRequest) -> Any:
    """One round: collect the gateway's traffic, make rows, fine-tune, evaluate, gate, promote, report.

    Args:
        request: the round's settings (track, records, registry, folders, step cap, delta, ...): see
            `slm_swap.app.requests.FlywheelRequest`.
    """
    if (refused := refusal(lambda: check_traced_round(load_settings(), request))) is not None:
        return refused
    run_id = flow_run.id
    with traced_round(load_settings(), request, run_id) as trace:
        add_trace_tags(run_id, [trace.trace_id])  # at once: a round that fails later still links to its trace
        state = flywheel.start_round(request)
        collect(state, request)
        if make_rows(state, request):
            manifest = run_finetune(training_config(state, request), state.track)
            with gpu_tagged():
                evaluate(state, request, run_id)
            add_trace_tags(run_id, [manifest.get("langfuse_trace_id"), *round_trace_ids(state)])
            if decide(state, request):
                with gpu_tagged():
                    calibrate(state, request)
                promote(state, request)
        line = finish(state, request)
        trace.update(output=round_trace_output(state))
    return line
