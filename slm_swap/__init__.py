"""SLM Swap: can a local small model replace a hosted LLM for this job, and can a cheap
fine-tune close the gap? The library holds all logic; `slm_swap.app.cli` is the thin console script."""

import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend, on CPUs with AVX512-BF16, tries to fetch an optional faster 4-bit
# kernel from the Hugging Face hub at import and warns when it cannot. This tool never loads from
# the hub at run time and bitsandbytes' own CPU kernel is used instead: the warning says nothing
# the user can act on, and it would break "one line per error". Errors from that module still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
