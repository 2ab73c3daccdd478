"""The `accelerate launch ... -m slm_swap.train` command line, built and run in one place for
`slm-swap train` and the Prefect fine-tune subflow.

`run_training` shows the launch's output live and turns a failure into one `SlmSwapError` line: the
training process's own error line (`slm_swap.train: error: ...`, exit 2) when it printed one. What
the launcher prints after it is held back: accelerate re-raises a failed child's exit status as a
traceback of its own (`CalledProcessError`, or torch elastic's `ChildFailedError` with several
processes), which says nothing the child's line did not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from slm_swap.infra.errors import SlmSwapError

CHILD_ERROR_PREFIX = "slm_swap.train: error: "  # what `slm_swap.train.entry` prints before it exits 2

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIG_DIR = REPO_ROOT / "accelerate_config"
GPU_CONFIG = ACCELERATE_CONFIG_DIR / "phi4_4gpu.yaml"
CPU_CONFIG = ACCELERATE_CONFIG_DIR / "cpu.yaml"


def default_accelerate_config() -> Path:
    """The 4-GPU DeepSpeed config where CUDA is present, the CPU config elsewhere."""
    import torch

    return GPU_CONFIG if torch.cuda.is_available() else CPU_CONFIG


def accelerate_executable() -> str:
    # The accelerate beside this interpreter, so a venv's launcher is used even when not on PATH.
    beside = Path(sys.executable).with_name("accelerate")
    found = str(beside) if beside.exists() else shutil.which("accelerate")
    if not found:
        raise SlmSwapError("accelerate is not installed in this environment (pip install -e .)")
    return found


def launch_command(
    *,
    track: str,
    train: Path,
    val: Path,
    out: Path,
    accelerate_config: Path | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    config = Path(accelerate_config) if accelerate_config else default_accelerate_config()
    if not config.is_file():
        raise SlmSwapError(f"accelerate config {config}: no such file")
    return [
        # --quiet: accelerate's single-process and DeepSpeed launchers exit 1 without a traceback.
        accelerate_executable(), "launch", "--quiet", "--config_file", str(config),
        "-m", "slm_swap.train",
        "--track", track, "--train", str(train), "--val", str(val), "--out", str(out),
        *(extra or []),
    ]


def _to_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _segments(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's output as it comes, cut after each newline or carriage return (a progress bar's
    redraw is a segment of its own, so it shows at once)."""
    pending = b""
    while chunk := os.read(stream.fileno(), 65536):
        *complete, pending = re.split(rb"(?<=[\r\n])", pending + chunk)
        yield from complete
    if pending:
        yield pending


def run_training(command: list[str], *, env: dict[str, str] | None = None, echo: Callable[[str], None] = _to_stderr,
                 merge_stdout: bool = False) -> None:
    """Run the launch `command`; its stderr (and stdout with `merge_stdout`) goes to `echo` as it
    comes. Raises `SlmSwapError("training failed: ...")` when it fails (see the module's docstring).
    `env` adds variables to this process's environment for the launch."""
    process = subprocess.Popen(command, env={**os.environ, **env} if env else None,
                               stdout=subprocess.PIPE if merge_stdout else None,
                               stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE)
    child_error: str | None = None
    try:
        for segment in _segments(process.stdout if merge_stdout else process.stderr):  # type: ignore[arg-type]
            text = segment.decode(errors="replace")
            # Anywhere in the segment: after a progress bar's last redraw ("\r 40%|...|"), the
            # child's line continues the bar's segment.
            at = text.find(CHILD_ERROR_PREFIX) if child_error is None else -1
            if at >= 0:
                text, child_error = text[:at], text[at + len(CHILD_ERROR_PREFIX):].strip()
            if child_error is None or at > 0:
                echo(text)
        returncode = process.wait()
    finally:
        if process.poll() is None:  # interrupted: the launcher passes the signal on to its processes
            process.terminate()
            process.wait()
    if returncode != 0:
        raise SlmSwapError(f"training failed: {child_error}" if child_error else
                           f"training failed: {Path(command[0]).name} {command[1]} exited with status {returncode}")
