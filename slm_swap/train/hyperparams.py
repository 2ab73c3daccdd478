"""The seed's fixed fine-tuning settings, in one place: what a run asks for. Every adapter manifest
records them as asked, under `requested`; what the run did with them (the backend's load, the
precision, the LoRA and optimizer settings the adapter really has) is recorded beside them
(`slm_swap.train.manifest`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from slm_swap.core.tracks import get_track
from slm_swap.infra.errors import SlmSwapError


@dataclass(frozen=True)
class HyperParams:
    # QLoRA's 4-bit base: the unsloth backend loads it so, bnb always loads NF4, and the cpu backend
    # trains the full-precision base whatever this says (the manifest's `quantization` says which ran).
    load_in_4bit: bool = True
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    learning_rate: float = 2e-4
    epochs: int = 1
    max_seq_length: int = 2048
    # Not fixed by the seed: each track has its own (`tracks.Track.train_batch_size`, see
    # `hyperparams_for`); 4 makes 32 v0 rows a handful of steps on 1 or 4 devices.
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_steps: float = 0  # a float < 1 is a fraction of the total steps (transformers 5)
    seed: int = 0  # the initial LoRA matrices, dropout and data order (the manifest records it)
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )

    def as_dict(self) -> dict:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


def hyperparams_for(track: str, batch_size: int | None = None) -> HyperParams:
    """The seed's fixed settings with `batch_size` rows per device per step (default: the track's)."""
    size = get_track(track).train_batch_size if batch_size is None else batch_size
    if size < 1:
        raise SlmSwapError(f"--batch-size must be >= 1, got {size}")
    return replace(HyperParams(), per_device_batch_size=size)
