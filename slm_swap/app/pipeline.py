"""The pipeline's steps as plain functions (no Prefect here); its config is `flow_configs.PipelineConfig`.

`flows/pipeline.py` (the Prefect flow `slm-swap-pipeline`) and `slm-swap pipeline` run these:

    slm-swap pipeline --tracks structured toolcall --finetune auto     # the flow, in-process

- `check_pipeline_config(settings, config)`: everything a run implies that can be known before
  Prefect starts or a model loads (settings, data, folders, tools); the CLI and the flow call it first.
- `needs_training(decision, mode)`: the branching rule (`auto` follows the compare decision).
- `run_eval_step`: one eval that is reused when an identical eval already finished (same track,
  split, limit, dataset sha256, model kind and identity, adapter hash, within `reuse_max_age_hours`),
  resumed (the library's `resume=True`) when an identical one was cut off, and run afresh otherwise.
  A stamp beside the metrics file (`<track>_<kind>[_ft]_<split>.pipeline.json`) records the inputs.
- The fine-tune step's inputs and reuse rule are in `finetune_step`.
- `trace_tags`: Langfuse trace ids as `langfuse:<id>` tags (none when tracing is off).
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from slm_swap.app.flow_configs import DataSource, PipelineConfig
from slm_swap.app.requests import FINETUNE_MODES, EvalRequest
from slm_swap.app.runs import traced_compare, traced_eval
from slm_swap.app.stamps import now_utc, young
from slm_swap.core.compare import Decision
from slm_swap.core.tracks import get_track
from slm_swap.evaluation.rows import default_out_path, records_path_for
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import check_writable_dir, read_json, sha256_file, write_json
from slm_swap.infra.progress import Progress

SLM_GPU_TAG = "slm-gpu"  # tag of every task that loads the SLM; a Prefect concurrency limit of 1 on it
TAG_PREFIX = "langfuse:"


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


# -- checks before the flow starts ---------------------------------------------------------------


def check_hosted_settings(settings: Settings) -> None:
    """The hosted model's settings (Azure or HOSTED_BASE_URL) are complete; no request is sent."""
    from slm_swap.llm.hosted import HostedClient

    HostedClient(settings).close()


def check_pipeline_config(settings: Settings, config: PipelineConfig) -> None:
    """Refuse, as one `SlmSwapError` line and with nothing written, a run that would fail later:
    tracing and hosted settings, the SLM checkpoint, the tools factory, the dataset, the folders and,
    when it may fine-tune, the training's inputs. `slm-swap pipeline` calls it before Prefect starts;
    the flow calls it first (a deployment run fails with this line)."""
    from slm_swap.app.finetune_step import check_local_model, check_training_plan, training_plan
    from slm_swap.infra.tracing import check_tracing_settings
    from slm_swap.trajectories.codeact import load_tools_factory

    check_tracing_settings(settings)
    check_hosted_settings(settings)
    check_local_model(settings)
    if config.tools and any(get_track(track).runs_as_agent for track in config.tracks):
        load_tools_factory(config.tools)
    prepared = config.data.source == "prepared"
    if prepared:
        for track in config.tracks:
            if not (rows := get_track(track).split_file(config.data_dir, config.split)).is_file():
                raise SlmSwapError(f"{rows}: no such dataset file (run `slm-swap prepare`/`build` or set the pipeline's data source)")
    else:
        if config.data.dataset_path and not Path(config.data.dataset_path).is_file():
            raise SlmSwapError(f"--dataset-path {config.data.dataset_path}: no such file")
        check_writable_dir(config.data_dir, "--data-dir", leave_nothing=True)
    check_writable_dir(config.eval_dir, "--out-dir", leave_nothing=True)
    if config.finetune != "never":
        for track in config.tracks:  # rows a `prepare` of this run makes are checked when it has made them
            check_training_plan(settings, training_plan(config, track), rows=prepared, out_flag="--ft-dir")


# -- data ----------------------------------------------------------------------------------------


def prepare_dataset(data: DataSource, out_dir: Path) -> dict[str, Any] | None:
    """Build `out_dir` from the configured source (what `slm-swap prepare` does); None for `prepared`."""
    from slm_swap.app.path_checks import check_dataset_paths
    from slm_swap.data.prepare import SplitSizes, load_source, prepare

    if data.source == "prepared":
        return None
    check_dataset_paths(out_dir, [("--dataset-path", data.dataset_path)], flag="--data-dir")
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


def model_identity(settings: Settings, kind: str, load_in_4bit: bool | None = None, precision: str = "fp32") -> str:
    """What the metrics file will record as `model.identity`, known before anything is loaded (the SLM
    on an engine by URL: the engine; the model name it is asked for is known once it is reached)."""
    if kind == "slm" and settings.slm_base_url:
        from slm_swap.llm.hosted import check_url, host_of

        return f"engine@{host_of(check_url(settings.slm_base_url, 'SLM_BASE_URL'))}"
    if kind == "slm":
        import torch

        from slm_swap.llm.local import local_identity
        from slm_swap.llm.precision import resolve_precision, weights_note
        from slm_swap.llm.quantization import resolve_quantization

        quantization = resolve_quantization(load_in_4bit)
        computes_in = resolve_precision(precision, quantization, torch.cuda.is_available())
        return local_identity(Path(settings.slm_model_path), weights_note(quantization, computes_in))
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
        "model_identity": model_identity(settings, kind, config.load_in_4bit if kind == "slm" else None,
                                         config.precision if kind == "slm" else "fp32"),
        "adapter": str(adapter) if adapter else None,
        "adapter_sha256": folder_sha256(adapter) if adapter else None,
        "tools": config.tools,
    }


def stamp_path_for(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".pipeline.json")


def plan_eval(out: Path, fingerprint: dict[str, Any], max_age_hours: float, now: datetime | None = None) -> str:
    """`reuse` (identical eval finished, metrics file untouched since), `resume` (identical eval cut
    off: its records are kept), or `run` (anything else)."""
    out, now = Path(out), now or now_utc()
    stamp_file = stamp_path_for(out)
    if not stamp_file.exists():
        return "run"
    try:
        stamp = read_json(stamp_file, "pipeline stamp")
    except SlmSwapError:
        return "run"
    if not isinstance(stamp, dict) or stamp.get("fingerprint") != fingerprint or not young(stamp.get("started_at"), max_age_hours, now):
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
    adapter = Path(adapter) if adapter else None
    out = default_out_path(config.eval_dir, track, kind, config.split, adapter)
    fingerprint = eval_fingerprint(settings, config, track, kind, adapter)
    action = plan_eval(out, fingerprint, config.reuse_max_age_hours)
    stamp_file = stamp_path_for(out)
    if action == "reuse":
        return EvalOutcome(track, kind, adapter, out, read_json(out, "metrics file"), "reused")
    started_at = read_json(stamp_file, "pipeline stamp")["started_at"] if action == "resume" else now_utc().isoformat()
    write_json(stamp_file, {"fingerprint": fingerprint, "started_at": started_at, "finished_at": None, "metrics_sha256": None})
    if kind == "slm" and not settings.slm_base_url:
        hold_one_local_model(fingerprint["model_identity"], adapter, fingerprint["adapter_sha256"])
    request = EvalRequest(track=track, model_kind=kind, split=config.split, data_dir=config.data_dir, adapter=adapter,
                          limit=config.limit, resume=action == "resume", concurrency=config.concurrency,
                          timeout_s=config.timeout_s, batch_size=config.batch_size, load_in_4bit=config.load_in_4bit,
                          precision=config.precision if kind == "slm" else "fp32", tools=config.tools)
    document = traced_eval(settings, request, out=out, progress=progress, flow_run_id=flow_run_id)
    write_json(stamp_file, {"fingerprint": fingerprint, "started_at": started_at, "finished_at": now_utc().isoformat(),
                            "metrics_sha256": sha256_file(out)})
    return EvalOutcome(track, kind, adapter, out, document, "resumed" if action == "resume" else "ran")


def compare_step(settings: Settings, config: PipelineConfig, hosted: EvalOutcome, slm: EvalOutcome,
                 flow_run_id: str | None = None) -> Decision:
    if hosted.track != slm.track:
        raise SlmSwapError(f"cannot compare track {hosted.track!r} with track {slm.track!r}")
    return traced_compare(settings, track=hosted.track, reference_path=hosted.path, candidate_path=slm.path,
                          delta=config.delta, flow_run_id=flow_run_id)
