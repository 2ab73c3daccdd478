"""The local SLM through transformers: greedy decoding, batched, with optional LoRA adapters.

On CUDA the model loads in 4-bit (bitsandbytes NF4) with `device_map="auto"`, so it shards across
every visible GPU; on CPU it loads in full precision. Batches are left-padded and formed from
prompts of similar length (sorted), and results come back tagged with their input index, so
batching changes speed, not outputs. One process loads a checkpoint once (`load_local_model`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from slm_swap.clients import MAX_NEW_TOKENS, Completion
from slm_swap.errors import SlmSwapError

BASE = None  # adapter name meaning "no adapter"
DEFAULT = "<default>"  # the model's `default_adapter` (BASE unless set)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)


class LocalModel:
    kind = "slm"

    def __init__(self, model_path: Path, max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise SlmSwapError(
                f"SLM_MODEL_PATH {model_path}: no checkpoint there (config.json missing); "
                "run `slm-swap models fetch` for the embedded model"
            )
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"  # decoder-only: pad before the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if torch.cuda.is_available():
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=True,
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, quantization_config=quantization, device_map="auto"
            )
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.eval()
        self.adapters: dict[str, Path] = {}
        self.default_adapter: str | None = BASE
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids.add(self.tokenizer.eos_token_id)

    @property
    def identity(self) -> str:
        return str(self.model_path)

    @property
    def adapter_path(self) -> Path | None:
        return self.adapters.get(self.default_adapter) if self.default_adapter else None

    def add_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter under `name` (kept in memory beside the others)."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise SlmSwapError(f"--adapter {path}: not a PEFT adapter (adapter_config.json missing)")
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()
        self.adapters[name] = path

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.inference_mode()
    def generate(self, prompts: list[str], adapter: str | None = DEFAULT, max_new_tokens: int | None = None) -> list[Generation]:
        """Greedy continuations of rendered prompts, as one left-padded batch."""
        if adapter == DEFAULT:
            adapter = self.default_adapter
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.model.device)
        limit = max_new_tokens or self.max_new_tokens
        kwargs = dict(
            **batch,
            do_sample=False,
            max_new_tokens=limit,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if self.adapters and adapter is BASE:
            with self.model.disable_adapter():
                output = self.model.generate(**kwargs)
        else:
            if adapter is not BASE:
                if adapter not in self.adapters:
                    raise SlmSwapError(f"unknown adapter {adapter!r}")
                self.model.set_adapter(adapter)
            output = self.model.generate(**kwargs)
        width = batch["input_ids"].shape[1]
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        return [self._decode(row[width:].tolist(), n) for row, n in zip(output, prompt_tokens)]

    def _decode(self, token_ids: list[int], prompt_tokens: int) -> Generation:
        finish_reason = "length"
        for position, token in enumerate(token_ids):
            if token in self.stop_ids:
                token_ids, finish_reason = token_ids[:position], "stop"
                break
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Generation(text, int(prompt_tokens), len(token_ids), finish_reason)

    def complete(self, messages_list: list[list[dict[str, str]]], adapter: str | None = DEFAULT) -> Iterator[Completion]:
        """Completions batch by batch, shortest prompts first (each carries its input index)."""
        prompts = [self.render(messages) for messages in messages_list]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            started = time.perf_counter()
            generations = self.generate([prompts[i] for i in chunk], adapter)
            per_example = (time.perf_counter() - started) / len(chunk)
            for i, generation in zip(chunk, generations):
                yield Completion(i, generation.text, None, per_example)


@functools.lru_cache(maxsize=2)
def load_local_model(model_path: Path, adapter: Path | None = None, batch_size: int = 8) -> LocalModel:
    """One load per (checkpoint, adapter) per process; the adapter, if any, is used by default."""
    model = LocalModel(model_path, batch_size=batch_size)
    if adapter is not None:
        model.add_adapter("adapter", adapter)
        model.default_adapter = "adapter"
    return model
