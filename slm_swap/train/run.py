"""One fine-tuning run: validate inputs, load the backend, train with TRL's SFTTrainer on the
completion only (on CPU through `labelled_loss`, which sends only the labelled positions through the
LM head), report validation loss, write the adapter and its manifest atomically (`slm_swap.train.manifest`:
what was requested, apart from what ran).

Runs as one process, or as several under `accelerate launch` or `torchrun` (one per GPU, or CPU
processes over gloo); only the main process writes.
Checkpoints go to `<out>.checkpoints/` so `resume=True` continues an interrupted run.
The seed (`hp.seed`) fixes the initial adapter (seeded before it is created, in `backends`), the
data order and dropout (the trainer reseeds with it); the manifest says whether that made the run
bit-for-bit repeatable on its device.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slm_swap.core.tracks import get_track
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import sha256_file, write_json
from slm_swap.infra.tracing import NullRun, Run
from slm_swap.llm.model_folders import require_checkpoint
from slm_swap.llm.precision import use_bf16
from slm_swap.train.backends import choose_backend, determinism, load_for_training, quantization_of
from slm_swap.train.data import load_training_rows, tokenize_rows
from slm_swap.train.hyperparams import HyperParams, hyperparams_for
from slm_swap.train.manifest import MANIFEST, refuse_foreign_adapter_folder, requested_settings, what_ran
from slm_swap.train.options import PRECISIONS, SAMPLING, TRAIN_DEFAULTS, check_step_cap


@dataclass(frozen=True)
class TrainRequest:
    """One run's inputs; the options' defaults and meanings are `TrainOptions`' (slm_swap.train.options)."""

    track: str
    train_path: Path
    val_path: Path
    out_dir: Path
    model_path: Path
    backend: str = TRAIN_DEFAULTS.backend
    overwrite: bool = TRAIN_DEFAULTS.overwrite
    resume: bool = TRAIN_DEFAULTS.resume
    sampling: str = TRAIN_DEFAULTS.sampling
    save_steps: int = TRAIN_DEFAULTS.save_steps
    max_steps: int = TRAIN_DEFAULTS.max_steps  # tests and benchmarks may cap it
    precision: str = TRAIN_DEFAULTS.precision
    hp: HyperParams | None = None  # None: the seed's settings with the track's batch size (`hyperparams_for`)

    @property
    def hyperparams(self) -> HyperParams:
        return self.hp if self.hp is not None else hyperparams_for(self.track)

    def checkpoints_dir(self) -> Path:
        return Path(f"{self.out_dir}.checkpoints")


def validate(request: TrainRequest) -> None:
    """Every bad input is refused before anything is loaded or written."""
    get_track(request.track)
    try:
        check_step_cap(request.max_steps)
    except ValueError as exc:
        raise SlmSwapError(f"--max-steps {exc}") from None
    if request.save_steps < 1:
        raise SlmSwapError(f"--save-steps must be >= 1, got {request.save_steps}")
    if request.precision not in PRECISIONS:
        raise SlmSwapError(f"unknown precision {request.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if request.sampling not in SAMPLING:
        raise SlmSwapError(f"unknown sampling {request.sampling!r}: expected one of {', '.join(SAMPLING)}")
    require_checkpoint(request.model_path)
    for path in (request.train_path, request.val_path):
        load_training_rows(Path(path), request.track)
    out = Path(request.out_dir)
    if (out / "adapter_config.json").exists() and not (request.overwrite or request.resume):
        raise SlmSwapError(f"{out} already holds an adapter: pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SlmSwapError(f"{out} exists and is not a folder")
    refuse_foreign_adapter_folder(out)  # `python -m slm_swap.train` too: never a folder of the user's


def trace_input(request: TrainRequest) -> dict[str, Any]:
    """What a training trace records before anything runs."""
    return {
        "track": request.track,
        "train_path": str(request.train_path),
        "val_path": str(request.val_path),
        "adapter_path": str(request.out_dir),
        "base_model": str(request.model_path),
        "hyperparameters": request.hyperparams.as_dict(),
        "sampling": request.sampling,
        "resume": request.resume,
    }


def train(request: TrainRequest, trace: Run = NullRun()) -> dict[str, Any]:
    """Train and write `<out>/` (PEFT adapter + manifest); returns the manifest. Losses are
    recorded on `trace` as they are logged, the manifest as its output."""
    validate(request)  # first: a bad input costs no heavy import (and none of their import-time noise)
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from slm_swap.train.labelled_loss import LabelledPositionsSFTTrainer

    hp = request.hyperparams
    backend = choose_backend(request.backend)
    model, tokenizer = load_for_training(backend, Path(request.model_path), hp)
    train_rows = load_training_rows(Path(request.train_path), request.track)
    val_rows = load_training_rows(Path(request.val_path), request.track)
    train_examples = tokenize_rows(tokenizer, train_rows, hp.max_seq_length, Path(request.train_path))
    val_examples = tokenize_rows(tokenizer, val_rows, hp.max_seq_length, Path(request.val_path))

    cuda = torch.cuda.is_available() and backend != "cpu"
    bf16 = use_bf16(request.precision, cuda)
    deepspeed_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else None
    config = SFTConfig(
        output_dir=str(request.checkpoints_dir()),
        num_train_epochs=hp.epochs,
        max_steps=request.max_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=hp.warmup_steps,
        per_device_train_batch_size=hp.per_device_batch_size,
        per_device_eval_batch_size=hp.per_device_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        max_length=hp.max_seq_length,
        completion_only_loss=True,  # our `labels` column (prompt = -100) is used as given
        train_sampling_strategy=request.sampling,
        logging_steps=1,
        save_strategy="steps",
        save_steps=request.save_steps,
        save_total_limit=2,
        eval_strategy="no",  # evaluated explicitly before and after: two numbers to compare
        report_to="none",
        seed=hp.seed,  # dropout, and the length-grouped order (drawn from torch's generator)
        data_seed=hp.seed,  # the order of a plain random sampler
        # Counts the tokens each step really consumed (padding excluded), for the throughput.
        include_num_input_tokens_seen="non_padding",
        bf16=bf16,
        use_cpu=not cuda,
        deepspeed=deepspeed_file,  # "auto" values in the JSON are filled from these arguments
        activation_checkpointing=backend == "bnb",
        disable_tqdm=False,
    )

    class TraceLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero and "loss" in logs:
                trace.event("train_step", metadata={"step": state.global_step, "loss": logs["loss"],
                                                    "learning_rate": logs.get("learning_rate")})

    class AtStart(TrainerCallback):
        """What the model and the count stand at when this `train()` begins: the validation loss
        to compare the end with, and the tokens already seen (a resumed run starts from its
        checkpoint's count; only what it trains after that belongs to its throughput). Measured
        here, not before `train()`: under DeepSpeed the trainer cannot evaluate until its engine
        exists (it would ask for ZeRO-3 inference), and here the weights are still untouched."""

        trainer = None
        tokens = 0
        val_loss = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.tokens = state.num_input_tokens_seen
            self.val_loss = self.trainer.evaluate()["eval_loss"]

    at_start = AtStart()
    # On CUDA, TRL's own head already scores only the labelled positions; elsewhere ours does.
    trainer_class = SFTTrainer if cuda else LabelledPositionsSFTTrainer
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples),
        processing_class=tokenizer,
        callbacks=[TraceLosses(), at_start],
    )
    at_start.trainer = trainer
    resume_from = _latest_checkpoint(request.checkpoints_dir()) if request.resume else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    duration = time.perf_counter() - started
    val_loss = trainer.evaluate()["eval_loss"]
    tokens = trainer.state.num_input_tokens_seen - at_start.tokens  # all processes together
    manifest = {
        "track": request.track,
        "base_model": str(request.model_path),
        "requested": requested_settings(backend=request.backend, precision=request.precision, sampling=request.sampling,
                                        max_steps=request.max_steps, resume=request.resume, hyperparameters=hp.as_dict()),
        # From here on, what ran (slm_swap.train.manifest).
        **what_ran(trainer, backend, quantization_of(trainer.model)),
        "determinism": determinism(cuda),
        "datasets": {
            "train": {"path": str(request.train_path), "sha256": sha256_file(Path(request.train_path)), "rows": len(train_rows)},
            "val": {"path": str(request.val_path), "sha256": sha256_file(Path(request.val_path)), "rows": len(val_rows)},
        },
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "val_loss_before": at_start.val_loss,
        "val_loss": val_loss,
        "duration_s": round(duration, 2),
        "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / duration, 1) if duration > 0 else None,
        "resumed_from": str(resume_from) if resume_from else None,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "langfuse_trace_id": trace.trace_id,
    }
    for name in ("train_loss", "val_loss_before", "val_loss"):
        trace.score(name, manifest[name])
    trace.update(output=manifest)
    if trainer.is_world_process_zero():
        _publish_adapter(trainer.model, tokenizer, Path(request.out_dir), manifest)
    trainer.accelerator.wait_for_everyone()
    return manifest


def _latest_checkpoint(folder: Path) -> str | None:
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise SlmSwapError(f"--resume: no checkpoint in {folder}")
    return str(checkpoints[-1])


def _publish_adapter(model, tokenizer, out: Path, manifest: dict[str, Any]) -> None:
    """Adapter, tokenizer and manifest into a staging folder, then swapped in whole."""
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_json(staging / MANIFEST, manifest)
    retired = out.with_name(f".{out.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if out.exists():
        out.rename(retired)
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)
