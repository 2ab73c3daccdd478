"""The floating-point precision a full-precision model computes in: `auto`, `fp32` or `bf16`, as
training takes it (`--precision`).

`auto` is bf16 where the hardware computes it natively (CUDA; CPUs with AVX512-BF16 or AMX) and fp32
elsewhere, where bf16 is emulated and slower. Inference commands default to fp32, not auto: a model's
answers differ between fp32 and bf16, and in bf16 they also depend on how a batch was formed (measured
in bench/decode_limits.py and docs/benchmarks.md, "Decoding near the machine's limit"), so an eval's numbers
would change from one machine to the next. The precision a model ran in is part of its identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

Precision = Literal["auto", "bf16", "fp32"]
PRECISION_CHOICES: tuple[str, ...] = get_args(Precision)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from the kernel's CPU flags:
    elsewhere bf16 is emulated, and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, cuda: bool) -> bool:
    """Whether `precision` (one of PRECISION_CHOICES) means bf16 on this machine."""
    if precision == "auto":
        return cuda or cpu_has_bf16()
    return precision == "bf16"


def resolve_precision(precision: str, quantization: str | None, cuda: bool) -> str:
    """"fp32" or "bf16": what a model loaded with `precision` computes in. A 4-bit model (`quantization`)
    keeps its own compute dtype: auto means fp32 there (and `LocalModel` refuses bf16)."""
    return "bf16" if quantization is None and use_bf16(precision, cuda) else "fp32"


def weights_note(quantization: str | None, precision: str) -> str | None:
    """How the weights were loaded, for a model's identity: the quantization, or bf16; None for fp32."""
    return quantization or (precision if precision != "fp32" else None)
