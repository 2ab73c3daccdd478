"""Split examples into train/val/test and write both tracks' JSONL files atomically.

Layout under `out_dir` (the seed's `02_dataset/`):
    structured/{train,val,test}.jsonl   toolcall/{train,val,test}.jsonl
    <track>/<split>.answers.jsonl       BFCL only: possible answers, line-aligned with the split
    dataset.json                        what was built from what: source, seed, sizes, skips, ids

The test split is drawn first, so asking for a bigger train split never changes the test set.
A request text never lands in two splits (duplicates are dropped before splitting).
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_swap.core.prompts import TRACKS
from slm_swap.data.examples import Example, build_row
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_text, check_writable_dir, jsonl_text, sha256_file, write_json
from slm_swap.infra.output_safety import is_dataset_file_name, refuse_foreign_folder

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSizes:
    train: int = 32
    val: int = 8
    test: int = 8

    def total(self) -> int:
        return self.train + self.val + self.test


def split_examples(examples: list[Example], sizes: SplitSizes, seed: int) -> tuple[dict[str, list[Example]], int]:
    """Deterministic split; returns (examples per split, duplicates dropped)."""
    if min(sizes.train, sizes.val, sizes.test) < 0:
        raise SlmSwapError("split sizes must not be negative")
    seen: set[str] = set()
    unique: list[Example] = []
    for example in examples:
        if example.request not in seen:
            seen.add(example.request)
            unique.append(example)
    if len(unique) < sizes.total():
        raise SlmSwapError(
            f"only {len(unique)} usable rows (single-call, distinct requests) but "
            f"--train {sizes.train} --val {sizes.val} --test {sizes.test} asks for {sizes.total()}"
        )
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    picked = [unique[i] for i in order]
    test = picked[: sizes.test]
    val = picked[sizes.test : sizes.test + sizes.val]
    train = picked[sizes.test + sizes.val : sizes.total()]
    return {"train": train, "val": val, "test": test}, len(examples) - len(unique)


def write_dataset(
    splits: dict[str, list[Example]],
    out_dir: Path,
    source: dict[str, Any],
    skipped: Counter,
    seed: int,
    extra_files: dict[str, str] | None = None,
    extra_manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write both tracks under `out_dir`, replacing earlier folders only once all is written.
    `extra_files` (path under `out_dir` -> text, e.g. `agent/train.jsonl`) are written and swapped
    in with them; `extra_manifest` adds keys to `dataset.json`."""
    out_dir = Path(out_dir)
    check_writable_dir(out_dir, "--out-dir")
    folders = sorted({*TRACKS, *(Path(p).parts[0] for p in extra_files or {})})
    refuse_foreign_dataset(out_dir, folders)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        files: dict[str, str] = {}
        for track in TRACKS:
            for split, examples in splits.items():
                path = staging / track / f"{split}.jsonl"
                atomic_write_text(path, jsonl_text(build_row(example, track) for example in examples))
                files[f"{track}/{split}.jsonl"] = sha256_file(path)
                if any(example.possible_answer for example in examples):
                    answers = (
                        {"id": e.id, "possible_answer": e.possible_answer, "functions": e.functions} for e in examples
                    )
                    atomic_write_text(staging / track / f"{split}.answers.jsonl", jsonl_text(answers))
        for relative, text in (extra_files or {}).items():
            atomic_write_text(staging / relative, text)
            files[relative] = sha256_file(staging / relative)
        manifest = {
            "source": source,
            "seed": seed,
            "sizes": {split: len(examples) for split, examples in splits.items()},
            "skipped": dict(sorted(skipped.items())),
            "ids": {split: [example.id for example in examples] for split, examples in splits.items()},
            "sha256": files,
            **(extra_manifest or {}),
        }
        _swap_in(staging, out_dir, folders)
        write_json(out_dir / "dataset.json", manifest)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def refuse_foreign_dataset(out_dir: Path, folders: list[str]) -> None:
    """The track folders about to be replaced, and `dataset.json`, must be ones this product wrote (as
    the `dataset.json` there lists them) or absent: a user's file in them is never deleted."""
    manifest_path = out_dir / "dataset.json"
    manifest = None
    if manifest_path.exists():
        try:
            manifest = json_input.loads(manifest_path.read_bytes())
        except (OSError, json_input.JsonInputError):
            pass
        if not (isinstance(manifest, dict) and isinstance(manifest.get("sha256"), dict) and "source" in manifest):
            raise SlmSwapError(f"--out-dir {out_dir}: {manifest_path} is not a dataset manifest slm-swap wrote; it is "
                               "never replaced: choose another folder or move it yourself")
    for folder in folders:
        listed = None
        if manifest is not None:  # what we wrote there: the listed files, and the answers/tasks beside the splits
            listed = {Path(name).name for name in manifest["sha256"] if Path(name).parts[0] == folder}
            listed |= {entry.name for entry in (out_dir / folder).glob("*") if is_dataset_file_name(entry.name)}
        refuse_foreign_folder(out_dir / folder, "--out-dir", listed, f"a dataset folder slm-swap wrote (listed in "
                              f"{manifest_path.name})", override=None)


def _swap_in(staging: Path, out_dir: Path, folders: list[str]) -> None:
    retired = Path(tempfile.mkdtemp(prefix=".old-", dir=out_dir))
    try:
        for folder in folders:
            target = out_dir / folder
            if target.exists():
                target.rename(retired / folder)
            (staging / folder).rename(target)
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def load_source(
    name: str, dataset_path: Path | None = None, categories: tuple[str, ...] | None = None
) -> tuple[list[Example], Counter, dict[str, Any]]:
    """(examples, skip counts, provenance) for `bfcl` (embedded) or `xlam` (the user's file)."""

    if name == "xlam":
        from slm_swap.data.xlam import load_xlam

        if not dataset_path:
            raise SlmSwapError("--source xlam needs --dataset-path FILE (the xLAM-60k JSON file)")
        examples, skipped = load_xlam(Path(dataset_path))
        return examples, skipped, {"name": "xlam", "path": str(dataset_path), "sha256": sha256_file(Path(dataset_path))}
    if name == "bfcl":
        from slm_swap.data.bfcl import BFCL_VERSION, DEFAULT_CATEGORIES, load_bfcl

        categories = tuple(categories or DEFAULT_CATEGORIES)
        examples, skipped = load_bfcl(categories)
        return examples, skipped, {"name": "bfcl", "package_version": BFCL_VERSION, "categories": list(categories)}
    raise SlmSwapError(f"unknown source {name!r}: expected bfcl or xlam")


def prepare(
    examples: list[Example],
    skipped: Counter,
    source: dict[str, Any],
    out_dir: Path,
    sizes: SplitSizes = SplitSizes(),
    seed: int = 0,
) -> dict[str, Any]:
    splits, duplicates = split_examples(examples, sizes, seed)
    if duplicates:
        skipped = skipped + Counter({"duplicate_request": duplicates})
    return write_dataset(splits, out_dir, source, skipped, seed)
