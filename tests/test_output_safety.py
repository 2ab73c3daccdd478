"""Outputs never overwrite inputs, `--force`/`--overwrite` only ever replace what slm-swap wrote, and a
full disk names the file (issue 29). Every refusal is one line, exit 2, before anything is written or
loaded, with the user's files byte for byte as they were."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.output_safety import refuse_foreign_folder, refuse_overwriting_inputs
from slm_swap.llm.model_folders import MARKER_FILE, refuse_foreign_dir, write_marker

FIXTURE = Path(__file__).parent / "fixtures" / "xlam_sample.json"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], *expected: str) -> str:
    """Exit 2 with exactly one error line holding each of `expected`."""
    assert main(argv) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("slm-swap: error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data_dir(tmp_path):
    out = tmp_path / "data"
    assert main(["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "8", "--val", "2",
                 "--test", "4", "--out-dir", str(out)]) == 0
    return out


# --- eval: --out and the files written beside it ----------------------------------------------------


def eval_argv(data_dir: Path, out: Path, track: str = "structured") -> list[str]:
    return ["eval", "--track", track, "--model-kind", "azure", "--data-dir", str(data_dir), "--out", str(out)]


@pytest.mark.parametrize("make_out", [
    pytest.param(lambda d, tmp: d / "structured" / "test.jsonl", id="the split itself"),
    pytest.param(lambda d, tmp: d / "structured" / ".." / "structured" / "test.jsonl", id="the split, by another path"),
    pytest.param(lambda d, tmp: d / "toolcall" / "train.jsonl", id="another split of the dataset"),
    pytest.param(lambda d, tmp: d / "dataset.json", id="the dataset manifest"),
    pytest.param(lambda d, tmp: d / "structured" / "test.answers.jsonl", id="a dataset file name in the split folder"),
])
def test_eval_refuses_an_out_that_is_part_of_its_dataset(data_dir, tmp_path, capsys, make_out):
    before = snapshot(data_dir)
    out = make_out(data_dir, tmp_path)
    refused(capsys, eval_argv(data_dir, out), f"--out {out}")
    assert snapshot(data_dir) == before


def test_eval_refuses_a_symlink_or_hard_link_to_its_split(data_dir, tmp_path, capsys):
    split = data_dir / "structured" / "test.jsonl"
    before = snapshot(data_dir)
    (tmp_path / "link.json").symlink_to(split)
    os.link(split, tmp_path / "hard.json")
    for out in (tmp_path / "link.json", tmp_path / "hard.json"):
        refused(capsys, eval_argv(data_dir, out), f"--out {out}", str(split))
    assert snapshot(data_dir) == before


# --- prepare, capture, filter, build: folders they replace and files they write -------------------


def test_prepare_refuses_a_dataset_path_inside_a_folder_it_replaces(tmp_path, capsys):
    out = tmp_path / "data"
    (out / "structured").mkdir(parents=True)
    source = out / "structured" / "xlam.json"
    shutil.copy(FIXTURE, source)
    before = snapshot(out)
    refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(source), "--out-dir", str(out)],
            f"--out-dir {out / 'structured'}", str(source))
    assert snapshot(out) == before


def test_prepare_refuses_a_dataset_path_that_is_its_manifest(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    source = out / "dataset.json"
    shutil.copy(FIXTURE, source)
    before = snapshot(out)
    refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(source), "--out-dir", str(out)],
            f"--out-dir {source}")
    assert snapshot(out) == before


def test_capture_refuses_an_out_that_is_its_dataset(tmp_path, capsys):
    source = tmp_path / "xlam.json"
    shutil.copy(FIXTURE, source)
    refused(capsys, ["capture", "--source", "xlam", "--dataset-path", str(source), "--out", str(source)],
            f"--out {source}", "--dataset-path")
    assert source.read_bytes() == FIXTURE.read_bytes()


def test_filter_refuses_to_write_over_the_trajectories_it_reads(tmp_path, capsys):
    """Filtering an accepted file again, with the default --out-dir (its folder), would overwrite it."""
    accepted = tmp_path / "accepted.jsonl"
    accepted.write_text('{"request_id": "r1"}\n')
    refused(capsys, ["filter", "--trajectories", str(accepted)], f"--out-dir {accepted}", "--trajectories")
    assert accepted.read_text() == '{"request_id": "r1"}\n'


def test_build_refuses_an_out_dir_whose_folders_hold_its_input(tmp_path, capsys):
    data = tmp_path / "distill"
    (data / "agent").mkdir(parents=True)
    accepted = data / "agent" / "accepted.jsonl"
    accepted.write_text('{"request_id": "r1"}\n')
    refused(capsys, ["build", "--accepted", str(accepted), "--out-dir", str(data)], f"--out-dir {data / 'agent'}",
            str(accepted))
    assert accepted.read_text() == '{"request_id": "r1"}\n'


# --- train: the adapter folder is replaced whole ----------------------------------------------------


@pytest.fixture
def train_env(tmp_path, monkeypatch, data_dir):
    """Settings that pass train's other checks (a base model folder with a config.json)."""
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setenv("SLM_MODEL_PATH", str(model))
    return data_dir


def train_argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--track", "structured", "--data-dir", str(data_dir), "--out", str(out), *extra]


def test_train_overwrite_never_replaces_a_folder_of_the_users(train_env, tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    refused(capsys, train_argv(train_env, out, "--overwrite"), f"--out {out}", "is not an adapter slm-swap trained")
    assert (out / "thesis.txt").read_text() == "three years of work"


def test_train_overwrite_never_deletes_a_users_file_inside_our_adapter(train_env, tmp_path, capsys):
    out = tmp_path / "adapter"
    out.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "slm_swap_adapter.json"):
        (out / name).write_text("{}")
    (out / "notes.md").write_text("mine")
    refused(capsys, train_argv(train_env, out, "--overwrite"), f"--out {out}", "notes.md")
    assert (out / "notes.md").read_text() == "mine"


def test_train_refuses_an_adapter_folder_that_holds_its_rows(train_env, capsys):
    out = train_env / "structured"
    before = snapshot(train_env)
    refused(capsys, train_argv(train_env, out, "--overwrite"), f"--out {out}", str(out / "train.jsonl"))
    assert snapshot(train_env) == before


# --- models fetch: --force replaces only our own folder, and is refused before converting -----------


@pytest.fixture
def no_conversion(monkeypatch):
    """Fail the test if a refusal comes after the 40 s conversion has started."""
    from slm_swap.llm import embedded

    def converting(*_args, **_kwargs):
        raise AssertionError("the conversion started before the destination was checked")

    monkeypatch.setattr(embedded, "locate_embedded_gguf", converting)
    monkeypatch.setattr(embedded, "load_from_gguf", converting)


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "forced"])
def test_fetch_never_replaces_a_folder_of_the_users(tmp_path, capsys, no_conversion, force):
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "thesis.txt").write_text("three years of work")
    refused(capsys, ["models", "fetch", "--dest", str(dest), *force], f"--dest {dest}", "not a slm-swap model folder")
    assert snapshot(dest) == {"thesis.txt": b"three years of work"}


def test_fetch_force_never_deletes_a_users_file_inside_our_model_folder(tmp_path, capsys, no_conversion):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    write_marker(dest, {"kind": "embedded"})
    (dest / "thesis.txt").write_text("three years of work")
    refused(capsys, ["models", "fetch", "--dest", str(dest), "--force"], f"--dest {dest}", "thesis.txt")
    assert (dest / "thesis.txt").read_text() == "three years of work"


def test_fetch_under_a_file_is_refused_before_converting(tmp_path, capsys, no_conversion):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("mine")
    refused(capsys, ["models", "fetch", "--dest", str(blocker / "model")], "--dest", f"{blocker} is a file")
    assert blocker.read_text() == "mine"


def test_our_own_model_folder_may_be_replaced(tmp_path):
    """What --force is for: a folder slm-swap wrote (its marker lists every file) is replaceable, as is
    one marked before markers listed files, holding only checkpoint files."""
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text("{}")
    (ours / "model.safetensors").write_bytes(b"")
    write_marker(ours, {"kind": "tiny"})
    assert json.loads((ours / MARKER_FILE).read_text())["files"] == ["config.json", "model.safetensors", MARKER_FILE]
    refuse_foreign_dir(ours, force=True)  # another kind of ours: replaceable when forced
    with pytest.raises(SlmSwapError, match="pass --force"):
        refuse_foreign_dir(ours, force=False)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    (legacy / MARKER_FILE).write_text(json.dumps({"schema": 1, "kind": "embedded"}))
    refuse_foreign_dir(legacy, force=True)
    (legacy / "notes.txt").write_text("mine")
    with pytest.raises(SlmSwapError, match="notes.txt"):
        refuse_foreign_dir(legacy, force=True)


# --- a full disk -------------------------------------------------------------------------------------


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "prompts.json"
    out.write_text("the previous export")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    line = refused(capsys, ["prompts", "export", "--out", str(out)])
    assert line == f"slm-swap: error: {out}: {os.strerror(errno.ENOSPC)}"
    assert out.read_text() == "the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json"]  # no temporary file left


def test_a_full_disk_during_prepare_names_the_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "data"
    real_fsync = os.fsync
    calls = []

    def full_after_three(fd):
        calls.append(fd)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_three)
    line = refused(capsys, ["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "8", "--val", "2",
                            "--test", "4", "--out-dir", str(out)], os.strerror(errno.ENOSPC))
    assert line.startswith(f"slm-swap: error: {out}") and line.count(".jsonl") == 1, line
    assert not any(out.rglob("*.jsonl"))  # nothing half-published: the split files never reached their place


# --- the rule itself, over generated layouts ----------------------------------------------------------


NAMES = st.sampled_from(["a", "b", "train.jsonl", "test.jsonl", "x.json", "dataset.json", "sub"])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(NAMES, min_size=1, max_size=3), via_link=st.booleans())
def test_an_output_that_is_an_input_is_always_refused(tmp_path_factory, parts, via_link):
    root = tmp_path_factory.mktemp("layout")
    source = root.joinpath(*parts)
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("input")
    out = source
    if via_link:
        out = root / "link"
        out.symlink_to(source.parent, target_is_directory=True)
        out = out / source.name
    with pytest.raises(SlmSwapError, match="is the input"):
        refuse_overwriting_inputs([("--out", out)], [("--in", source)])
    with pytest.raises(SlmSwapError, match="holds the input"):
        refuse_overwriting_inputs([("--out-dir", root)], [("--in", source)])
    assert source.read_text() == "input"


def test_separate_outputs_pass(tmp_path):
    data = tmp_path / "data"
    (data / "structured").mkdir(parents=True)
    (data / "structured" / "test.jsonl").write_text("")
    refuse_overwriting_inputs([("--out", data / "metrics.json"), ("--out", tmp_path / "train.jsonl")],
                              [("--data-dir", data / "structured" / "test.jsonl")], [("--data-dir", data)])
    refuse_foreign_folder(tmp_path / "absent", "--dest", None, "ours")
    (tmp_path / "empty").mkdir()
    refuse_foreign_folder(tmp_path / "empty", "--dest", None, "ours")


def test_prepare_never_deletes_a_users_file_in_a_track_folder(tmp_path, capsys):
    """`prepare` replaces the track folders whole: one holding a file it did not write is refused,
    and so is a dataset.json it did not write."""
    out = tmp_path / "data"
    (out / "structured").mkdir(parents=True)
    (out / "structured" / "thesis.txt").write_text("mine")
    argv = ["prepare", "--source", "xlam", "--dataset-path", str(FIXTURE), "--train", "4", "--val", "2",
            "--test", "2", "--out-dir", str(out)]
    assert main(argv) == 2
    assert "holds files and is not a dataset folder slm-swap wrote" in capsys.readouterr().err
    assert (out / "structured" / "thesis.txt").read_text() == "mine"
    (out / "structured" / "thesis.txt").unlink()
    assert main(argv) == 0  # ours now: a second prepare replaces it, keeping what the manifest lists
    assert main(argv) == 0
    (out / "toolcall" / "notes.md").write_text("mine too")
    assert main(argv) == 2 and (out / "toolcall" / "notes.md").exists()
    (out / "toolcall" / "notes.md").unlink()
    (out / "dataset.json").write_text('{"mine": true}')
    assert main(argv) == 2 and json.loads((out / "dataset.json").read_text()) == {"mine": True}


def test_eval_refuses_an_out_inside_its_adapter_or_model_folder(xlam_data_dir, tiny_adapter_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    before = (adapter / "adapter_config.json").read_bytes()
    assert main(["eval", "--track", "toolcall", "--model-kind", "slm", "--data-dir", str(xlam_data_dir),
                 "--adapter", str(adapter), "--out", str(adapter / "adapter_config.json")]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    assert (adapter / "adapter_config.json").read_bytes() == before
