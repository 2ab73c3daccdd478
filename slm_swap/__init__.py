"""SLM Swap: can a local small model replace a hosted LLM for this job, and can a cheap
fine-tune close the gap? The library holds all logic; `slm_swap.cli` is the thin console script."""

__version__ = "0.1.0"
