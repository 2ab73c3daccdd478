"""The adapter's manifest (`slm_swap_adapter.json`): what a training run was asked for, kept apart
from what ran.

`requested` holds the request as it was given: the seed's fixed settings (`hyperparameters`, which
say `load_in_4bit: true` whatever the backend) and the command's options (`backend` and `precision`
may say `auto`). Every other field is a fact about the run, read after training from the model, the
trainer and the process group: the backend that loaded the model, the quantization its base really
has (null: full precision), the dtypes of its weights, the precision the trainer computed in, the
launch strategy and world size, and the LoRA and optimizer settings the adapter was trained with.
So nothing outside `requested` can claim a 4-bit load, a bf16 run or a setting that did not happen.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from slm_swap.infra.output_safety import refuse_foreign_folder
from slm_swap.llm.model_folders import CHECKPOINT_FILES

MANIFEST = "slm_swap_adapter.json"
# What training publishes into an adapter folder: PEFT's adapter (and its README), the tokenizer,
# the manifest. A folder with its manifest and nothing else is one a retrain may replace.
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",
                           "tokenizer.model", MANIFEST, *CHECKPOINT_FILES} - {"model.safetensors", "config.json"})


def refuse_foreign_adapter_folder(out: Path, flag: str = "--out") -> None:
    """Training replaces `out` whole: refuse unless it is absent, empty, or an adapter this product
    trained (its manifest there) holding nothing else, whatever --overwrite says."""
    ours = Path(out).is_dir() and (Path(out) / MANIFEST).is_file()
    refuse_foreign_folder(Path(out), flag, ADAPTER_FILES if ours else None, f"an adapter slm-swap trained (no {MANIFEST})",
                          override="--overwrite")


def requested_settings(*, backend: str, precision: str, sampling: str, max_steps: int, resume: bool,
                       hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The request as given, `auto` and all: what a caller compares to decide an adapter is the one
    it would train now (`slm_swap.app.pipeline.reusable_adapter`)."""
    return {"backend": backend, "precision": precision, "sampling": sampling, "max_steps": max_steps,
            "resume": resume, "hyperparameters": hyperparameters}


def strategy() -> tuple[str, int, str | None]:
    """(multi-device strategy, world size, process-group backend) as this process runs: `no` for one
    process, `multi_cpu` / `multi_gpu` for DDP (`accelerate launch` or `torchrun`), `deepspeed_zero2`;
    the process group's backend is `gloo` on CPU, `nccl` on GPUs, None without one."""
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()
    kind = str(state.distributed_type).split(".")[-1].lower()
    if kind == "deepspeed":
        from accelerate.state import AcceleratorState

        kind = f"deepspeed_zero{AcceleratorState().deepspeed_plugin.zero_stage}"
    group = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return kind, state.num_processes, group


def _dtypes(parameters) -> str | None:
    names = sorted({str(p.dtype).removeprefix("torch.") for p in parameters})
    return ",".join(names) or None


def weight_dtypes(model) -> dict[str, str | None]:
    """The dtypes the weights were trained in: the frozen base's (its 4-bit packed weights left out:
    `quantization` says what they are) and the trainable adapter's."""
    packed: tuple[type, ...] = ()
    if importlib.util.find_spec("bitsandbytes") is not None:
        from bitsandbytes.nn import Params4bit

        packed = (Params4bit,)
    frozen = [p for p in model.parameters() if not p.requires_grad and not isinstance(p, packed)]
    return {"base": _dtypes(frozen), "adapter": _dtypes(p for p in model.parameters() if p.requires_grad)}


def precision(trainer) -> str:
    """How the trainer computed: bf16 autocast over fp32 weights, DeepSpeed's bf16 (bf16 weights and
    gradients, an fp32 master copy in the optimizer), or plain fp32."""
    if trainer.is_deepspeed_enabled and trainer.model_wrapped.bfloat16_enabled():
        return "bf16 (deepspeed)"
    if trainer.args.bf16:
        return "bf16 autocast"
    return "fp32"


def trained_hyperparameters(model, args) -> dict[str, Any]:
    """The LoRA settings the adapter has (from its PEFT config) and the optimizer settings the
    trainer used (from its arguments)."""
    lora = model.peft_config["default"]
    return {
        "lora_r": lora.r,
        "lora_alpha": lora.lora_alpha,
        "lora_dropout": lora.lora_dropout,
        "target_modules": sorted(lora.target_modules),
        "learning_rate": args.learning_rate,
        "epochs": args.num_train_epochs,
        "max_seq_length": args.max_length,
        "per_device_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
    }


def what_ran(trainer, backend: str, quantization: str | None) -> dict[str, Any]:
    """The run's facts, in the manifest's order."""
    kind, world_size, group = strategy()
    args = trainer.args
    return {
        "backend": backend,
        "quantization": quantization,
        "weight_dtypes": weight_dtypes(trainer.model),
        "precision": precision(trainer),
        "strategy": kind,
        "world_size": world_size,
        "process_group": group,
        # Examples per optimizer step over all processes: what one "step" means in `steps`.
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        "hyperparameters": trained_hyperparameters(trainer.model, args),
        "sampling": args.train_sampling_strategy,
        "seed": args.seed,
    }
