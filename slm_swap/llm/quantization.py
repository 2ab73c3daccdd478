"""NF4 4-bit loading (QLoRA's), the one place inference and training take its settings from.

bitsandbytes 0.50 runs NF4 on CPU as well as on CUDA, so a 4-bit load works on every machine:
on CUDA the 4-bit matmuls compute in bfloat16 (Ampere and newer, e.g. the RTX 3090), on CPU in
float32 (bfloat16 is emulated on most CPUs, and slower).
"""

from __future__ import annotations

import importlib.util

import torch

from slm_swap.infra.errors import SlmSwapError

NF4 = "nf4"  # what manifests and metrics record for a 4-bit load; None means full precision


def require_bitsandbytes(what: str, instead: str) -> None:
    """One line saying what is missing and what would work without it."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SlmSwapError(f"{what} needs the bitsandbytes package, which is not installed "
                           f"(pip install bitsandbytes==0.50.2); {instead}")


def resolve_quantization(load_in_4bit: bool | None) -> str | None:
    """`NF4` or None (full precision) for a `--load-in-4bit` setting; None means 4-bit with CUDA only."""
    return NF4 if (torch.cuda.is_available() if load_in_4bit is None else load_in_4bit) else None


def compute_dtype(cuda: bool) -> torch.dtype:
    return torch.bfloat16 if cuda else torch.float32


def nf4_config(cuda: bool, training: bool = False):
    """transformers' `BitsAndBytesConfig` for NF4 with double quantization (the QLoRA recipe)."""
    from transformers import BitsAndBytesConfig

    # For training, the packed weights are stored in the compute dtype so that every parameter a
    # distributed wrapper shards has one dtype; inference keeps bitsandbytes' default (uint8).
    storage = {"bnb_4bit_quant_storage": compute_dtype(cuda)} if training else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype(cuda),
        bnb_4bit_use_double_quant=True,
        **storage,
    )
