"""The Prefect flows' one parameter each: `PipelineConfig` (`slm-swap-pipeline`) and `DistillConfig`
(`slm-swap-distill`). `slm-swap pipeline|distill` generate their flags from these same models
(`slm_swap.infra.cli_options`), so the CLI, the Prefect UI's parameter form and the library share one
declaration: each field's default and help text are here and nowhere else."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, field_validator

from slm_swap.app.requests import (ACCELERATE_CONFIG_HELP, DEFAULT_DISTILL_EVAL_DIR, DEFAULT_FINETUNE_DEPLOYMENT,
                                   FinetuneMode, SourceOptions, Split, Track, concurrency_option, load_in_4bit_option,
                                   max_retries_option, precision_option, timeout_option)
from slm_swap.core.prompts import TRACKS as ROW_TRACK_NAMES
from slm_swap.infra.cli_options import Request, option
from slm_swap.infra.config import (DEFAULT_DATA_DIR, DEFAULT_DISTILL_DIR, DEFAULT_EVAL_DIR, DEFAULT_FT_DIR,
                                   DEFAULT_TRAJECTORIES_DIR)
from slm_swap.llm.agent_models import AGENT_MAX_NEW_TOKENS
from slm_swap.llm.precision import Precision
from slm_swap.llm.completion import EVAL_BATCH_SIZE
from slm_swap.train.options import ONE_EPOCH, STEP_CAP_HELP, StepCap
from slm_swap.trajectories.codeact import DEFAULT_MAX_STEPS, DEFAULT_TOOLS

REUSE_HELP = ("reuse a finished eval or adapter made from identical inputs at most this many hours ago (a crashed "
              "run, re-run, resumes; the nightly run re-evaluates); 0 turns reuse off")
DEPLOYMENT_HELP = ("run the fine-tune as this deployment (on the GPU work pool) when a Prefect API server is configured "
                   "and the deployment exists, else in-process; '' for always in-process")


class DataSource(SourceOptions):
    """Where the rows come from. `prepared` uses `data_dir` as it is; `bfcl`/`xlam` (re)build it first
    (deterministic: the same source, sizes and seed give the same bytes, so finished evals stay reusable)."""

    source: Literal["prepared", "bfcl", "xlam"] = option(
        "prepared", "prepared: use --data-dir as written by `slm-swap prepare`; bfcl: build it from the embedded "
        "BFCL data; xlam: build it from --dataset-path (the xLAM-60k file)")
    train: int = option(32, "train examples when building the dataset", ge=1)
    val: int = option(8, "validation examples when building the dataset", ge=1)
    test: int = option(8, "test examples when building the dataset", ge=1)
    seed: int = option(0, "split seed when building the dataset")


# '' (on the command line, or in the Prefect UI's form) means no deployment: train in-process.
DeploymentName = Annotated[str | None, AfterValidator(lambda name: name or None)]


class PipelineConfig(Request):
    """Everything one pipeline run needs: the parent flow's one parameter."""

    tracks: list[Track] = option(list(ROW_TRACK_NAMES), "tracks to evaluate (A: structured, B: toolcall)")
    split: Split = option("test", "split both sides are evaluated on")
    delta: float = option(0.01, "largest gap tolerated on a core metric before the SLM counts as trailing",
                          ge=0, lt=1, allow_inf_nan=False)
    finetune: FinetuneMode = option("auto", "auto: fine-tune a track only when compare says FINE_TUNE=1; always: "
                                            "fine-tune every track; never: evaluate and compare only")
    data: DataSource = option(DataSource(), "where the dataset comes from")
    data_dir: Path = option(DEFAULT_DATA_DIR, "dataset folder: <data-dir>/<track>/<split>.jsonl")
    eval_dir: Path = option(DEFAULT_EVAL_DIR, "eval folder: metrics files, report.md and report.png", flag="--out-dir")
    ft_dir: Path = option(DEFAULT_FT_DIR, "adapters go to <ft-dir>/adapter_<track>")
    accelerate_config: Path | None = option(None, ACCELERATE_CONFIG_HELP)
    limit: int | None = option(None, "evaluate the first N examples only", ge=1)
    max_steps: StepCap = option(ONE_EPOCH, "training: " + STEP_CAP_HELP)
    concurrency: int = concurrency_option(ge=1)
    timeout_s: float = timeout_option("hosted: seconds per request (a CPU stand-in needs more)", gt=0)
    batch_size: int = option(EVAL_BATCH_SIZE, "SLM: prompts decoded together", ge=1)
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()
    reuse_max_age_hours: float = option(12.0, REUSE_HELP, ge=0)
    finetune_deployment: DeploymentName = option(DEFAULT_FINETUNE_DEPLOYMENT, DEPLOYMENT_HELP)
    tools: str | None = option(None, "agent track: the tools factory the agent gets (default: capture's simulated tools)",
                               metavar="MODULE:FACTORY")

    @field_validator("tracks")
    @classmethod
    def _tracks(cls, tracks: list[str]) -> list[str]:
        if not tracks:
            raise ValueError("at least one track")
        return list(dict.fromkeys(tracks))  # unique, in order


class DistillConfig(SourceOptions):
    """Everything one distill run needs: the flow's one parameter."""

    limit: int | None = option(64, "tasks the teacher works on: the source's first N distinct tasks (None: all)", ge=1)
    max_steps: int = option(DEFAULT_MAX_STEPS, "model turns per task, for the teacher and the student alike", ge=1)
    max_turn_tokens: int = option(AGENT_MAX_NEW_TOKENS, "new tokens per model turn, for the teacher and the student alike",
                                  ge=1)
    tools: str = option(DEFAULT_TOOLS, "tools factory (default: simulated tools that call no API)", metavar="MODULE:FACTORY")
    val: int = option(8, "validation tasks", ge=1)
    test: int = option(8, "test tasks (drawn first): what teacher and student are evaluated on", ge=1)
    seed: int = option(0, "split seed")
    trajectories_dir: Path = option(DEFAULT_TRAJECTORIES_DIR, "trajectories.jsonl, accepted/rejected.jsonl, filter.json")
    data_dir: Path = option(DEFAULT_DISTILL_DIR, "build's splits: {structured,toolcall,agent}/...")
    eval_dir: Path = option(DEFAULT_DISTILL_EVAL_DIR, "agent metrics files, report.md and report.png", flag="--out-dir")
    ft_dir: Path = option(DEFAULT_FT_DIR, "the adapter goes to <ft-dir>/adapter_agent")
    delta: float = option(0.01, "largest gap tolerated on a core agent metric", ge=0, lt=1, allow_inf_nan=False)
    finetune: FinetuneMode = option("auto", "auto: fine-tune when compare says FINE_TUNE=1; always; never")
    accelerate_config: Path | None = option(None, ACCELERATE_CONFIG_HELP)
    max_train_steps: StepCap = option(ONE_EPOCH, "training: " + STEP_CAP_HELP)
    concurrency: int = concurrency_option("trajectories in flight (teacher requests; student agents decoded together)", ge=1)
    timeout_s: float = timeout_option("teacher: seconds per request", gt=0)
    max_retries: int = max_retries_option("teacher: retries on 429/5xx/timeouts", ge=0)
    max_errors: int | None = option(None, "capture stops after this many failed requests (default: 10% of tasks)", ge=0)
    batch_size: int = option(EVAL_BATCH_SIZE, "student: the local model's batch limit when loaded", ge=1)
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()
    reuse_max_age_hours: float = option(12.0, REUSE_HELP, ge=0)
    finetune_deployment: DeploymentName = option(DEFAULT_FINETUNE_DEPLOYMENT, DEPLOYMENT_HELP)

    @property
    def trajectories(self) -> Path:
        return Path(self.trajectories_dir) / "trajectories.jsonl"
