"""bench/flywheel_gain.py's batches: each round replays requests no earlier batch held and the flywheel
never trained on, and the bench never empties a folder it did not make."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from slm_swap.data.examples import load_rows
from slm_swap.infra.errors import SlmSwapError

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("flywheel_gain", BENCH / "flywheel_gain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["flywheel_gain"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_batches_are_disjoint_and_never_the_flywheel_train_rows(xlam_data_dir, tmp_path):
    gain = bench_module()
    args = gain.parse_args(["--data-dir", str(xlam_data_dir), "--work", str(tmp_path / "work"), "--batch", "8",
                            "--rounds", "2"])
    gain.fresh_work(args.work)
    batches = gain.write_batches(args)
    prompts = [[row["prompt"] for row in load_rows(d / "toolcall" / "test.jsonl")] for d in batches]
    assert [len(p) for p in prompts] == [8, 8, 8]
    assert len({p for batch in prompts for p in batch}) == 24
    trained = {row["prompt"] for row in load_rows(args.work / "data" / "toolcall" / "train.jsonl")}
    assert trained and not trained & {p for batch in prompts for p in batch}


def test_too_few_rows_is_one_line(xlam_data_dir, tmp_path):
    gain = bench_module()
    args = gain.parse_args(["--data-dir", str(xlam_data_dir), "--work", str(tmp_path / "w"), "--batch", "20"])
    gain.fresh_work(args.work)
    with pytest.raises(SlmSwapError, match="32 train\\+test rows, 60 needed"):
        gain.write_batches(args)


def test_a_foreign_folder_is_never_emptied(tmp_path):
    gain = bench_module()
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SlmSwapError, match="not made by this bench"):
        gain.fresh_work(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"
