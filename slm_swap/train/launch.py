"""The `accelerate launch ... -m slm_swap.train` command line, built in one place for
`slm-swap train` and the Prefect fine-tune subflow."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from slm_swap.infra.errors import SlmSwapError

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
        accelerate_executable(), "launch", "--config_file", str(config),
        "-m", "slm_swap.train",
        "--track", track, "--train", str(train), "--val", str(val), "--out", str(out),
        *(extra or []),
    ]
