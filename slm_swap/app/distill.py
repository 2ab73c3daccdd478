"""Phase II end to end, as plain functions (no Prefect here): what the flow `slm-swap-distill`
(`flows/distill.py`) and `slm-swap distill` run.

    capture -> filter -> build -> agent eval of teacher and student -> compare
            -> (where the student trails) fine-tune --track agent -> agent re-eval -> compare -> report

- `DistillConfig` (in `flow_configs`): the flow's one parameter, help text on each field.
- `check_distill_config(settings, config)`: everything a run implies that can be known before Prefect
  starts (settings, the tools factory, the source, the folders); the CLI and the flow call it first.
- `capture_step`, `filter_step`, `build_step`: the traced library commands (`trajectories.runs`). A
  capture identical to one already on disk is resumed, which asks only the requests it lacks (none,
  when it finished): a re-run of the flow does not ask the teacher again.
- `pipeline_config`: the `PipelineConfig` the evals, compares and the fine-tune subflow read, the same
  steps `slm-swap-pipeline` runs, on the agent track and `build`'s folder.
- `data_preface`: the report's lines on what was captured, kept and built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_swap.app.flow_configs import DistillConfig, PipelineConfig
from slm_swap.app.trajectory_runs import traced_build, traced_capture, traced_filter
from slm_swap.app.finetune_step import check_local_model, check_training_plan, training_plan
from slm_swap.app.path_checks import check_build_paths, check_capture_paths, check_filter_paths
from slm_swap.app.pipeline import check_hosted_settings
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import check_writable_dir, check_writable_file
from slm_swap.infra.tracing import check_tracing_settings
from slm_swap.llm.agent_models import hosted_agent_model
from slm_swap.trajectories.capture import can_resume, capture_pin, source_examples
from slm_swap.trajectories.codeact import DEFAULT_TOOLS, load_tools_factory
from slm_swap.trajectories.filter import accepted_path


def check_distill_config(settings: Settings, config: DistillConfig) -> None:
    """Refuse, as one `SlmSwapError` line and with nothing written, a run that would fail later:
    tracing and hosted (teacher) settings, the student's checkpoint, `--tools`, the source file, the
    folders and, when it may fine-tune, the training's. `slm-swap distill` calls it before Prefect
    starts; the flow calls it first (a deployment run fails with this line)."""
    check_tracing_settings(settings)
    check_hosted_settings(settings)
    check_local_model(settings)
    load_tools_factory(config.tools)
    if config.dataset_path and not Path(config.dataset_path).is_file():
        raise SlmSwapError(f"--dataset-path {config.dataset_path}: no such file")
    check_writable_file(config.trajectories, "--trajectories-dir", leave_nothing=True)
    # The files each step writes against what it reads, now rather than at that step.
    check_capture_paths(config.trajectories, config.dataset_path)
    check_filter_paths(config.trajectories, Path(config.trajectories_dir))
    check_build_paths(accepted_path(Path(config.trajectories_dir)), config.data_dir)
    check_writable_dir(config.data_dir, "--data-dir", leave_nothing=True)
    check_writable_dir(config.eval_dir, "--out-dir", leave_nothing=True)
    if config.finetune != "never":  # the rows are build's, made later in the run
        check_training_plan(settings, training_plan(pipeline_config(config), "agent"), rows=False, out_flag="--ft-dir")


def pipeline_config(config: DistillConfig) -> PipelineConfig:
    """The shared eval/compare/fine-tune steps' config: the agent track on build's test split."""
    return PipelineConfig(
        tracks=["agent"], split="test", delta=config.delta, finetune=config.finetune, data_dir=config.data_dir,
        eval_dir=config.eval_dir, ft_dir=config.ft_dir, accelerate_config=config.accelerate_config,
        max_steps=config.max_train_steps, concurrency=config.concurrency, timeout_s=config.timeout_s,
        batch_size=config.batch_size, load_in_4bit=config.load_in_4bit, precision=config.precision,
        reuse_max_age_hours=config.reuse_max_age_hours, finetune_deployment=config.finetune_deployment,
        tools=None if config.tools == DEFAULT_TOOLS else config.tools,
    )


def capture_step(settings: Settings, config: DistillConfig, *, flow_run_id: str | None = None,
                 progress: str = "lines") -> dict[str, Any]:
    """The teacher as the CodeAct agent over the source's first `limit` tasks (resumed when identical)."""
    examples, source = source_examples(config.source, config.dataset_path, tuple(config.categories), config.limit)
    teacher = hosted_agent_model(settings, timeout_s=config.timeout_s, max_retries=config.max_retries)
    pin = capture_pin(examples, source, teacher.identity, config.max_steps, config.tools, config.max_turn_tokens)
    return traced_capture(settings, examples, source, out=config.trajectories, teacher=teacher,
                          max_steps=config.max_steps, max_turn_tokens=config.max_turn_tokens, tools_spec=config.tools,
                          concurrency=config.concurrency, resume=can_resume(config.trajectories, pin),
                          max_errors=config.max_errors, progress=progress, flow_run_id=flow_run_id)


def filter_step(settings: Settings, config: DistillConfig, *, flow_run_id: str | None = None) -> dict[str, Any]:
    return traced_filter(settings, config.trajectories, Path(config.trajectories_dir), flow_run_id=flow_run_id)


def build_step(settings: Settings, config: DistillConfig, *, flow_run_id: str | None = None) -> dict[str, Any]:
    return traced_build(settings, accepted_path(config.trajectories_dir), Path(config.data_dir), val=config.val,
                        test=config.test, seed=config.seed, flow_run_id=flow_run_id)


def data_preface(captured: dict[str, Any], filtered: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """Markdown lines for the report: the teacher, what it did, what the filter kept, the splits."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in filtered["reasons"].items()) or "none"
    sizes = built["sizes"]
    return [
        "## Data: teacher trajectories", "",
        f"- teacher: `{captured['teacher']}`",
        f"- captured: {captured['n']} trajectories ({captured['captured_this_run']} this run), "
        f"{captured['finished']} finished, {captured['errors']} failed requests",
        f"- filter: {filtered['accepted']} of {filtered['n']} accepted ({filtered['acceptance_rate']:.1%}); "
        f"rejected: {reasons}",
        f"- built: train {sizes['train']}, val {sizes['val']}, test {sizes['test']} tasks "
        "(agent rows: loss on the teacher's turns only)", "",
    ]
