"""A tiny random model with the embedded model's tokenizer, for fast tests and benchmarks.

    from slm_swap.llm.tiny_model import build_tiny_model
    build_tiny_model(fetch_embedded_model(), tmp_path / "tiny")   # ~3M parameters, seconds to train
"""

from __future__ import annotations

from pathlib import Path

from slm_swap.infra.fileio import publish_dir, staging_dir
from slm_swap.llm.model_folders import is_marked, refuse_foreign_dir, write_marker

# Tiny model shape: small enough that a few training steps take seconds on 2 CPU cores.
_TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def build_tiny_model(tokenizer_dir: Path, dest: Path, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama causal LM with ``tokenizer_dir``'s tokenizer at ``dest``.

    Same vocabulary, chat template and generation config as the embedded model, but only
    ~3M parameters (hidden 64, 2 layers), so tests can train and evaluate in seconds. The
    weights depend only on ``seed``. An existing ``dest`` is replaced.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer_dir, dest = Path(tokenizer_dir), Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    try:
        generation_config = GenerationConfig.from_pretrained(tokenizer_dir, local_files_only=True)
    except OSError:
        generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=min(tokenizer.model_max_length, 8192),
        # Tied like SmolLM2, which also keeps the tiny model tiny (the vocab dominates).
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_TINY_SHAPE,
    )
    # fork_rng: seed the initialisation without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = generation_config

    refuse_foreign_dir(dest, force=False, allow_existing_checkpoint=True)
    with staging_dir(dest) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_marker(staging, {"kind": "tiny", "seed": seed, "tokenizer_dir": str(tokenizer_dir)})
        publish_dir(staging, dest, accept_concurrent=is_marked)
    return dest
