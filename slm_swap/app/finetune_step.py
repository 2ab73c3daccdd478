"""The fine-tune step's inputs and reuse rule: what `slm-swap train` and the fine-tune subflow
(`flows/finetune.py`) run, `accelerate launch ... -m slm_swap.train` built in one place.

- `TrainingPlan`: one fine-tune's inputs; `training_plan(config, track)` for the pipeline's.
- `check_training_plan(settings, plan)`: everything the launch would find wrong, found before it starts.
- `training_command(plan)`: the launch command; `training_env`: the flow-run id for its trace;
  `launch_training`: runs it, its failure one line (the training process's own, when it printed one).
- `reusable_adapter`: an adapter already trained from identical inputs, young enough to reuse.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.path_checks import check_adapter_paths
from slm_swap.app.stamps import now_utc, young
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import check_writable_dir, read_json, sha256_file
from slm_swap.llm.model_folders import require_checkpoint
from slm_swap.train.hyperparams import hyperparams_for
from slm_swap.train.launch import launch_command, run_training
from slm_swap.train.options import TrainOptions
from slm_swap.train.run import MANIFEST


def adapter_dir(config: PipelineConfig, track: str) -> Path:
    return Path(config.ft_dir) / f"adapter_{track}"


@dataclass(frozen=True)
class TrainingPlan:
    """The fine-tune subflow's inputs (its parameters), resolved from the pipeline config."""

    track: str
    train_path: Path
    val_path: Path
    out: Path
    accelerate_config: Path | None = None
    reuse_max_age_hours: float = 12.0
    # The pipeline retrains in place (`overwrite`); `slm-swap train` passes the user's options.
    options: TrainOptions = field(default_factory=lambda: TrainOptions(overwrite=True))


def training_plan(config: PipelineConfig, track: str) -> TrainingPlan:
    data_dir = Path(config.data_dir)
    return TrainingPlan(track=track, train_path=data_dir / track / "train.jsonl", val_path=data_dir / track / "val.jsonl",
                        out=adapter_dir(config, track), accelerate_config=config.accelerate_config,
                        reuse_max_age_hours=config.reuse_max_age_hours,
                        options=TrainOptions(overwrite=True, max_steps=config.max_steps))


def check_local_model(settings: Settings) -> None:
    """SLM_MODEL_PATH holds a checkpoint (what training and the SLM evals load)."""
    require_checkpoint(settings.slm_model_path)


def check_training_plan(settings: Settings, plan: TrainingPlan, *, rows: bool = True, out_flag: str = "--out") -> None:
    """What the training process would refuse only after `accelerate launch` has started it (or, for a
    folder it cannot write, after loading the model): one `SlmSwapError` line, now. `rows=False` when
    the rows are yet to be made (the distill flow builds them); `out_flag` is what the user set the
    adapter folder with (`--out`, or `--ft-dir` for <ft-dir>/adapter_<track>)."""
    from slm_swap.infra.tracing import check_tracing_settings
    from slm_swap.train.data import load_training_rows

    check_tracing_settings(settings)
    check_local_model(settings)
    if plan.accelerate_config and not Path(plan.accelerate_config).is_file():
        raise SlmSwapError(f"--accelerate-config {plan.accelerate_config}: no such file")
    hyperparams_for(plan.track, plan.options.batch_size)  # a batch size below 1
    out = Path(plan.out)
    if out.exists() and not out.is_dir():
        raise SlmSwapError(f"{out_flag} {out}: exists and is not a folder")
    check_adapter_paths(out, train=plan.train_path, val=plan.val_path, base_model=settings.slm_model_path, flag=out_flag)
    if (out / "adapter_config.json").exists() and not (plan.options.overwrite or plan.options.resume):
        raise SlmSwapError(f"{out_flag} {out} already holds an adapter: pass --overwrite to replace it")
    # The adapter is staged beside its folder and renamed into place; checkpoints go to <out>.checkpoints/.
    check_writable_dir(out.parent, out_flag, shown=out, leave_nothing=True)
    if rows:
        for path in (plan.train_path, plan.val_path):  # bad rows: one line naming the row
            load_training_rows(Path(path), plan.track)


def training_command(plan: TrainingPlan) -> list[str]:
    """`accelerate launch --config_file ... -m slm_swap.train ...` (the library builds it)."""
    return launch_command(track=plan.track, train=plan.train_path, val=plan.val_path, out=plan.out,
                          accelerate_config=plan.accelerate_config, extra=plan.options.launch_args())


def training_env(flow_run_id: str | None) -> dict[str, str]:
    """Environment for the training process: the flow-run id goes into the training trace's metadata."""
    return {"PREFECT__FLOW_RUN_ID": str(flow_run_id)} if flow_run_id else {}


def launch_training(plan: TrainingPlan, flow_run_id: str | None = None, **output: Any) -> None:
    """Print and run `accelerate launch ... -m slm_swap.train` for `plan`; `output` says where its
    output goes (`run_training`'s `echo`, `merge_stdout`). Raises `SlmSwapError("training failed: ...")`."""
    command = training_command(plan)
    print("$ " + shlex.join(command), flush=True)
    run_training(command, env=training_env(flow_run_id), **output)


def read_adapter_manifest(out: Path) -> dict[str, Any]:
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise SlmSwapError(f"{path}: no adapter manifest (training did not finish?)")
    return read_json(path, "adapter manifest")


def reusable_adapter(settings: Settings, plan: TrainingPlan, now: datetime | None = None) -> dict[str, Any] | None:
    """The manifest of an adapter already trained from the same base model, data, settings and step cap
    within `reuse_max_age_hours`, else None (then training runs)."""
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
    # What the adapter was asked for; manifests written before `requested` existed kept it at the top.
    asked = manifest.get("requested") or manifest
    same = (
        same_data
        and manifest.get("track") == plan.track
        and manifest.get("base_model") == str(settings.slm_model_path)
        and asked.get("max_steps") == plan.options.max_steps
        and asked.get("hyperparameters") == hyperparams_for(plan.track).as_dict()
        and (Path(plan.out) / "adapter_config.json").is_file()
    )
    return manifest if same and young(manifest.get("finished_at"), plan.reuse_max_age_hours, now or now_utc()) else None
