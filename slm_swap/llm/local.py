"""The local SLM through transformers: greedy decoding, batched, with optional LoRA adapters.

On CUDA the model loads in 4-bit (bitsandbytes NF4) with `device_map="auto"`, so it shards across
every visible GPU; on CPU it loads in full precision unless 4-bit is asked for (`--load-in-4bit`),
which bitsandbytes runs on CPU too. Batches are left-padded and formed from
prompts of similar length (sorted), and results come back tagged with their input index, so
batching changes speed, not outputs (in full precision; a 4-bit model's batched matmuls can round
differently from one-at-a-time ones and flip a near-tie). One process loads a checkpoint once (`load_local_model`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json
from slm_swap.llm.completion import EVAL_BATCH_SIZE, MAX_NEW_TOKENS, Completion
from slm_swap.llm.decoder import compile_step, greedy_decode
from slm_swap.llm.model_folders import require_checkpoint
from slm_swap.llm.precision import PRECISION_CHOICES, resolve_precision, weights_note
from slm_swap.llm.quantization import nf4_config, require_bitsandbytes, resolve_quantization

BASE = None  # adapter name meaning "no adapter"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the weights' dtype without 4-bit
DEFAULT = "<default>"  # the model's `default_adapter` (BASE unless set)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn), "length" (hit max_new_tokens) or "abandoned" (its caller left)
    # The completion's token ids (no stop token) and each one's log-probability (`decoder.DecodedRow`);
    # a row ended by a stop string has every token generated, the stop string's included.
    tokens: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] = ()


class LocalModel:
    kind = "slm"

    def __init__(self, model_path: Path, max_new_tokens: int = MAX_NEW_TOKENS, batch_size: int = EVAL_BATCH_SIZE,
                 load_in_4bit: bool | None = None, precision: str = "fp32", compile: bool = False):
        """`load_in_4bit`: NF4 through bitsandbytes; None (the default) means 4-bit with CUDA and
        full precision on CPU. `precision` (`llm.precision`; a full-precision load only: auto means
        fp32 with 4-bit): the weights' dtype, fp32 or bf16. `compile`: a lone prompt's decode steps
        through `torch.compile` (`decoder.compile_step`; in fp32 the same outputs), compiled on its first
        call."""
        if precision not in PRECISION_CHOICES:
            raise SlmSwapError(f"--precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = Path(model_path)
        require_checkpoint(model_path)
        cuda = torch.cuda.is_available()
        self.quantization = resolve_quantization(load_in_4bit)
        if self.quantization and precision == "bf16":
            raise SlmSwapError("--precision bf16 applies to a full-precision load, not to 4-bit (--no-load-in-4bit)")
        self.precision = resolve_precision(precision, self.quantization, cuda)
        if compile and not any(map(shutil.which, filter(None, [os.environ.get("CXX"), "g++", "clang++"]))):
            # inductor builds its kernels with the machine's C++ compiler; without one it fails mid-request
            raise SlmSwapError("--compile needs a C++ compiler (g++ or clang++, or CXX) for torch.compile's kernels")
        self.compile = compile
        self._compiled: tuple[object, Callable[..., object]] | None = None  # (the model it compiled, its step)
        if self.quantization:
            require_bitsandbytes("--load-in-4bit", "load the model in full precision with --no-load-in-4bit")
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"  # decoder-only: pad before the prompt
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.quantization:  # with CUDA, sharded over every visible GPU
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, quantization_config=nf4_config(cuda), device_map="auto" if cuda else "cpu"
            )
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[self.precision])
        self.model.eval()
        self.adapters: dict[str, Path] = {}
        self.default_adapter: str | None = BASE
        self.merged_adapter: Path | None = None  # an adapter folded into the weights (`merge_adapter`)
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids.add(self.tokenizer.eos_token_id)

    @property
    def identity(self) -> str:
        return local_identity(self.model_path, weights_note(self.quantization, self.precision))

    def close(self) -> None:
        """Nothing to release: one loaded model serves every eval in the process (`load_local_model`)."""

    @property
    def context_length(self) -> int | None:
        """Most tokens (prompt + completion) the model takes: its position limit, else the
        tokenizer's declared maximum; None when neither says."""
        config = self.model.config.get_text_config()
        for name in ("max_position_embeddings", "n_positions"):
            if isinstance(value := getattr(config, name, None), int) and value > 0:
                return value
        declared = self.tokenizer.model_max_length  # transformers' "unknown" is a huge placeholder
        return declared if isinstance(declared, int) and 0 < declared < 10**8 else None

    @property
    def adapter_path(self) -> Path | None:
        """The adapter the model answers with by default: merged into it, or its default adapter."""
        if self.merged_adapter is not None:
            return self.merged_adapter
        return self.adapters.get(self.default_adapter) if self.default_adapter else None

    def add_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter under `name` (kept in memory beside the others)."""
        from peft import PeftModel

        path = Path(path)
        check_adapter(path)
        try:
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self.model.load_adapter(path, adapter_name=name)
        except (RuntimeError, ValueError, TypeError, KeyError, OSError) as exc:  # e.g. shapes of another base model
            raise SlmSwapError(f"--adapter {path}: cannot be applied to {self.model_path}: {_first_line(exc)}") from None
        self.model.eval()
        self.adapters[name] = path

    def merge_adapter(self, path: Path) -> None:
        """Fold a LoRA adapter into the weights (PEFT's `merge_and_unload`): the model then computes
        what base + adapter computes, without the adapter layers' extra matmuls and Python calls on
        every step. For a model that serves one adapter only (an eval); full precision only, since
        folding into 4-bit weights re-rounds them (use `add_adapter` there)."""
        from peft import PeftModel

        path = Path(path)
        check_adapter(path)
        if self.quantization or self.precision != "fp32" or self.adapters or self.merged_adapter is not None:
            raise SlmSwapError(f"--adapter {path}: merging needs an fp32 model without other adapters")
        try:
            self.model = PeftModel.from_pretrained(self.model, path).merge_and_unload()
        except (RuntimeError, ValueError, TypeError, KeyError, OSError) as exc:  # e.g. shapes of another base model
            raise SlmSwapError(f"--adapter {path}: cannot be applied to {self.model_path}: {_first_line(exc)}") from None
        self.model.eval()
        self.merged_adapter = path

    def _compiled_step(self) -> Callable[..., object] | None:
        """With `compile`, the compiled forward of the model as it is now: loading the first adapter
        or merging one replaces `self.model`, and the step is compiled again for the new one."""
        if not self.compile:
            return None
        if self._compiled is None or self._compiled[0] is not self.model:
            self._compiled = (self.model, compile_step(self.model))
        return self._compiled[1]

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], adapter: str | None = DEFAULT, max_new_tokens: int | None = None,
                 stop: list[list[str]] | None = None,
                 abandoned: list[Callable[[], bool]] | None = None) -> list[Generation]:
        """Greedy continuations of rendered prompts, decoded together, in input order."""
        finished = dict(self.stream(prompts, adapter, max_new_tokens, stop, abandoned))
        return [finished[index] for index in range(len(prompts))]

    def stream(self, prompts: list[str], adapter: str | None = DEFAULT, max_new_tokens: int | None = None,
               stop: list[list[str]] | None = None,
               abandoned: list[Callable[[], bool]] | None = None) -> Iterator[tuple[int, Generation]]:
        """(index in `prompts`, generation) as each prompt finishes; all decoded together (see `decoder.greedy_decode`).
        `stop[i]`: strings that end prompt i's generation once its text contains one (the text keeps
        it: callers cut there, as OpenAI's `stop` does); otherwise only end-of-turn tokens end it.
        `abandoned[i]()`: whether prompt i's caller has gone; once it says so, the row leaves the
        batch at the next decode step, with finish reason "abandoned"."""
        rows = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        given_up: set[int] = set()  # rows ended because their caller left
        checked = abandoned is not None or bool(stop and any(stop))
        should_stop = self._stop_check(stop or [[] for _ in prompts], abandoned, given_up) if checked else None
        with self._using(adapter):
            # Compiled for a lone prompt only: there Python and small operations take a third of each step, and
            # compiling cuts it; batches are matmul-bound and ran slower compiled (bench/decode_limits.py).
            compiled = self._compiled_step() if len(rows) == 1 else None
            decoded = greedy_decode(self.model, rows, max_new_tokens or self.max_new_tokens, self.stop_ids, should_stop,
                                    compiled_step=compiled)
            for index, tokens, logprobs, reason in decoded:
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                yield index, Generation(text, len(rows[index]), len(tokens), "abandoned" if index in given_up else reason,
                                        tuple(tokens), tuple(logprobs))

    def token_texts(self, tokens: list[int] | tuple[int, ...]) -> list[str]:
        """The text each token adds to the decoded completion: joined, exactly `generate`'s text.
        A token that ends inside a multi-byte character adds nothing; the token that completes the
        character adds all of it (tokenizers decode an incomplete character as U+FFFD). Special
        tokens, skipped in the text, add nothing. Quadratic in the length: for logprobs only."""
        texts: list[str] = []
        committed = ""
        for end in range(1, len(tokens) + 1):
            text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
            stable = text if end == len(tokens) else text.rstrip("\ufffd")
            if not stable.startswith(committed):  # a tokenizer that rewrites earlier text (clean-up rules)
                return [self.tokenizer.decode([token], skip_special_tokens=True) for token in tokens]
            texts.append(stable[len(committed):])
            committed = stable
        return texts

    def _stop_check(self, stop: list[list[str]], abandoned: list[Callable[[], bool]] | None,
                    given_up: set[int]) -> Callable[[int, list[int]], bool]:
        """Whether row i is to end now: its caller has gone (the row is added to `given_up`), or its
        newest tokens complete one of its stop strings. Only the tail is decoded: every token spells
        at least one character, so a stop string lies within its last len(stop) + 1 tokens (one more
        for a token it shares with the text before)."""
        windows = [max(map(len, strings), default=0) + 1 for strings in stop]

        def check(row: int, tokens: list[int]) -> bool:
            if abandoned is not None and abandoned[row]():
                given_up.add(row)
                return True
            if not stop[row]:
                return False
            tail = self.tokenizer.decode(tokens[-windows[row]:], skip_special_tokens=True)
            return any(string in tail for string in stop[row])

        return check

    @contextlib.contextmanager
    def _using(self, adapter: str | None):
        """The named adapter active (BASE: none) for the duration."""
        if adapter is BASE and self.merged_adapter is not None:
            raise SlmSwapError(f"the adapter {self.merged_adapter} is merged into this model: it cannot be turned off")
        if adapter == DEFAULT:
            adapter = self.default_adapter
        if self.adapters and adapter is BASE:
            with self.model.disable_adapter():
                yield
            return
        if adapter is not BASE:
            if adapter not in self.adapters:
                raise SlmSwapError(f"unknown adapter {adapter!r}")
            self.model.set_adapter(adapter)
        yield

    @torch.inference_mode()
    def reference_generate(self, prompt: str, max_new_tokens: int | None = None) -> str:
        """One prompt through transformers' own `generate`: what `generate` must reproduce
        (used by the parity test and bench/eval_throughput.py)."""
        batch = self.tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(self.model.device)
        output = self.model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens or self.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        tokens = output[0, batch["input_ids"].shape[1] :].tolist()
        ends = [position for position, token in enumerate(tokens) if token in self.stop_ids]
        return self.tokenizer.decode(tokens[: ends[0]] if ends else tokens, skip_special_tokens=True)

    def complete(self, messages_list: list[list[dict[str, str]]], adapter: str | None = DEFAULT) -> Iterator[Completion]:
        """Completions as they finish, in batches of similar-length prompts, shortest first. Each
        carries its input index and, as latency, the time since its batch started."""
        prompts = [self.render(messages) for messages in messages_list]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            started = time.perf_counter()
            for position, generation in self.stream([prompts[i] for i in chunk], adapter):
                yield Completion(chunk[position], generation.text, None, time.perf_counter() - started,
                                 self.model_path.name, generation.prompt_tokens, generation.completion_tokens,
                                 generation.token_logprobs)


def local_identity(model_path: Path, weights: str | None) -> str:
    """The checkpoint, and how its weights were loaded when not in fp32 (`precision.weights_note`:
    the outputs differ)."""
    return f"{model_path} ({weights})" if weights else str(model_path)


def check_adapter(path: Path) -> None:
    """A PEFT adapter folder with a valid config and readable weights, checked without loading
    any model, so a broken adapter is refused before the base model's long load."""
    from peft import PeftConfig
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise SlmSwapError(f"--adapter {path}: not a PEFT adapter (adapter_config.json missing)")
    read_json(config_file, "adapter config")  # invalid JSON: one line naming the file
    try:
        config = PeftConfig.from_pretrained(path)
    except (ValueError, TypeError, KeyError) as exc:
        raise SlmSwapError(f"{config_file}: not a valid PEFT adapter config ({_first_line(exc)})") from None
    if config.peft_type is None:
        raise SlmSwapError(f"{config_file}: not a valid PEFT adapter config (no 'peft_type')")
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        try:
            with safe_open(weights, framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise SlmSwapError(f"{weights}: adapter weights are not a readable safetensors file ({_first_line(exc)})") from None
    elif not (path / "adapter_model.bin").is_file():
        raise SlmSwapError(f"--adapter {path}: no adapter weights (adapter_model.safetensors missing)")


def _first_line(exc: BaseException) -> str:
    """The error on one line, cut to a readable length (state-dict errors run to pages)."""
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


@functools.lru_cache(maxsize=2)
def load_local_model(model_path: Path, adapter: Path | None = None, batch_size: int = EVAL_BATCH_SIZE,
                     load_in_4bit: bool | None = None, precision: str = "fp32") -> LocalModel:
    """One load per (checkpoint, adapter, settings) per process; the adapter, if any, is used by default:
    merged into the weights in fp32 (no LoRA layers on every decode step), kept as an adapter on a
    4-bit or bf16 model (merging would re-round the weights). Settings and the adapter are checked
    before the base model is loaded."""
    if batch_size < 1:
        raise SlmSwapError(f"--batch-size must be >= 1, got {batch_size}")
    if adapter is not None:
        check_adapter(adapter)
    model = LocalModel(model_path, batch_size=batch_size, load_in_4bit=load_in_4bit, precision=precision)
    if adapter is not None and model.quantization is None and model.precision == "fp32":
        model.merge_adapter(adapter)
    elif adapter is not None:
        model.add_adapter("adapter", adapter)
        model.default_adapter = "adapter"
    return model
