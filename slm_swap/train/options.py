"""How one adapter is trained beyond the seed's fixed settings, declared once: `python -m slm_swap.train`
(`TrainEntryRequest`) and `slm-swap train` (which adds where the rows and the adapter are) take these
options, and the pipeline's fine-tune passes them on (`TrainOptions.launch_args`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator

from slm_swap.core.tracks import TRACKS
from slm_swap.infra.cli_options import Request, flag_of, option
from slm_swap.llm.precision import PRECISION_CHOICES, Precision

Track = Literal[tuple(TRACKS)]  # type: ignore[valid-type]  (the track registry's names)
Sampling = Literal["group_by_length", "random"]
SAMPLING, PRECISIONS = get_args(Sampling), PRECISION_CHOICES
ONE_EPOCH = -1  # the step cap that means none: the seed's one epoch (what an omitted --max-steps gives)
STEP_CAP_HELP = "stop after N optimizer steps, N >= 1 (default: no cap, the seed's one epoch)"


def check_step_cap(steps: int) -> int:
    """A training step cap: >= 1, or ONE_EPOCH (left out). 0 would train one step at learning rate 0."""
    if steps != ONE_EPOCH and steps < 1:
        raise ValueError(f"must be >= 1, or left out for the seed's one epoch; got {steps}")
    return steps


StepCap = Annotated[int, AfterValidator(check_step_cap)]


class TrainOptions(Request):
    backend: Literal["auto", "unsloth", "bnb", "cpu"] = option(
        "auto", "auto: unsloth on CUDA if installed, else bitsandbytes on CUDA, else cpu")
    overwrite: bool = option(False, "replace an adapter already in --out")
    resume: bool = option(False, "continue from the latest checkpoint in <out>.checkpoints/")
    # Length-grouped batches waste less compute on padding than random ones (bench/train_throughput.py).
    sampling: Sampling = option("group_by_length", "batch formation")
    precision: Precision = option(
        "auto", "auto: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32; fp32 for the same numbers "
                "on every CPU")
    max_steps: StepCap = option(ONE_EPOCH, STEP_CAP_HELP)
    batch_size: int | None = option(None, "rows per device per optimizer step (default: the track's: " + ", ".join(
        f"{name} {track.train_batch_size}" for name, track in TRACKS.items()) + ")")
    save_steps: int = option(50, "checkpoint every N steps", ge=1)

    def launch_args(self) -> list[str]:
        """These options as `python -m slm_swap.train` flags: the ones that differ from the defaults."""
        args: list[str] = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name in TrainOptions.model_fields and value != field.default:
                args += [flag_of(name, field)] if value is True else [flag_of(name, field), str(value)]
        return args


# The one set of defaults: the library's `TrainRequest` takes its defaults from here too.
TRAIN_DEFAULTS = TrainOptions()


class TrainEntryRequest(TrainOptions):
    """`python -m slm_swap.train`'s options: the rows, the adapter folder, and how to train."""

    track: Track = option(..., "agent: conversation rows of `slm-swap build`, loss on the assistant turns only")
    train: Path = option(..., "train split JSONL")
    val: Path = option(..., "validation split JSONL")
    out: Path = option(..., "adapter folder, e.g. slm_swap/04_ft/adapter_<track>")
