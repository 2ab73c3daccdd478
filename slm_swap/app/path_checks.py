"""Each command's outputs against its inputs, checked before anything is loaded or written (the rules:
`slm_swap.infra.output_safety`). Here because only the app knows both sides of a command: what it
reads (a split, an xLAM file, trajectories, rows) and every file and folder it writes or replaces.

    check_eval_paths(request, out)              --out and the records and run files beside it
    check_dataset_paths(out_dir, inputs)        prepare and build: the track folders and dataset.json
    check_capture_paths(out, dataset_path)      the trajectories file and its run file
    check_filter_paths(trajectories, out_dir)   accepted.jsonl, rejected.jsonl, filter.json
    check_adapter_paths(out, train=..., ...)    train: the adapter folder, replaced whole
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from slm_swap.app.requests import EvalRequest
from slm_swap.core.prompts import TRACKS as ROW_TRACK_NAMES
from slm_swap.core.tracks import get_track
from slm_swap.evaluation.rows import records_path_for
from slm_swap.infra.output_safety import FlaggedPath, refuse_overwriting_inputs
from slm_swap.train.manifest import refuse_foreign_adapter_folder
from slm_swap.trajectories.capture import run_file_for
from slm_swap.trajectories.filter import accepted_path



def check_eval_paths(request: EvalRequest, out: Path, model_path: Path | None = None) -> None:
    """`eval`: neither the metrics file nor the records and run files written beside it (row evals
    and agent evals name them alike, `<out>.records.jsonl`, `<out>.run.json`, `<out>.records.run.json`)
    may be the split, its answers, the dataset manifest, the adapter or the SLM's checkpoint
    (`model_path`), nor lie inside either folder or take a dataset file's name inside the data folder."""
    data_dir = request.rows_dir()
    split_file = get_track(request.track).split_file(data_dir, request.split)
    records = records_path_for(Path(out))
    outputs = [("--out", Path(out)), ("--out (its records file)", records),
               ("--out (its run file)", run_file_for(Path(out))),
               ("--out (its records' run file)", run_file_for(records))]
    inputs = [("--data-dir", split_file), ("--data-dir", split_file.with_name(f"{request.split}.answers.jsonl")),
              ("--data-dir", data_dir / "dataset.json")]
    if request.adapter:
        inputs.append(("--adapter", Path(request.adapter)))
    if model_path is not None and request.model_kind == "slm":
        inputs.append(("SLM_MODEL_PATH", Path(model_path)))
    refuse_overwriting_inputs(outputs, inputs, [("--data-dir", data_dir)])


def check_dataset_paths(out_dir: Path, inputs: Iterable[FlaggedPath], *, flag: str = "--out-dir",
                        folders: Iterable[str] = ROW_TRACK_NAMES) -> None:
    """`prepare` and `build` replace `<out-dir>/<folder>/` whole and rewrite `<out-dir>/dataset.json`:
    none of those may be or hold an input."""
    out_dir = Path(out_dir)
    outputs = [(flag, out_dir / folder) for folder in folders] + [(flag, out_dir / "dataset.json")]
    refuse_overwriting_inputs(outputs, [(name, Path(path)) for name, path in inputs if path is not None])


def check_capture_paths(out: Path, dataset_path: Path | str | None) -> None:
    outputs = [("--out", Path(out)), ("--out (its run file)", run_file_for(Path(out)))]
    refuse_overwriting_inputs(outputs, [("--dataset-path", Path(dataset_path))] if dataset_path else [])


def check_filter_paths(trajectories: Path, out_dir: Path) -> None:
    outputs = [("--out-dir", accepted_path(out_dir)), ("--out-dir", Path(out_dir) / "rejected.jsonl"),
               ("--out-dir", Path(out_dir) / "filter.json")]
    refuse_overwriting_inputs(outputs, [("--trajectories", Path(trajectories))])


def check_build_paths(accepted: Path, out_dir: Path) -> None:
    accepted = Path(accepted)
    inputs = [("--accepted", accepted), ("--accepted (its filter.json)", accepted.with_name("filter.json"))]
    check_dataset_paths(out_dir, inputs, folders=(*ROW_TRACK_NAMES, "agent"))


def check_adapter_paths(out: Path, *, train: Path, val: Path, base_model: Path | None, flag: str = "--out") -> None:
    """`train` replaces the adapter folder whole (and writes `<out>.checkpoints/`): neither may be or
    hold the rows or the base model, nor take a dataset file's name beside the rows, and the adapter
    folder must be absent, empty, or an adapter this product trained holding nothing else - whatever
    --overwrite says (`finetune_step.check_training_plan` asks for --overwrite to replace one of ours)."""
    out = Path(out)
    inputs = [("--train", Path(train)), ("--val", Path(val))]
    if base_model is not None:
        inputs.append(("SLM_MODEL_PATH", Path(base_model)))
    rows_folders = [("--train", Path(train).parent), ("--val", Path(val).parent)]
    refuse_overwriting_inputs([(flag, out), (f"{flag} (its checkpoints)", Path(f"{out}.checkpoints"))], inputs,
                              rows_folders)
    refuse_foreign_adapter_folder(out, flag)
