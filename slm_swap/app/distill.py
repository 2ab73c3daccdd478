"""Phase II end to end, as plain functions (no Prefect here): what the flow `slm-swap-distill`
(`flows/distill.py`) and `slm-swap distill` run.

    capture -> filter -> build -> agent eval of teacher and student -> compare
            -> (where the student trails) fine-tune --track agent -> agent re-eval -> compare -> report

- `DistillConfig`: the flow's one parameter, help text on each field.
- `capture_step`, `filter_step`, `build_step`: the traced library commands (`trajectories.runs`). A
  capture identical to one already on disk is resumed, which asks only the requests it lacks (none,
  when it finished): a re-run of the flow does not ask the teacher again.
- `pipeline_config`: the `PipelineConfig` the evals, compares and the fine-tune subflow read, the same
  steps `slm-swap-pipeline` runs, on the agent track and `build`'s folder.
- `data_preface`: the report's lines on what was captured, kept and built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slm_swap.app.pipeline import DEFAULT_FINETUNE_DEPLOYMENT, FinetuneMode, PipelineConfig
from slm_swap.infra.config import DEFAULT_DISTILL_DIR, DEFAULT_EVAL_DIR, DEFAULT_FT_DIR, DEFAULT_TRAJECTORIES_DIR, Settings
from slm_swap.llm.completion import EVAL_BATCH_SIZE
from slm_swap.trajectories.codeact import AGENT_MAX_NEW_TOKENS, DEFAULT_MAX_STEPS, DEFAULT_TOOLS

DEFAULT_DISTILL_EVAL_DIR = DEFAULT_EVAL_DIR / "distill"


class DistillConfig(BaseModel):
    """Everything one distill run needs: the flow's one parameter."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["bfcl", "xlam"] = Field("bfcl", description="rows the teacher works on: bfcl (embedded) or xlam (dataset_path)")
    dataset_path: Path | None = Field(None, description="xlam only: the xLAM-60k JSON/JSONL file")
    categories: list[str] = Field(default_factory=list, description="bfcl only: BFCL categories (default: simple_python)")
    limit: int | None = Field(64, ge=1, description="capture the first N distinct tasks (None: all)")
    max_steps: int = Field(DEFAULT_MAX_STEPS, ge=1, description="model turns per task, for the teacher and the student alike")
    max_turn_tokens: int = Field(AGENT_MAX_NEW_TOKENS, ge=1,
                                 description="new tokens per model turn, for the teacher and the student alike")
    tools: str = Field(DEFAULT_TOOLS, description="tools factory MODULE:FACTORY (default: simulated tools that call no API)")
    val: int = Field(8, ge=1, description="validation tasks")
    test: int = Field(8, ge=1, description="test tasks (drawn first): what teacher and student are evaluated on")
    seed: int = Field(0, description="split seed")
    trajectories_dir: Path = Field(DEFAULT_TRAJECTORIES_DIR, description="trajectories.jsonl, accepted/rejected.jsonl, filter.json")
    data_dir: Path = Field(DEFAULT_DISTILL_DIR, description="build's splits: {structured,toolcall,agent}/...")
    eval_dir: Path = Field(DEFAULT_DISTILL_EVAL_DIR, description="agent metrics files, report.md and report.png")
    ft_dir: Path = Field(DEFAULT_FT_DIR, description="the adapter goes to <ft_dir>/adapter_agent")
    delta: float = Field(0.01, ge=0, allow_inf_nan=False, description="largest gap tolerated on a core agent metric")
    finetune: FinetuneMode = Field("auto", description="auto: fine-tune when compare says FINE_TUNE=1; always; never")
    accelerate_config: Path | None = Field(None, description="accelerate config (default: phi4_4gpu.yaml with CUDA, else cpu.yaml)")
    max_train_steps: int = Field(-1, description="cap training at N optimizer steps (-1: the seed's one epoch)")
    concurrency: int = Field(8, ge=1, description="trajectories in flight (teacher requests; student agents decoded together)")
    timeout_s: float = Field(60.0, gt=0, description="teacher: seconds per request")
    max_retries: int = Field(4, ge=0, description="teacher: retries on 429/5xx/timeouts")
    max_errors: int | None = Field(None, ge=0, description="capture stops after this many failed requests (None: 10%)")
    batch_size: int = Field(EVAL_BATCH_SIZE, ge=1, description="student: the local model's batch limit when loaded")
    load_in_4bit: bool | None = Field(None, description="student: NF4 4-bit (None: with CUDA only)")
    reuse_max_age_hours: float = Field(12.0, ge=0, description="reuse identical finished evals and adapters up to this age")
    finetune_deployment: str | None = Field(DEFAULT_FINETUNE_DEPLOYMENT, description="train through this deployment "
                                            "(the GPU pool) when the Prefect server has it, else in-process")

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.source == "xlam" and not self.dataset_path:
            raise ValueError("source 'xlam' needs dataset_path (the xLAM-60k file)")
        if self.source != "xlam" and self.dataset_path:
            raise ValueError("dataset_path applies to source 'xlam' only")
        if self.source != "bfcl" and self.categories:
            raise ValueError("categories apply to source 'bfcl' only")
        return self

    @property
    def trajectories(self) -> Path:
        return Path(self.trajectories_dir) / "trajectories.jsonl"


def pipeline_config(config: DistillConfig) -> PipelineConfig:
    """The shared eval/compare/fine-tune steps' config: the agent track on build's test split."""
    return PipelineConfig(
        tracks=["agent"], split="test", delta=config.delta, finetune=config.finetune, data_dir=config.data_dir,
        eval_dir=config.eval_dir, ft_dir=config.ft_dir, accelerate_config=config.accelerate_config,
        max_steps=config.max_train_steps, concurrency=config.concurrency, timeout_s=config.timeout_s,
        batch_size=config.batch_size, load_in_4bit=config.load_in_4bit,
        reuse_max_age_hours=config.reuse_max_age_hours, finetune_deployment=config.finetune_deployment,
        tools=None if config.tools == DEFAULT_TOOLS else config.tools,
    )


def capture_step(settings: Settings, config: DistillConfig, *, flow_run_id: str | None = None,
                 progress: str = "lines") -> dict[str, Any]:
    """The teacher as the CodeAct agent over the source's first `limit` tasks (resumed when identical)."""
    from slm_swap.llm.agent_models import hosted_agent_model
    from slm_swap.trajectories.capture import can_resume, capture_pin, source_examples
    from slm_swap.app.trajectory_runs import traced_capture

    examples, source = source_examples(config.source, config.dataset_path, tuple(config.categories), config.limit)
    teacher = hosted_agent_model(settings, timeout_s=config.timeout_s, max_retries=config.max_retries)
    pin = capture_pin(examples, source, teacher.identity, config.max_steps, config.tools, config.max_turn_tokens)
    return traced_capture(settings, examples, source, out=config.trajectories, teacher=teacher,
                          max_steps=config.max_steps, max_turn_tokens=config.max_turn_tokens, tools_spec=config.tools,
                          concurrency=config.concurrency, resume=can_resume(config.trajectories, pin),
                          max_errors=config.max_errors, progress=progress, flow_run_id=flow_run_id)


def filter_step(settings: Settings, config: DistillConfig, *, flow_run_id: str | None = None) -> dict[str, Any]:
    from slm_swap.app.trajectory_runs import traced_filter

    return traced_filter(settings, config.trajectories, Path(config.trajectories_dir), flow_run_id=flow_run_id)


def build_step(settings: Settings, config: DistillConfig, *, flow_run_id: str | None = None) -> dict[str, Any]:
    from slm_swap.trajectories.filter import accepted_path
    from slm_swap.app.trajectory_runs import traced_build

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
