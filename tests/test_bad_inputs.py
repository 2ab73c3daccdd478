"""Bad input gets one line naming the file, row or setting at fault, exit 2, and nothing written:
dataset content that cannot be scored, output paths that cannot be written, flags out of range,
broken adapters, a broken functions file. Each is refused before any request is sent."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import error_lines
from openai_stub import OpenAIStub
from slm_swap.app.cli import main

SECRET = "sk-test-SECRET-bad-inputs-77"


@pytest.fixture
def stub(monkeypatch):
    """A hosted endpoint that records every request: bad input must send none."""
    with OpenAIStub(lambda messages: "ok") as server:
        for key in ("HOSTED_BASE_URL", "HOSTED_MODEL", "HOSTED_API_KEY", "AZURE_DEPLOYMENT"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AZURE_ENDPOINT", f"{server.url}/openai/deployments/d")
        monkeypatch.setenv("AZURE_API_KEY", SECRET)
        yield server


@pytest.fixture
def data_dir(xlam_data_dir, tmp_path):
    """A private copy of the prepared xLAM dataset, safe to corrupt."""
    copy = tmp_path / "data"
    shutil.copytree(xlam_data_dir, copy)
    return copy


def eval_cmd(data_dir, out, track="toolcall", kind="azure", *extra):
    return ["eval", "--track", track, "--model-kind", kind, "--split", "test", "--data-dir", str(data_dir),
            "--out", str(out), *extra]


def refused(capsys, argv, *expected: str) -> str:
    """Run the command; it must exit 2 with exactly one error line containing each expected text."""
    assert main(argv) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in lines[0] and SECRET not in lines[0]
    return lines[0]


def rewrite_row(path: Path, number: int, change) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[number - 1] = change(rows[number - 1])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# -- dataset content that cannot be scored ------------------------------------------------------

def test_structured_completion_that_is_not_json(stub, data_dir, tmp_path, capsys):
    rows = data_dir / "structured" / "test.jsonl"
    rewrite_row(rows, 3, lambda row: {**row, "completion": "{not json"})
    out = tmp_path / "out.json"
    refused(capsys, eval_cmd(data_dir, out, "structured"), f"{rows}: row 3: the structured completion is not JSON")
    assert not stub.requests and not out.exists()


def test_toolcall_completion_that_is_not_one_wrapper(stub, data_dir, tmp_path, capsys):
    rows = data_dir / "toolcall" / "test.jsonl"
    rewrite_row(rows, 5, lambda row: {**row, "completion": row["completion"] + row["completion"]})
    out = tmp_path / "out.json"
    refused(capsys, eval_cmd(data_dir, out), f"{rows}: row 5: the tool-call completion is not exactly one <tool_call")
    assert not stub.requests and not out.exists()


def answers_file(data_dir: Path) -> Path:
    """BFCL-style answers beside the xLAM split (xLAM itself has none)."""
    path = data_dir / "toolcall" / "test.answers.jsonl"
    rows = [json.loads(line) for line in (data_dir / "toolcall" / "test.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({"id": str(i), "possible_answer": {"f": {}}, "functions": []}) + "\n"
                            for i in range(len(rows))))
    return path


def test_answers_row_without_possible_answer(stub, data_dir, tmp_path, capsys):
    answers = answers_file(data_dir)
    rewrite_row(answers, 2, lambda row: {"id": row["id"], "functions": []})
    refused(capsys, eval_cmd(data_dir, tmp_path / "out.json"), f"{answers}: row 2: expected an object with 'possible_answer'")
    assert not stub.requests


def test_answers_file_with_an_invalid_json_line(stub, data_dir, tmp_path, capsys):
    answers = answers_file(data_dir)
    lines = answers.read_text().splitlines()
    lines[3] = lines[3][:-5]
    answers.write_text("\n".join(lines) + "\n")
    refused(capsys, eval_cmd(data_dir, tmp_path / "out.json"), f"{answers}:4: not valid JSON")
    assert not stub.requests


# -- file-system errors --------------------------------------------------------------------------

@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder no process can add files to: permission bits, or (for root, who ignores them) the
    immutable attribute. Skips where neither holds."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    immutable = False
    try:
        probe = path / ".probe"
        try:
            probe.touch()
            probe.unlink()
            immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("cannot make a read-only folder on this machine")
        except PermissionError:
            pass
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o755)


@contextlib.contextmanager
def full_disk(path: Path):
    """A tiny tmpfs filled to the last byte. Skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a small filesystem on this machine")
    try:
        with open(path / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_out_in_a_read_only_folder(stub, data_dir, tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as folder:
        out = folder / "out.json"
        refused(capsys, eval_cmd(data_dir, out), f"--out {out}: cannot write in {folder}")
        assert list(folder.iterdir()) == []
    assert not stub.requests


def test_out_on_a_full_disk(stub, data_dir, tmp_path, capsys):
    with full_disk(tmp_path / "full") as folder:
        out = folder / "out.json"
        refused(capsys, eval_cmd(data_dir, out), f"--out {out}: cannot write in", "No space left on device")
        assert sorted(p.name for p in folder.iterdir()) == ["filler"]
    assert not stub.requests


def test_out_that_is_a_folder_or_under_a_file(stub, data_dir, tmp_path, capsys):
    folder = tmp_path / "a-folder.json"
    folder.mkdir()
    refused(capsys, eval_cmd(data_dir, folder), f"--out {folder}: is a folder, not a file")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused(capsys, eval_cmd(data_dir, a_file / "sub" / "out.json"), f"{a_file} is a file, not a folder")
    assert a_file.read_text() == "x" and not stub.requests


def test_prepare_into_a_read_only_folder(tmp_path, capsys):
    with read_only_folder(tmp_path / "ro") as folder:
        refused(capsys, ["prepare", "--source", "bfcl", "--out-dir", str(folder)], f"--out-dir {folder}: cannot write in {folder}")
        assert list(folder.iterdir()) == []


# -- flags and settings --------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (["--timeout", "-1"], "--timeout must be a number of seconds > 0 and <= 86400, got -1.0"),
    (["--timeout", "0"], "--timeout must be a number of seconds > 0"),
    (["--max-retries", "-1"], "--max-retries must be >= 0, got -1"),
    (["--max-errors", "-2"], "--max-errors must be >= 0, got -2"),
])
def test_hosted_flags_out_of_range(stub, data_dir, tmp_path, capsys, flags, message):
    out = tmp_path / "out.json"
    refused(capsys, eval_cmd(data_dir, out, "toolcall", "azure", *flags), message)
    assert not stub.requests and not out.exists()


@pytest.mark.parametrize("size", ["0", "-3"])
def test_batch_size_must_be_positive(data_dir, tmp_path, capsys, monkeypatch, size):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tmp_path / "no-model-here"))  # refused before any load
    refused(capsys, eval_cmd(data_dir, tmp_path / "out.json", "toolcall", "slm", "--batch-size", size),
            f"--batch-size must be >= 1, got {size}")


@pytest.mark.parametrize("size", ["0", "-3"])
def test_train_batch_size_must_be_positive(data_dir, tmp_path, capsys, size):
    refused(capsys, ["train", "--track", "toolcall", "--data-dir", str(data_dir), "--batch-size", size,
                     "--out", str(tmp_path / "a")], f"--batch-size must be >= 1, got {size}")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-wait-ms", "-5"], "--batch-wait-ms must be between 0 and 60000, got -5.0"),
    (["--batch-wait-ms", "nan"], "--batch-wait-ms must be between 0 and 60000, got nan"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be between 1 and 2048, got 0"),
])
def test_serve_flags_out_of_range_are_refused_before_the_model_loads(tmp_path, capsys, flags, message):
    # Before this check `serve --batch-size 0` started listening and failed on the first request.
    refused(capsys, ["serve", "--model-path", str(tmp_path / "no-model-here"), "--port", "1", *flags], message)


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://host/x", "https://"])
def test_azure_endpoint_that_is_not_a_url(data_dir, tmp_path, capsys, monkeypatch, endpoint):
    monkeypatch.delenv("HOSTED_BASE_URL", raising=False)
    monkeypatch.setenv("AZURE_ENDPOINT", endpoint)
    monkeypatch.setenv("AZURE_DEPLOYMENT", "d")
    monkeypatch.setenv("AZURE_API_KEY", SECRET)
    refused(capsys, eval_cmd(data_dir, tmp_path / "out.json"), "AZURE_ENDPOINT must be an http(s) URL", repr(endpoint))


# -- adapters and functions files ----------------------------------------------------------------

@pytest.mark.parametrize("breakage,message", [
    (lambda d: (d / "adapter_config.json").write_text("{broken"), "adapter_config.json: not valid JSON"),
    (lambda d: (d / "adapter_config.json").write_text("{}"), "adapter_config.json: not a valid PEFT adapter config (no 'peft_type')"),
    (lambda d: (d / "adapter_config.json").write_text('{"peft_type": "NOPE"}'), "adapter_config.json: not a valid PEFT adapter config"),
    (lambda d: (d / "adapter_model.safetensors").write_bytes(b"garbage, not tensors"), "adapter_model.safetensors: adapter weights are not a readable safetensors file"),
    (lambda d: (d / "adapter_model.safetensors").unlink(), "no adapter weights"),
])
def test_broken_adapter_is_refused_before_the_base_model_loads(tiny_adapter_dir, data_dir, tmp_path, capsys, monkeypatch,
                                                                breakage, message):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    breakage(adapter)
    # No base model at SLM_MODEL_PATH: reaching the base model's load would say so instead.
    monkeypatch.setenv("SLM_MODEL_PATH", str(tmp_path / "no-model-here"))
    refused(capsys, eval_cmd(data_dir, tmp_path / "out.json", "toolcall", "slm", "--adapter", str(adapter)), message)


def test_adapter_of_another_base_model_is_one_line(tiny_adapter_dir, embedded_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SLM_MODEL_PATH", str(embedded_model_dir))  # the tiny model's adapter does not fit it
    refused(capsys, eval_cmd(data_dir, tmp_path / "out.json", "toolcall", "slm", "--adapter", str(tiny_adapter_dir)),
            f"--adapter {tiny_adapter_dir}: cannot be applied to {embedded_model_dir}")


@pytest.mark.parametrize("content,message", [
    (None, "no such functions file"),
    ("[{", "not valid JSON"),
    ('{"name": "f"}', "expected a JSON list of function signatures"),
    ('["f"]', "expected a JSON list of function signatures"),
])
def test_infer_functions_missing_or_malformed(stub, tmp_path, capsys, content, message):
    functions = tmp_path / "functions.json"
    if content is not None:
        functions.write_text(content)
    refused(capsys, ["infer", "--track", "toolcall", "--model-kind", "azure", "--text", "hi", "--functions", str(functions)],
            str(functions), message)
    assert not stub.requests


# -- training backends ---------------------------------------------------------------------------

def test_unsloth_without_cuda_says_which_backend_would_work(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(capsys, ["train", "--track", "toolcall", "--backend", "unsloth", "--out", str(tmp_path / "a")],
            "--backend unsloth needs a CUDA GPU", "use --backend bnb for 4-bit QLoRA on CPU")
    assert not (tmp_path / "a").exists()


def test_bnb_without_bitsandbytes_says_which_backend_would_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    refused(capsys, ["train", "--track", "toolcall", "--backend", "bnb", "--out", str(tmp_path / "a")],
            "--backend bnb needs the bitsandbytes package", "use --backend cpu")
    assert not (tmp_path / "a").exists()
