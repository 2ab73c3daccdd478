"""Outputs never destroy inputs, and a folder is replaced only when the product wrote all of it.

Every command that writes calls these before it writes anything (and before any model loads):

- `refuse_overwriting_inputs`: an output that is one of the command's inputs (the same file, seen
  through symlinks and hard links alike), a folder output that holds an input, or an output under a
  dataset's file name (`train.jsonl`, `test.tasks.jsonl`, `dataset.json`, ...) inside a dataset the
  command reads is refused with one line naming both paths and the flag.
- `refuse_foreign_folder`: a folder about to be replaced (deleted, then the new one renamed in) must
  be absent, empty, or hold only the files the product recorded writing there; `--force` and
  `--overwrite` never reach a file of the user's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from pathlib import Path

from slm_swap.infra.errors import SlmSwapError

# What `prepare` and `build` write into a dataset folder (data/prepare.py, trajectories/build.py).
DATASET_FILE_NAME = re.compile(r"(train|val|test)(\.answers|\.tasks)?\.jsonl|dataset\.json")

FlaggedPath = tuple[str, Path]  # (the flag that chose it, the path)


def is_dataset_file_name(name: str) -> bool:
    return DATASET_FILE_NAME.fullmatch(name) is not None


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file or folder: the same path once symlinks are resolved, or two
    hard links to one inode."""
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: then only the resolved paths could match
        return False


def _inside(path: Path, folder: Path) -> bool:
    return _resolved(path).is_relative_to(_resolved(folder)) and _resolved(path) != _resolved(folder)


def refuse_overwriting_inputs(outputs: Iterable[FlaggedPath], inputs: Iterable[FlaggedPath],
                              dataset_dirs: Iterable[FlaggedPath] = ()) -> None:
    """Refuse, with one line, a command whose outputs would overwrite or delete its inputs.

    `outputs`: every file the command writes and every folder it replaces whole, each with the flag
    that chose it; `inputs`: every file or folder it reads (missing ones are skipped); `dataset_dirs`:
    dataset folders it reads, where no output may take a dataset file's name at any depth.
    """
    outputs, inputs, dataset_dirs = list(outputs), list(inputs), list(dataset_dirs)
    for out_flag, out in outputs:
        for in_flag, source in inputs:
            if source is None:
                continue
            if same_file(out, source):
                raise SlmSwapError(f"{out_flag} {out}: is the input {source} ({in_flag}); writing it would destroy "
                                   "the input: choose another path")
            if _inside(source, out):
                raise SlmSwapError(f"{out_flag} {out}: holds the input {source} ({in_flag}), and would be replaced "
                                   "whole: choose another path")
            if Path(source).is_dir() and _inside(out, source):  # an adapter's or a model's folder
                raise SlmSwapError(f"{out_flag} {out}: lies inside the input folder {source} ({in_flag}); writing "
                                   "there could destroy the input: choose another path")
        for data_flag, folder in dataset_dirs:
            if folder is not None and is_dataset_file_name(Path(out).name) and _inside(out, folder):
                raise SlmSwapError(f"{out_flag} {out}: would write a dataset file ({Path(out).name}) inside the "
                                   f"dataset {folder} ({data_flag}) it reads: choose another path")


def refuse_foreign_folder(folder: Path, flag: str, written: Collection[str] | None, whose: str,
                          override: str | None = "--force") -> None:
    """Refuse to replace `folder` unless it is absent, empty, or holds only the names in `written`:
    what the product recorded writing there (None: no record, so not ours). `whose` says what record
    makes a folder ours (e.g. "a slm-swap model folder (slm_swap_model.json)"). The refusal holds
    whatever the command's `override` flag (`--force`, `--overwrite`) says: it replaces the product's
    own folder, nothing else."""
    whatever = f", {override} or not" if override else ""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():  # a file, or a link to nothing
        raise SlmSwapError(f"{flag} {folder}: exists and is not a folder; it is not replaced: choose another path")
    entries = sorted(entry.name for entry in folder.iterdir())
    if not entries:
        return
    if written is None:
        raise SlmSwapError(f"{flag} {folder}: holds files and is not {whose}; it is never replaced{whatever}: "
                           "choose another folder or move its files yourself")
    foreign = [name for name in entries if name not in written]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise SlmSwapError(f"{flag} {folder}: holds {shown}, which slm-swap did not write; it is never replaced{whatever}: "
                           "choose another folder or move those files yourself")
