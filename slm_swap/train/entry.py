"""The fine-tuning entry point, `python -m slm_swap.train`, run by `accelerate launch` or `torchrun`
(one process per GPU, one or more on CPU):

    accelerate launch --config_file accelerate_config/phi4_4gpu.yaml -m slm_swap.train \\
        --track structured --train slm_swap/02_dataset/structured/train.jsonl \\
        --val slm_swap/02_dataset/structured/val.jsonl --out slm_swap/04_ft/adapter_structured
    torchrun --nproc_per_node=4 -m slm_swap.train --track structured ...   # plain DDP, no DeepSpeed

On CPU: `--config_file accelerate_config/cpu_2proc.yaml`, or `torchrun --nproc_per_node=2`; both
train data-parallel over gloo. The base model is SLM_MODEL_PATH (the embedded model by default).
Settings are the seed's fixed QLoRA settings (`slm_swap.train.hyperparams`), with the track's batch
size unless `--batch-size` says otherwise. `slm-swap train` runs this for you (accelerate launch).
docs/training.md says more, and what the manifest records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slm_swap.infra.cli_options import add_options, parse_request
from slm_swap.infra.errors import SlmSwapError
from slm_swap.train.launch import CHILD_ERROR_PREFIX
from slm_swap.train.options import TrainEntryRequest, TrainOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slm_swap.train",
                                     description="Fine-tune a LoRA adapter (run under accelerate launch or torchrun).")
    add_options(parser, TrainEntryRequest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args = parse_request(TrainEntryRequest, args)
        manifest = _train(args)
    except SlmSwapError as exc:  # `slm-swap train` shows this line as its own (slm_swap.train.launch)
        print(f"{CHILD_ERROR_PREFIX}{exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk, not the input: full, read-only, a path that went away mid-run
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{CHILD_ERROR_PREFIX}{where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    if manifest is None:  # not the main process: it has nothing to report
        return 0
    print(
        f"adapter {args.out}: backend={manifest['backend']} quantization={manifest['quantization'] or 'none'} "
        f"precision={manifest['precision']} strategy={manifest['strategy']} world_size={manifest['world_size']} "
        f"steps={manifest['steps']} train_loss={manifest['train_loss']:.4f} val_loss {manifest['val_loss_before']:.4f} -> "
        f"{manifest['val_loss']:.4f} tokens/s={manifest['train_tokens_per_s']} seed={manifest['seed']} "
        f"deterministic={manifest['determinism']['deterministic']} ({manifest['determinism']['device']})"
    )
    return 0


def _train(args: TrainEntryRequest) -> dict | None:
    import os

    from slm_swap.infra.config import load_settings
    from slm_swap.infra.tracing import NullTracer, check_tracing_settings, open_tracer, trace_url
    from slm_swap.train.hyperparams import hyperparams_for
    from slm_swap.train.run import TrainRequest, trace_input, train

    settings = load_settings()
    check_tracing_settings(settings)  # on every rank, before any work
    main_process = int(os.environ.get("RANK", "0")) == 0  # set by accelerate launch and torchrun; one trace per run
    request = TrainRequest(
        track=args.track,
        train_path=Path(args.train),
        val_path=Path(args.val),
        out_dir=Path(args.out),
        model_path=Path(settings.slm_model_path),
        **args.model_dump(include=set(TrainOptions.model_fields) - {"batch_size"}),
        hp=hyperparams_for(args.track, args.batch_size),
    )
    metadata = {"command": "train", "prefect_flow_run_id": settings.prefect_flow_run_id}
    with (open_tracer(settings) if main_process else NullTracer()) as tracer:
        with tracer.run(f"train {args.track}", input=trace_input(request), metadata=metadata) as run:
            manifest = train(request, trace=run)
        tracer.flush()
    if not main_process:
        return None
    if run.trace_id:
        url = trace_url(settings, run.trace_id)
        print(f"langfuse trace (train): {run.trace_id}" + (f" {url}" if url else ""), file=sys.stderr)
    return manifest

