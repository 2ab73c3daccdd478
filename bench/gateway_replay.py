"""Replay a labelled split through `slm-swap gateway` in route mode: how much the SLM takes, and what
that does to accuracy, next to the hosted model alone and the SLM alone.

    .venv/bin/python bench/gateway_replay.py                        # toolcall, test split, after scripts/main.sh
    .venv/bin/python bench/gateway_replay.py --track structured --track toolcall --fault wrong=12
    .venv/bin/python bench/gateway_replay.py --hosted real          # HOSTED_BASE_URL/HOSTED_MODEL or AZURE_*

Each row of the split is sent as an application sends it, with the real `openai` SDK over HTTP,
`--concurrency` at a time: toolcall rows as an agent framework asks (OpenAI `tools` from the row's
functions, the user's request as the one message, any model name); structured rows addressed to the
track by model name with the evaluation's messages. The gateway is `create_gateway_app` under uvicorn
on 127.0.0.1, its SLM the in-process engine (`gateway_engine`: the embedded model, SLM_MODEL_PATH,
with the main job's `adapter_<track>` from --adapters-dir; the base model where there is none).
The hosted side: the scripted teacher doing OpenAI tool calling (`gateway_stand_in`; NOT A MODEL:
every row's gold answer, `--fault NAME=K` makes every K-th row of the split behave as NAME), or with
`--hosted real` the hosted model of the usual settings (as `eval`). The SLM's answers pass the
request's validators, then, per track with `--policy`, the calibrated confidence gate.

Scored as `eval` scores (`Track.score` against the row's gold and BFCL answers): a tool-calling
answer's one call as the track's `<tool_call>` text (an answer without exactly one call is no call).
Hosted alone: the same requests sent straight to the hosted model. SLM alone: every answer the
engine gave the gateway (read off the gateway's HTTP client to the engine, checked against the
records file). Hosted calls and tokens come from the records; tokens saved are the hosted-alone
tokens of the rows the SLM answered (the stand-in counts words, having no tokenizer).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import openai
import uvicorn

from slm_swap.app.gateway import SlmEngine, Upstream, create_gateway_app
from slm_swap.app.gateway_command import load_policies
from slm_swap.app.gateway_engine import start_in_process_engine, track_adapters
from slm_swap.app.gateway_requests import Swappable, classify
from slm_swap.app.gateway_stand_in import ToolCallingTeacher
from slm_swap.app.http_server import listening_socket
from slm_swap.app.runs import check_adapter_track
from slm_swap.core.compare import MetricRow, delta_text, parse_delta
from slm_swap.core.prompts import build_messages
from slm_swap.core.tracks import ROW_TRACKS, RowTrack, get_row_track
from slm_swap.data.examples import Example
from slm_swap.evaluation.registry import load_promoted, load_registry, promoted_adapter
from slm_swap.evaluation.rows import load_split
from slm_swap.infra import json_input
from slm_swap.infra.config import DEFAULT_DATA_DIR, DEFAULT_FT_DIR, DEFAULT_GATEWAY_RECORDS, load_settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_text
from slm_swap.infra.progress import progress_meter
from slm_swap.llm.chat_api import ChatRequest
from slm_swap.llm.hosted import HostedClient
from slm_swap.trajectories.teacher import parse_faults

STAND_IN_MODEL = "scripted-teacher-not-a-model"
AGENT_MODEL = "gpt-4o"  # the model name an application puts in its tool-calling requests


@dataclass(frozen=True)
class ReplayRow:
    row: dict[str, str]  # {"prompt", "completion"}
    answer: dict[str, Any]  # the row's line of the BFCL answers file, {} without one
    example: Example  # the request, functions and gold call read back from the row

    def app_body(self, track: str) -> dict[str, Any]:
        """What the application sends (its model name included)."""
        if track == "toolcall":
            return {"model": AGENT_MODEL, "messages": [{"role": "user", "content": self.example.request}],
                    "tools": [{"type": "function", "function": function} for function in self.example.functions]}
        return {"model": track, "messages": build_messages(self.row["prompt"])}


def load_replay_rows(data_dir: Path, track: str, split: str, limit: int | None) -> list[ReplayRow]:
    """The split's rows as `eval` reads them, each with its request, functions and gold call read back
    (the gateway's own reading of evaluation messages, the track's own parser of the gold)."""
    rows_path = get_row_track(track).split_file(data_dir, split)
    if not rows_path.is_file():
        raise SlmSwapError(f"{rows_path}: no {track} {split} split; run `bash scripts/main.sh` first (or `slm-swap prepare`)")
    _, rows, answers = load_split(data_dir, track, split, limit)
    replay = []
    for index, row in enumerate(rows):
        decision = classify(ChatRequest.model_validate({"model": track, "messages": build_messages(row["prompt"])}), {track})
        if not isinstance(decision, Swappable):
            raise SlmSwapError(f"{rows_path}: row {index + 1}: not the {track} track's prompt ({decision.detail})")
        gold = get_row_track(track).score({"output": row["completion"], "completion": row["completion"]})["parsed"]
        answer = answers[index] if answers else {}
        replay.append(ReplayRow(row, answer, Example(str(answer.get("id", f"{split}-{index}")), decision.user_text,
                                                      list(decision.functions), gold["name"], gold["arguments"])))
    return replay


def answer_output(track: RowTrack, message: Any, tool_calls_expected: bool) -> str | None:
    """An answer's message as the text the track scores. With tools asked, only `tool_calls` count,
    as an application acts on them: exactly one call, its arguments a JSON object, as the track's
    completion; anything else is no call (None)."""
    if not tool_calls_expected:
        return message.content
    calls = message.tool_calls or []
    if len(calls) != 1 or calls[0].type != "function":
        return None
    try:
        arguments = json_input.loads(calls[0].function.arguments or "")
    except json_input.JsonInputError:
        return None
    return track.completion(calls[0].function.name, arguments) if isinstance(arguments, dict) else None


class EngineAnswers:
    """Every answer the SLM engine gave the gateway, by the prompt it was asked: an httpx response
    hook on the gateway's client to the engine."""

    def __init__(self) -> None:
        self.by_prompt: dict[str, str] = {}
        self._lock = threading.Lock()

    def hook(self, response: httpx.Response) -> None:
        if response.status_code != 200 or not response.request.url.path.endswith("/chat/completions"):
            return
        response.read()
        prompt = json_input.loads(response.request.content)["messages"][-1]["content"]
        text = json_input.loads(response.content)["choices"][0]["message"]["content"] or ""
        with self._lock:
            self.by_prompt[prompt] = text


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free 127.0.0.1 port, in a thread; yields its /v1 URL."""
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SlmSwapError("the gateway did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@dataclass
class Sent:
    output: str | None  # the answer as the track scores it; None: no usable answer
    route: str | None  # x-slm-swap-route (None: not through the gateway, or no answer)
    failure: str | None  # why there was no answer (an HTTP status and message)
    total_tokens: int


def send(client: openai.OpenAI, body: dict[str, Any], track: RowTrack) -> Sent:
    tool_calls_expected = "tools" in body
    try:
        raw = client.chat.completions.with_raw_response.create(**body)
    except openai.APIStatusError as exc:
        return Sent(None, exc.response.headers.get("x-slm-swap-route"), f"{exc.status_code}: {str(exc.message)[:100]}", 0)
    except openai.OpenAIError as exc:
        return Sent(None, None, f"{type(exc).__name__}: {str(exc)[:100]}", 0)
    completion = raw.parse()
    output = answer_output(track, completion.choices[0].message, tool_calls_expected) if completion.choices else None
    tokens = completion.usage.total_tokens if completion.usage else 0
    return Sent(output, raw.headers.get("x-slm-swap-route"), None, tokens)


def send_all(client: openai.OpenAI, bodies: list[dict[str, Any]], track: RowTrack, concurrency: int, label: str,
             progress: str) -> list[Sent]:
    meter = progress_meter(progress, label, len(bodies))
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(send, client, body, track) for body in bodies]
        for _ in as_completed(futures):
            meter.update(1)
    meter.close()
    return [future.result() for future in futures]


def scores(track: RowTrack, rows: list[ReplayRow], outputs: list[str | None]) -> list[dict[str, Any]]:
    return [track.score({**r.row, **r.answer, "output": output}) for r, output in zip(rows, outputs)]


def read_records(path: Path, start: int) -> list[dict[str, Any]]:
    return [json_input.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[start:] if line.strip()]


def count(scored: list[dict[str, Any]], key: str) -> str:
    return f"{sum(bool(s[key]) for s in scored)}/{len(scored)}"


@dataclass(frozen=True)
class ReplayFigures:
    """One track's replay in numbers (for `bench/flywheel_gain.py`): coverage and the accuracy `compare`
    decides on (the last core metric), through the gateway, hosted alone and the SLM alone."""

    track: str
    n: int
    coverage: int  # rows the SLM answered (x-slm-swap-route: slm)
    accuracy_key: str
    gateway: int
    hosted_alone: int
    slm_alone: int
    within_delta: bool
    slm_asked: int = 0  # rows the SLM answered at all (none where its gate accepts nothing: not asked)


def replay_track(name: str, rows: list[ReplayRow], gateway: openai.OpenAI, hosted: Upstream, engine: EngineAnswers,
                 records_path: Path, args: argparse.Namespace, delta: Fraction) -> ReplayFigures:
    """Replay one track's rows, print its figures; they come back, with whether the gateway kept within
    --delta of hosted alone."""
    track = get_row_track(name)
    bodies = [row.app_body(name) for row in rows]
    began = time.perf_counter()
    alone = send_all(hosted.client, [{**body, "model": hosted.model} for body in bodies], track, args.concurrency,
                     f"{name}: hosted alone", args.progress)
    hosted_s, began = time.perf_counter() - began, time.perf_counter()
    start = len(records_path.read_text(encoding="utf-8").splitlines())
    through = send_all(gateway, bodies, track, args.concurrency, f"{name}: through the gateway", args.progress)
    gateway_s = time.perf_counter() - began
    records = read_records(records_path, start)
    slm_texts = [engine.by_prompt.get(row.row["prompt"]) for row in rows]

    columns = {"gateway": scores(track, rows, [s.output for s in through]),
               "hosted alone": scores(track, rows, [s.output for s in alone]),
               "SLM alone": scores(track, rows, slm_texts)}
    n = len(rows)
    routes = Counter(s.route or "no answer" for s in through)
    print(f"\n== {name} / {args.split}: {n} rows; hosted alone {hosted_s:.1f} s, through the gateway {gateway_s:.1f} s "
          f"(concurrency {args.concurrency})")
    print(f"coverage (x-slm-swap-route: slm): {routes['slm']}/{n}; routes: "
          + ", ".join(f"{route}={k}" for route, k in sorted(routes.items())))
    keys = track.metric_keys(columns["gateway"])
    print(f"{'metric':<16}" + "".join(f"{column:>14}" for column in columns))
    for key in keys:
        label = key + (" *" if f"{key}_rate" in track.core_metrics else "")
        print(f"{label:<16}" + "".join(f"{count(scored, key):>14}" for scored in columns.values()))
    print("(* core metric; the last core metric is the accuracy `compare` decides on)")
    failures = Counter(s.failure for s in through + alone if s.failure)
    for failure, k in failures.most_common(3):
        print(f"failed requests: {k} x {failure}")

    trailing = [key for key in (m.removesuffix("_rate") for m in track.core_metrics)
                if MetricRow(key, True, sum(bool(s[key]) for s in columns["hosted alone"]),
                             sum(bool(s[key]) for s in columns["gateway"]), n, None).trails(delta)]
    print(f"gateway within delta {delta_text(delta)} of hosted alone on every core metric: "
          + ("yes" if not trailing else f"NO (trails on {', '.join(trailing)})"))

    hosted_parts = [r["hosted"] for r in records if r.get("hosted")]
    gateway_tokens = sum(((part.get("usage") or {}).get("total_tokens") or 0) for part in hosted_parts)
    alone_tokens = sum(s.total_tokens for s in alone)
    saved_tokens = sum(a.total_tokens for a, s in zip(alone, through) if s.route == "slm")
    unit = "words (the stand-in has no tokenizer)" if args.hosted == "stand-in" else "tokens"
    print(f"hosted calls: {len(hosted_parts)} through the gateway, {n} alone ({n - len(hosted_parts)} saved); "
          f"hosted {unit}: {gateway_tokens} through the gateway, {alone_tokens} alone ({saved_tokens} saved by the SLM's answers)")
    reasons = Counter((r.get("reason") or "").split(":", 1)[0] for r in records if r.get("route") != "slm")
    example = {code: r["reason"] for r in records if r.get("reason") for code in [r["reason"].split(":", 1)[0]]}
    if reasons:
        print("fallback reasons (records):")
        for code, k in reasons.most_common():
            print(f"  {code or '(none)':<26}{k:>4}   e.g. {example.get(code, '')[:110]}")
    recorded = Counter(r["slm"]["output"] for r in records if isinstance(r.get("slm"), dict) and "output" in r["slm"])
    asked = Counter(text for text in slm_texts if text is not None)
    print(f"SLM answers: {sum(asked.values())}/{n} rows asked the evaluation's own prompt; records file holds "
          f"{len(records)} lines, the same SLM outputs: {'yes' if recorded == asked and len(records) == n else 'NO'}")
    accuracy_key = track.core_metrics[-1].removesuffix("_rate")
    correct = {column: sum(bool(s[accuracy_key]) for s in scored) for column, scored in columns.items()}
    return ReplayFigures(name, n, routes["slm"], accuracy_key, correct["gateway"], correct["hosted alone"],
                         correct["SLM alone"], not trailing, sum(text is not None for text in slm_texts))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", action="append", choices=tuple(ROW_TRACKS), help="repeatable (default: toolcall)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="(default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="(default: %(default)s)")
    parser.add_argument("--adapters-dir", type=Path, default=DEFAULT_FT_DIR,
                        help="the main job's adapter_<track> folders (default: %(default)s)")
    parser.add_argument("--no-adapters", action="store_true", help="the base model answers every track")
    parser.add_argument("--registry", type=Path, metavar="FILE",
                        help="serve each track's adapter promoted in this registry (`slm-swap flywheel`'s) instead of "
                             "--adapters-dir, with the confidence gate promoted with it unless --policy names one; a track "
                             "with none: the base model")
    parser.add_argument("--hosted", choices=("stand-in", "real"), default="stand-in",
                        help="stand-in: the scripted teacher, NOT A MODEL; real: HOSTED_BASE_URL/HOSTED_MODEL or "
                             "AZURE_* as for `eval` (default: %(default)s)")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=K",
                        help="stand-in: every K-th row of the split behaves as NAME (trajectories.teacher; repeatable)")
    parser.add_argument("--policy", action="append", type=Path, default=[], metavar="FILE",
                        help="a track's confidence gate, from `slm-swap gateway calibrate` (repeatable; default: "
                             "none, the validators alone decide)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight, and the SLM engine's batch (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="first N rows of each track only")
    parser.add_argument("--delta", default="0.01", help="compare's delta for the target line (default: %(default)s)")
    parser.add_argument("--slm-timeout", type=float, default=600.0,
                        help="seconds the gateway waits for the SLM engine (default: %(default)s; a slow CPU "
                             "batch must not turn into slm_unavailable)")
    parser.add_argument("--records", type=Path, default=DEFAULT_GATEWAY_RECORDS.with_name("replay.jsonl"),
                        help="the gateway's records file, emptied first (default: %(default)s)")
    parser.add_argument("--progress", choices=("bar", "lines", "off"), default="lines", help="(default: %(default)s)")
    args = parser.parse_args(argv)
    args.track = list(dict.fromkeys(args.track or ["toolcall"]))
    if args.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.fault and args.hosted != "stand-in":
        parser.error("--fault scripts the stand-in; a real hosted model has its own faults")
    return args


def hosted_side(args: argparse.Namespace, settings: Any, rows: dict[str, list[ReplayRow]], stack: ExitStack) -> Upstream:
    """The hosted model the gateway falls back to (and hosted alone is asked): the stand-in, or the real one."""
    if args.hosted == "real":
        client = HostedClient(settings)  # eval's retries and timeouts; one line without the settings
        print(f"hosted: {client.identity}")
        return Upstream(client.client, client.model)
    examples = list({r.example.id: r.example for track_rows in rows.values() for r in track_rows}.values())
    try:
        behaviours = parse_faults(args.fault, examples)
    except ValueError as exc:
        raise SlmSwapError(str(exc)) from None
    stand_in = stack.enter_context(ToolCallingTeacher(examples, behaviours, model=STAND_IN_MODEL))
    print(f"hosted: the scripted teacher, NOT A MODEL (every row's gold answer; faults: {', '.join(args.fault) or 'none'})")
    return Upstream(openai.OpenAI(base_url=stand_in.url, api_key="stand-in", max_retries=2), stand_in.model)


def slm_adapters(args: argparse.Namespace, settings: Any) -> dict[str, Path]:
    """Each track's adapter (the main job's `adapter_<track>`), said plainly where the base model answers."""
    if args.no_adapters:
        adapters = {}
    elif args.registry is not None:
        registry = load_registry(args.registry)
        adapters = {track: entry.adapter for track in args.track if (entry := promoted_adapter(registry, track))}
    else:
        adapters = track_adapters(args.adapters_dir, args.track)
    for track in args.track:
        if track in adapters:
            check_adapter_track(adapters[track], track)
            print(f"{track}: SLM = {settings.slm_model_path} with the adapter {adapters[track]}")
        else:
            why = ("--no-adapters" if args.no_adapters else f"none promoted in {args.registry}" if args.registry
                   else f"no adapter_{track} in {args.adapters_dir}")
            print(f"{track}: SLM = {settings.slm_model_path}, the BASE model ({why}: not fine-tuned)")
    return adapters


def run(args: argparse.Namespace) -> list[ReplayFigures]:
    """Everything is checked before the model loads; each track's figures (`within_delta`: kept within --delta)."""
    settings = load_settings()
    delta = parse_delta(args.delta)
    rows = {track: load_replay_rows(args.data_dir, track, args.split, args.limit) for track in args.track}
    policies = load_policies(args.policy, args.track)
    if args.registry is not None:  # a promoted adapter's own gate, where no --policy names one (as the gateway does)
        for track, entry in load_promoted(args.registry).items():
            if track in args.track and track not in policies and (gate := entry.gate()) is not None:
                policies[track] = gate
    with ExitStack() as stack:
        hosted = hosted_side(args, settings, rows, stack)
        adapters = slm_adapters(args, settings)
        args.records.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.records, "")
        began = time.perf_counter()
        engine = start_in_process_engine(settings.slm_model_path, adapters, args.track, batch_size=args.concurrency)
        stack.callback(engine.stop)
        print(f"SLM engine: {engine.identity}, loaded in {time.perf_counter() - began:.1f} s", flush=True)
        answers = EngineAnswers()
        engine_http = stack.enter_context(httpx.Client(event_hooks={"response": [answers.hook]}))
        slm_client = openai.OpenAI(base_url=engine.url, api_key=engine.api_key, timeout=args.slm_timeout, max_retries=1,
                                   http_client=engine_http)
        app = create_gateway_app(hosted, SlmEngine(slm_client, engine.models), args.records, settings.scrub,
                                 policies=policies)
        url = stack.enter_context(serving(app))
        gateway = openai.OpenAI(base_url=url, api_key="replay", max_retries=0, timeout=args.slm_timeout + 300)
        gate = ", ".join(f"{track} " + (f">= {policy.threshold:.6g}" if policy.threshold is not None else "accepts nothing")
                         + f" ({policy.path})" for track, policy in policies.items())
        print(f"gateway (route mode) on {url}; confidence gate: {gate or 'none, the validators alone'}; "
              f"records {args.records}", flush=True)
        return [replay_track(track, rows[track], gateway, hosted, answers, args.records, args, delta)
                for track in args.track]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    try:
        run(args)
    except SlmSwapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"\ntotal {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
