"""How the model is loaded for training, chosen by what the machine has.

- `unsloth`: CUDA with Unsloth installed: `FastLanguageModel` QLoRA (4-bit base, LoRA on top).
- `bnb`:     transformers + bitsandbytes NF4 + PEFT (classic QLoRA): the `auto` choice on CUDA
             without Unsloth, and on CPU when asked for (bitsandbytes 0.50 runs NF4 on CPU too;
             CI trains with it there).
- `cpu`:     the `auto` choice without CUDA: the base in full precision + PEFT LoRA (faster than
             4-bit on a CPU; the tests and the demo).

Under `accelerate launch` or `torchrun` each process loads its own copy on its own GPU
(`device_map={"": local rank}`); DeepSpeed ZeRO-2 (from the accelerate config) then shards optimizer state and gradients.
On CPU, several processes train data-parallel over gloo (`accelerate_config/cpu_2proc.yaml`, or
`torchrun --nproc_per_node=2`).
Unsloth, NCCL and the CUDA kernels cannot run on the CPU-only machines this project is developed on:
`scripts/gpu_check.sh` exercises them on a GPU machine (docs/gpu.md says what has run).

Every backend seeds Python, NumPy and torch from `hp.seed` before it creates the model and the
LoRA matrices (`seed_everything`), so the same seed gives the same initial adapter on every run
and every process; `determinism` says what that buys on the device the run used.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.quantization import compute_dtype, nf4_config, require_bitsandbytes
from slm_swap.train.hyperparams import HyperParams

BACKENDS = ("auto", "unsloth", "bnb", "cpu")


def choose_backend(requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise SlmSwapError(f"unknown backend {requested!r}: expected one of {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if not cuda:
            return "cpu"
        return "unsloth" if importlib.util.find_spec("unsloth") else "bnb"
    if requested == "unsloth" and not cuda:
        raise SlmSwapError("--backend unsloth needs a CUDA GPU (Unsloth is CUDA-only) and this machine has none: "
                           "use --backend bnb for 4-bit QLoRA on CPU, or --backend cpu")
    if requested == "unsloth" and not importlib.util.find_spec("unsloth"):
        raise SlmSwapError("--backend unsloth: the unsloth package is not installed (pip install -e '.[gpu]'); "
                           "--backend bnb trains the same QLoRA without it")
    if requested == "bnb":
        require_bitsandbytes("--backend bnb", "use --backend cpu (full-precision LoRA)")
    return requested


def local_device_map() -> dict[str, int | str]:
    """Everything on this process's device: one full model copy per rank (DDP / ZeRO-2 style)."""
    if not torch.cuda.is_available():
        return {"": "cpu"}
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def quantization_of(model) -> str | None:
    """The quantization the loaded model really has (`nf4`, `fp4`), None in full precision."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    from bitsandbytes.nn import Linear4bit

    kinds = {module.weight.quant_type for module in model.modules() if isinstance(module, Linear4bit)}
    return ",".join(sorted(kinds)) or None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) before the model is built.

    LoRA's A matrices are drawn from torch's generator when the adapter is created, and the
    trainer only seeds later, when it is built: without this, two runs start from different
    adapters. Not `device_specific`: under `accelerate launch` every process must draw the same
    initial adapter, so every process gets the same seed.
    """
    from accelerate.utils import set_seed

    set_seed(seed, device_specific=False)


def determinism(on_cuda: bool) -> dict[str, Any]:
    """What the manifest says about repeating this run bit for bit with the same seed."""
    facts = {"torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if not on_cuda:
        return {
            "device": "cpu",
            "deterministic": True,
            **facts,
            "cpu_threads": torch.get_num_threads(),
            # What tests/test_reproducible_training.py checks (and tests/test_train.py for the 4-bit
            # backend on CPU). Float sums may be split differently
            # with another thread count or library version, so those are part of "the same run".
            "note": "bitwise repeatable: the same seed, data, settings, library versions and thread count "
                    "give identical adapter weights and losses on this machine",
        }
    return {
        "device": "cuda",
        "deterministic": False,
        **facts,
        # torch's deterministic-algorithms switch stays off: it raises on ops with no deterministic
        # CUDA kernel, and it would not cover bitsandbytes or Unsloth anyway.
        "note": "not guaranteed: the seed fixes the initial adapter, dropout and data order, but some CUDA "
                "kernels (e.g. the memory-efficient attention backward) accumulate with atomic adds, so sums "
                "can round differently from run to run, and the bitsandbytes 4-bit and Unsloth Triton kernels "
                "are outside torch's deterministic-algorithms switch; this project has not compared two CUDA runs",
    }


def lora_config(hp: HyperParams):
    from peft import LoraConfig

    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=list(hp.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_for_training(backend: str, model_path: Path, hp: HyperParams):
    """(PEFT-wrapped model with trainable LoRA weights, tokenizer) for `backend`."""
    seed_everything(hp.seed)
    if backend == "unsloth":
        return _load_unsloth(model_path, hp)
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if backend == "bnb":
        from peft import prepare_model_for_kbit_training

        cuda = torch.cuda.is_available()
        model = AutoModelForCausalLM.from_pretrained(
            model_path, quantization_config=nf4_config(cuda, training=True), dtype=compute_dtype(cuda),
            device_map=local_device_map(),
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return get_peft_model(model, lora_config(hp)), tokenizer


def _load_unsloth(model_path: Path, hp: HyperParams):
    # Imported here only: `import unsloth` raises on machines without a GPU, and it patches
    # transformers/TRL on import, which must not happen for the other backends.
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(model_path),
        max_seq_length=hp.max_seq_length,
        load_in_4bit=hp.load_in_4bit,
        dtype=None,  # bf16 on Ampere (RTX 3090)
        device_map=local_device_map(),
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=list(hp.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=hp.seed,  # Unsloth's own seed for the LoRA matrices it creates
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
