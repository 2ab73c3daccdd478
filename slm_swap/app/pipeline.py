"""The pipeline's typed config and its steps as plain functions (no Prefect here).

`flows/pipeline.py` (the Prefect flow `slm-swap-pipeline`) and `slm-swap pipeline` run these:

    slm-swap pipeline --tracks structured toolcall --finetune auto     # the flow, in-process

- `PipelineConfig`: one typed config per run (the flow's single parameter), help text on each field.
- `needs_training(decision, mode)`: the branching rule (`auto` follows the compare decision).
- `run_eval_step`: one eval that is reused when an identical eval already finished (same track,
  split, limit, dataset sha256, model kind and identity, adapter hash, within `reuse_max_age_hours`),
  resumed (the library's `resume=True`) when an identical one was cut off, and run afresh otherwise.
  A stamp beside the metrics file (`<track>_<kind>[_ft]_<split>.pipeline.json`) records the inputs.
- `reusable_adapter`, `training_command`, `training_env`: the fine-tune step's inputs and reuse rule.
- `trace_tags`: Langfuse trace ids as `langfuse:<id>` tags (none when tracing is off).
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slm_swap.core.compare import Decision
from slm_swap.core.prompts import TRACKS
from slm_swap.core.tracks import get_track
from slm_swap.evaluation.rows import default_out_path, records_path_for
from slm_swap.infra.config import DEFAULT_DATA_DIR, DEFAULT_EVAL_DIR, DEFAULT_FT_DIR, Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json, sha256_file, write_json
from slm_swap.infra.progress import Progress
from slm_swap.llm.completion import EVAL_BATCH_SIZE

Track = Literal["structured", "toolcall", "agent"]
FinetuneMode = Literal["auto", "always", "never"]
FINETUNE_MODES: tuple[str, ...] = ("auto", "always", "never")
DEFAULT_FINETUNE_DEPLOYMENT = "slm-swap-finetune/gpu"
SLM_GPU_TAG = "slm-gpu"  # tag of every task that loads the SLM; a Prefect concurrency limit of 1 on it
TAG_PREFIX = "langfuse:"


class DataSource(BaseModel):
    """Where the rows come from. `prepared` uses `data_dir` as it is; `bfcl`/`xlam` (re)build it first
    (deterministic: the same source, sizes and seed give the same bytes, so finished evals stay reusable)."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["prepared", "bfcl", "xlam"] = Field(
        "prepared", description="prepared: use data_dir as written by `slm-swap prepare`; bfcl: build it from the "
        "embedded BFCL data; xlam: build it from dataset_path (the xLAM-60k file)."
    )
    dataset_path: Path | None = Field(None, description="xlam only: the xLAM-60k JSON/JSONL file.")
    categories: list[str] = Field(default_factory=list, description="bfcl only: BFCL categories (default: simple_python).")
    train: int = Field(32, ge=1, description="train examples when building the dataset")
    val: int = Field(8, ge=1, description="validation examples when building the dataset")
    test: int = Field(8, ge=1, description="test examples when building the dataset")
    seed: int = Field(0, description="split seed when building the dataset")

    @model_validator(mode="after")
    def _check(self) -> "DataSource":
        if self.source == "xlam" and not self.dataset_path:
            raise ValueError("source 'xlam' needs dataset_path (the xLAM-60k file)")
        if self.source != "xlam" and self.dataset_path:
            raise ValueError("dataset_path applies to source 'xlam' only")
        if self.source != "bfcl" and self.categories:
            raise ValueError("categories apply to source 'bfcl' only")
        return self


class PipelineConfig(BaseModel):
    """Everything one pipeline run needs: the parent flow's one parameter."""

    model_config = ConfigDict(extra="forbid")

    tracks: list[Track] = Field(default_factory=lambda: list(TRACKS), description="tracks to evaluate (A: structured, B: toolcall)")
    split: Literal["train", "val", "test"] = Field("test", description="split both sides are evaluated on")
    delta: float = Field(0.01, ge=0, allow_inf_nan=False, description="largest gap tolerated on a core metric before the SLM counts as trailing")
    finetune: FinetuneMode = Field(
        "auto", description="auto: fine-tune a track only when compare says FINE_TUNE=1; always: fine-tune every track; "
        "never: evaluate and compare only"
    )
    data: DataSource = Field(default_factory=DataSource, description="where the dataset comes from")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="dataset folder: <data_dir>/<track>/<split>.jsonl")
    eval_dir: Path = Field(DEFAULT_EVAL_DIR, description="metrics files, report.md and report.png go here")
    ft_dir: Path = Field(DEFAULT_FT_DIR, description="adapters go to <ft_dir>/adapter_<track>")
    accelerate_config: Path | None = Field(
        None, description="accelerate config for training (default: accelerate_config/phi4_4gpu.yaml with CUDA, else cpu.yaml)"
    )
    limit: int | None = Field(None, ge=1, description="evaluate the first N examples only")
    max_steps: int = Field(-1, description="cap training at N optimizer steps (-1: the seed's one epoch)")
    concurrency: int = Field(8, ge=1, description="hosted: parallel requests")
    timeout_s: float = Field(60.0, gt=0, description="hosted: seconds per request (a CPU stand-in needs more)")
    batch_size: int = Field(EVAL_BATCH_SIZE, ge=1, description="SLM: prompts decoded together")
    load_in_4bit: bool | None = Field(
        None, description="SLM: load in NF4 4-bit through bitsandbytes (None: 4-bit with CUDA, full precision on CPU)"
    )
    reuse_max_age_hours: float = Field(
        12.0, ge=0, description="reuse a finished eval or adapter made from identical inputs at most this many hours ago "
        "(a crashed run, re-run, resumes; the nightly run re-evaluates); 0 turns reuse off"
    )
    finetune_deployment: str | None = Field(
        DEFAULT_FINETUNE_DEPLOYMENT, description="run the fine-tune as this deployment (on the GPU work pool) when a Prefect "
        "API server is configured and the deployment exists; otherwise the subflow runs in-process"
    )
    tools: str | None = Field(
        None, description="agent track: the tools factory MODULE:FACTORY the agent gets (None: capture's simulated tools)"
    )

    @field_validator("tracks")
    @classmethod
    def _tracks(cls, tracks: list[str]) -> list[str]:
        if not tracks:
            raise ValueError("at least one track")
        return list(dict.fromkeys(tracks))  # unique, in order


def needs_training(decision: Decision, mode: str) -> bool:
    """The branching rule: `always` and `never` override; `auto` fine-tunes when the SLM trails."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if mode == "auto":
        return bool(decision.fine_tune)
    raise SlmSwapError(f"unknown finetune mode {mode!r}: expected one of {', '.join(FINETUNE_MODES)}")


def retryable(error: BaseException | None) -> bool:
    """Whether retrying a failed eval may help: not for bad input or settings (`SlmSwapError`), except
    the eval's error-budget stop, which names `--resume` (a flaky endpoint: the retry resumes)."""
    if isinstance(error, SlmSwapError):
        return "--resume" in str(error)
    return error is not None


def trace_tags(trace_ids: Iterable[str | None]) -> list[str]:
    """`langfuse:<id>` for each trace id, in order, without repeats; None (tracing off) gives no tag."""
    return list(dict.fromkeys(f"{TAG_PREFIX}{trace_id}" for trace_id in trace_ids if trace_id))


def merge_tags(current: Iterable[str], new: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*current, *new]))


# -- data ----------------------------------------------------------------------------------------


def prepare_dataset(data: DataSource, out_dir: Path) -> dict[str, Any] | None:
    """Build `out_dir` from the configured source (what `slm-swap prepare` does); None for `prepared`."""
    from slm_swap.data.prepare import SplitSizes, load_source, prepare

    if data.source == "prepared":
        return None
    examples, skipped, source = load_source(data.source, data.dataset_path, tuple(data.categories or ()))
    return prepare(examples, skipped, source, Path(out_dir), SplitSizes(train=data.train, val=data.val, test=data.test), data.seed)


# -- evals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalOutcome:
    """One eval step's result: the metrics file and what the step did (`ran`, `resumed`, `reused`)."""

    track: str
    kind: str  # "azure" | "slm"
    adapter: Path | None
    path: Path
    metrics: dict[str, Any]
    action: str

    @property
    def langfuse_trace_id(self) -> str | None:
        return self.metrics.get("langfuse_trace_id")


def adapter_dir(config: PipelineConfig, track: str) -> Path:
    return Path(config.ft_dir) / f"adapter_{track}"


def model_identity(settings: Settings, kind: str, load_in_4bit: bool | None = None) -> str:
    """What the metrics file will record as `model.identity`, known before anything is loaded."""
    if kind == "slm":
        from slm_swap.llm.local import local_identity
        from slm_swap.llm.quantization import resolve_quantization

        return local_identity(Path(settings.slm_model_path), resolve_quantization(load_in_4bit))
    if kind == "azure":
        from slm_swap.llm.hosted import HostedClient

        return HostedClient(settings).identity  # builds the SDK client only: no request is sent
    raise SlmSwapError(f"unknown model kind {kind!r}: expected azure or slm")


def folder_sha256(folder: Path) -> str:
    """One hash over a folder's files (names and contents), e.g. an adapter."""
    import hashlib

    folder = Path(folder)
    if not folder.is_dir():
        raise SlmSwapError(f"{folder}: no such adapter folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


def eval_fingerprint(settings: Settings, config: PipelineConfig, track: str, kind: str, adapter: Path | None) -> dict[str, Any]:
    """The inputs that decide an eval's result; equal fingerprints mean the eval need not run again."""
    rows_path = get_track(track).split_file(config.data_dir, config.split)
    if not rows_path.is_file():
        raise SlmSwapError(f"{rows_path}: no such dataset file (run `slm-swap prepare`/`build` or set the pipeline's data source)")
    return {
        "track": track,
        "split": config.split,
        "limit": config.limit,
        "dataset_path": str(rows_path),
        "dataset_sha256": sha256_file(rows_path),
        "model_kind": kind,
        "model_identity": model_identity(settings, kind, config.load_in_4bit if kind == "slm" else None),
        "adapter": str(adapter) if adapter else None,
        "adapter_sha256": folder_sha256(adapter) if adapter else None,
        "tools": config.tools,
    }


def stamp_path_for(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".pipeline.json")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _young(stamp_time: str | None, max_age_hours: float, now: datetime) -> bool:
    if not stamp_time or max_age_hours <= 0:
        return False
    try:
        made = datetime.fromisoformat(stamp_time)
    except ValueError:
        return False
    return timedelta(0) <= now - made <= timedelta(hours=max_age_hours)


def plan_eval(out: Path, fingerprint: dict[str, Any], max_age_hours: float, now: datetime | None = None) -> str:
    """`reuse` (identical eval finished, metrics file untouched since), `resume` (identical eval cut
    off: its records are kept), or `run` (anything else)."""
    out, now = Path(out), now or _now()
    stamp_file = stamp_path_for(out)
    if not stamp_file.exists():
        return "run"
    try:
        stamp = read_json(stamp_file, "pipeline stamp")
    except SlmSwapError:
        return "run"
    if not isinstance(stamp, dict) or stamp.get("fingerprint") != fingerprint or not _young(stamp.get("started_at"), max_age_hours, now):
        return "run"
    if stamp.get("metrics_sha256") and out.is_file() and sha256_file(out) == stamp["metrics_sha256"]:
        return "reuse"
    if records_path_for(out).is_file():
        return "resume"
    return "run"


_loaded_lock = threading.Lock()
_loaded_key: tuple[Any, ...] | None = None


def hold_one_local_model(identity: str, adapter: Path | None, adapter_sha256: str | None) -> None:
    """Drop any other SLM this process holds before one is loaded, so one process never keeps two
    models on the GPU (the client caches up to two); a retrained adapter at the same path is reloaded.
    `identity` is the checkpoint and how it is loaded (`model_identity`)."""
    global _loaded_key
    key = (identity, str(adapter) if adapter else None, adapter_sha256)
    with _loaded_lock:
        if _loaded_key is not None and _loaded_key != key:
            from slm_swap.llm.local import load_local_model

            load_local_model.cache_clear()
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover - torch is a dependency
                pass
        _loaded_key = key


def run_eval_step(
    settings: Settings,
    config: PipelineConfig,
    *,
    track: str,
    kind: str,
    adapter: Path | None = None,
    flow_run_id: str | None = None,
    progress: Progress = "lines",
) -> EvalOutcome:
    """Reuse, resume or run one eval (see `plan_eval`); the library's traced eval does the work."""
    from slm_swap.app.runs import traced_eval

    adapter = Path(adapter) if adapter else None
    out = default_out_path(config.eval_dir, track, kind, config.split, adapter)
    fingerprint = eval_fingerprint(settings, config, track, kind, adapter)
    action = plan_eval(out, fingerprint, config.reuse_max_age_hours)
    stamp_file = stamp_path_for(out)
    if action == "reuse":
        return EvalOutcome(track, kind, adapter, out, read_json(out, "metrics file"), "reused")
    started_at = read_json(stamp_file, "pipeline stamp")["started_at"] if action == "resume" else _now().isoformat()
    write_json(stamp_file, {"fingerprint": fingerprint, "started_at": started_at, "finished_at": None, "metrics_sha256": None})
    if kind == "slm":
        hold_one_local_model(fingerprint["model_identity"], adapter, fingerprint["adapter_sha256"])
    document = traced_eval(
        settings, track=track, split=config.split, data_dir=Path(config.data_dir), out=out, model_kind=kind,
        adapter=adapter, limit=config.limit, resume=action == "resume", concurrency=config.concurrency,
        timeout_s=config.timeout_s, batch_size=config.batch_size, load_in_4bit=config.load_in_4bit, progress=progress,
        flow_run_id=flow_run_id, tools_spec=config.tools,
    )
    write_json(stamp_file, {"fingerprint": fingerprint, "started_at": started_at, "finished_at": _now().isoformat(),
                            "metrics_sha256": sha256_file(out)})
    return EvalOutcome(track, kind, adapter, out, document, "resumed" if action == "resume" else "ran")


def compare_step(settings: Settings, config: PipelineConfig, hosted: EvalOutcome, slm: EvalOutcome,
                 flow_run_id: str | None = None) -> Decision:
    from slm_swap.app.runs import traced_compare

    if hosted.track != slm.track:
        raise SlmSwapError(f"cannot compare track {hosted.track!r} with track {slm.track!r}")
    return traced_compare(settings, track=hosted.track, reference_path=hosted.path, candidate_path=slm.path,
                          delta=config.delta, flow_run_id=flow_run_id)


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPlan:
    """The fine-tune subflow's inputs (its parameters), resolved from the pipeline config."""

    track: str
    train_path: Path
    val_path: Path
    out: Path
    accelerate_config: Path | None = None
    max_steps: int = -1
    reuse_max_age_hours: float = 12.0


def training_plan(config: PipelineConfig, track: str) -> TrainingPlan:
    data_dir = Path(config.data_dir)
    return TrainingPlan(track=track, train_path=data_dir / track / "train.jsonl", val_path=data_dir / track / "val.jsonl",
                        out=adapter_dir(config, track), accelerate_config=config.accelerate_config,
                        max_steps=config.max_steps, reuse_max_age_hours=config.reuse_max_age_hours)


def training_command(plan: TrainingPlan) -> list[str]:
    """`accelerate launch --config_file ... -m slm_swap.train ...` (the library builds it)."""
    from slm_swap.train.launch import launch_command

    return launch_command(track=plan.track, train=plan.train_path, val=plan.val_path, out=plan.out,
                          accelerate_config=plan.accelerate_config,
                          extra=["--overwrite", "--max-steps", str(plan.max_steps)])


def training_env(flow_run_id: str | None) -> dict[str, str]:
    """Environment for the training process: the flow-run id goes into the training trace's metadata."""
    return {"PREFECT__FLOW_RUN_ID": str(flow_run_id)} if flow_run_id else {}


def read_adapter_manifest(out: Path) -> dict[str, Any]:
    from slm_swap.train.run import MANIFEST

    path = Path(out) / MANIFEST
    if not path.is_file():
        raise SlmSwapError(f"{path}: no adapter manifest (training did not finish?)")
    return read_json(path, "adapter manifest")


def reusable_adapter(settings: Settings, plan: TrainingPlan, now: datetime | None = None) -> dict[str, Any] | None:
    """The manifest of an adapter already trained from the same base model, data, settings and step cap
    within `reuse_max_age_hours`, else None (then training runs)."""
    from slm_swap.train.hyperparams import hyperparams_for

    try:
        manifest = read_adapter_manifest(plan.out)
    except SlmSwapError:
        return None
    datasets = manifest.get("datasets") or {}
    try:
        same_data = all(
            (datasets.get(name) or {}).get("sha256") == sha256_file(path)
            for name, path in (("train", plan.train_path), ("val", plan.val_path))
        )
    except (OSError, SlmSwapError):
        return None
    same = (
        same_data
        and manifest.get("track") == plan.track
        and manifest.get("base_model") == str(settings.slm_model_path)
        and manifest.get("max_steps") == plan.max_steps
        and manifest.get("hyperparameters") == hyperparams_for(plan.track).as_dict()
        and (Path(plan.out) / "adapter_config.json").is_file()
    )
    return manifest if same and _young(manifest.get("finished_at"), plan.reuse_max_age_hours, now or _now()) else None
