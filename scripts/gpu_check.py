"""The CUDA paths, checked on a GPU machine; what passed and failed goes to a JSON report.

    python scripts/gpu_check.py --model-files .gpu_check/smollm2 --out gpu_check.json [--only NAME ...]

`scripts/gpu_check.sh` prepares and runs it (see docs/gpu.md). The machine needs no network: the
model is SmolLM2-shaped with random weights, built from the embedded model's config and tokenizer
(`--model-files`), which is enough for the mechanics (loading, quantizing, sharding, decoding,
training steps), not for quality. Each check runs on its own and records `passed`, `failed` (with
the error's last line) or `skipped` (with why), plus the versions that mattered. On a machine
without CUDA every check that needs it is skipped, so the script itself can be tried anywhere.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the library from this checkout, installed or not

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "unsloth", "deepspeed")
PROMPTS = [
    "What is the weather in Oslo today?",
    "Convert 12 miles to kilometres.",
    "Find restaurants near the central station that are open after 10 pm.",
    "Book a table for two at 7.",
    "Summarize the plot of Hamlet in one sentence.",
    "List three prime numbers bigger than 100.",
]


class Skip(Exception):
    """The check cannot run here (and says why)."""


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def need_cuda() -> int:
    import torch

    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    return torch.cuda.device_count()


def need(package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise Skip(f"{package} is not installed (carry its wheels: docs/gpu.md)")


def build_model(model_files: Path, dest: Path) -> Path:
    """A SmolLM2-shaped checkpoint with random weights, from the embedded config and tokenizer."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (dest / "model.safetensors").exists():
        return dest
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_files)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(dest)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (model_files / name).exists():
            shutil.copy(model_files / name, dest / name)
    return dest


def training_rows(folder: Path) -> Path:
    """The xLAM fixture prepared as the CLI would (both tracks, small splits)."""
    from slm_swap.app.cli import main

    if not (folder / "toolcall" / "train.jsonl").exists():
        fixture = REPO / "tests" / "fixtures" / "xlam_sample.json"
        assert main(["prepare", "--source", "xlam", "--dataset-path", str(fixture), "--train", "24", "--val", "4",
                     "--test", "8", "--out-dir", str(folder)]) == 0
    return folder


def check_eval_4bit_auto(model: Path, work: Path) -> dict:
    """The default SLM load with CUDA: NF4, `device_map="auto"` over every GPU present, generating."""
    gpus = need_cuda()
    need("bitsandbytes")
    from slm_swap.llm.local import LocalModel
    from slm_swap.core.prompts import build_messages

    local = LocalModel(model, max_new_tokens=16)
    outputs = [c.text for c in local.complete([build_messages(p) for p in PROMPTS])]
    placed = getattr(local.model, "hf_device_map", {})  # set by device_map="auto"
    return {"gpus": gpus, "quantization": local.quantization, "devices_used": sorted({str(v) for v in placed.values()}),
            "outputs": len(outputs)}


def check_decoder_parity(model: Path, work: Path) -> dict:
    """The batched decoder against transformers' own `generate`, one prompt at a time, on CUDA."""
    need_cuda()
    from slm_swap.llm.local import LocalModel
    from slm_swap.core.prompts import build_messages

    result = {}
    for label, load_in_4bit in (("full_precision", False), ("nf4", True)):
        if load_in_4bit:
            need("bitsandbytes")
        local = LocalModel(model, max_new_tokens=24, load_in_4bit=load_in_4bit)
        messages = [build_messages(p) for p in PROMPTS]
        batched = {c.index: c.text for c in local.complete(messages)}
        single = [local.reference_generate(local.render(m)) for m in messages]
        result[label] = f"{sum(batched[i] == text for i, text in enumerate(single))}/{len(single)} identical"
    return result


def _train(model: Path, work: Path, backend: str) -> dict:
    from slm_swap.train.hyperparams import HyperParams
    from slm_swap.train.run import TrainRequest, train

    data = training_rows(work / "data")
    request = TrainRequest(track="toolcall", train_path=data / "toolcall" / "train.jsonl", val_path=data / "toolcall" / "val.jsonl",
                           out_dir=work / f"adapter_{backend}", model_path=model, backend=backend, overwrite=True,
                           max_steps=3, hp=HyperParams(per_device_batch_size=2))
    manifest = train(request)
    return {key: manifest[key] for key in ("backend", "quantization", "strategy", "world_size", "steps", "train_loss",
                                           "val_loss_before", "val_loss", "train_tokens_per_s")}


def check_bnb_train(model: Path, work: Path) -> dict:
    """The transformers + bitsandbytes NF4 + PEFT backend, 3 steps on CUDA."""
    need_cuda()
    need("bitsandbytes")
    return _train(model, work, "bnb")


def check_unsloth_train(model: Path, work: Path) -> dict:
    """Unsloth `FastLanguageModel` QLoRA, 3 steps."""
    need_cuda()
    need("unsloth")
    return _train(model, work, "unsloth")


def check_zero2_accelerate(model: Path, work: Path) -> dict:
    """`accelerate launch` with the 4-GPU DeepSpeed ZeRO-2 config, reduced to the GPUs present."""
    gpus = need_cuda()
    need("deepspeed")
    need("bitsandbytes")
    from slm_swap.train.launch import GPU_CONFIG, launch_command

    data = training_rows(work / "data")
    out = work / "adapter_zero2"
    command = launch_command(track="toolcall", train=data / "toolcall" / "train.jsonl", val=data / "toolcall" / "val.jsonl",
                             out=out, accelerate_config=GPU_CONFIG,
                             extra=["--backend", "bnb", "--max-steps", "3", "--overwrite"])
    command[2:2] = ["--num_processes", str(gpus)]  # after `accelerate launch`: the config asks for 4
    env = {**os.environ, "SLM_MODEL_PATH": str(model), "LANGFUSE_DISABLED": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if run.returncode:
        raise RuntimeError(f"accelerate launch exited {run.returncode}: {(run.stderr.strip().splitlines() or [''])[-1]}")
    manifest = json.loads((out / "slm_swap_adapter.json").read_text())
    return {"gpus": gpus, **{key: manifest[key] for key in ("strategy", "world_size", "steps", "train_loss", "quantization")}}


CHECKS: dict[str, Callable[[Path, Path], dict]] = {
    "eval_4bit_auto": check_eval_4bit_auto,
    "decoder_parity": check_decoder_parity,
    "bnb_train": check_bnb_train,
    "unsloth_train": check_unsloth_train,
    "zero2_accelerate": check_zero2_accelerate,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-files", required=True, type=Path, help="folder with the embedded model's config.json and tokenizer")
    parser.add_argument("--out", required=True, type=Path, help="JSON report to write")
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only (default: all)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("LANGFUSE_DISABLED", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report = {"versions": versions(), "python": sys.version.split()[0], "checks": {}}
    try:
        import torch

        report["cuda"] = {"available": torch.cuda.is_available(), "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                          "torch_cuda": torch.version.cuda}
        model = build_model(args.model_files, work / "model")
    except Exception as exc:  # nothing can run: say why in the report
        report["setup_error"] = f"{type(exc).__name__}: {exc}"
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(report["setup_error"], file=sys.stderr)
        return 1
    for name in args.only or CHECKS:
        started = time.perf_counter()
        try:
            entry = {"status": "passed", **CHECKS[name](model, work)}
        except Skip as why:
            entry = {"status": "skipped", "why": str(why)}
        except Exception as exc:
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                     "where": traceback.format_exc().strip().splitlines()[-3:]}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["checks"][name] = entry
        print(f"{name}: {entry['status']}" + (f" ({entry.get('why') or entry.get('error')})" if entry["status"] != "passed" else ""), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each check: a killed run keeps what it had
    return 1 if any(e["status"] == "failed" for e in report["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
