"""The flywheel's gain, measured outside Prefect: the gateway over the scripted teacher and the untrained
embedded model, then flywheel rounds, each followed by a fresh batch of requests, with a per-round table.

    .venv/bin/python bench/flywheel_gain.py                     # after `slm-swap prepare` (scripts/main.sh)
    .venv/bin/python bench/flywheel_gain.py --batch 24 --rounds 2 --max-steps 20

Round 0: a batch of BFCL requests replayed through the gateway in route mode (`bench/gateway_replay.py`:
the real openai SDK over HTTP, the in-process SLM serving the registry's promoted adapter, the base
model before any promotion), so nearly everything falls back and the records are written. Then one
flywheel round (`slm_swap.app.flywheel.run_round`, the steps `slm-swap flywheel` runs) on those records:
rows, fine-tune, evaluate on the held-out traffic, gate, calibrate, promote. Round k: a FRESH batch
(rows of the prepared data no earlier batch held: never trained on, never held out) replayed with what
the registry now promotes, with the confidence gate promoted with it, and so on.

The rows: the prepared train and test rows of the track, cut into disjoint batches of --batch rows in
file order. The flywheel's "main job" rows are the prepared val rows only (its train and val files),
so what the SLM learns it learns from the gateway's traffic. The hosted side is the scripted teacher
(`gateway_stand_in`), NOT A MODEL: every row's gold answer, `--fault` rows wrong on purpose; the
flywheel's hosted eval asks the same stand-in (HOSTED_BASE_URL is set to it for this process).
Everything goes under --work (emptied first); the chart of coverage and accuracy per round is
`<work>/flywheel_gain.png`, the flywheel's own chart `<work>/rounds/<track>/rounds.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gateway_replay  # noqa: E402  (the sibling bench script)
from gateway_replay import ReplayFigures, load_replay_rows  # noqa: E402

from slm_swap.app.flywheel import run_round  # noqa: E402
from slm_swap.app.gateway_stand_in import ToolCallingTeacher  # noqa: E402
from slm_swap.app.requests import FlywheelRequest  # noqa: E402
from slm_swap.core.tracks import get_row_track  # noqa: E402
from slm_swap.evaluation.registry import load_registry, promoted_adapter  # noqa: E402
from slm_swap.evaluation.rows import load_split  # noqa: E402
from slm_swap.infra.config import DEFAULT_DATA_DIR, load_settings  # noqa: E402
from slm_swap.infra.errors import SlmSwapError  # noqa: E402
from slm_swap.infra.fileio import atomic_write_bytes, atomic_write_text  # noqa: E402
from slm_swap.trajectories.teacher import parse_faults  # noqa: E402

MARKER = ".flywheel_gain"  # a --work folder this bench made, and may empty again
HOSTED_MODEL = "scripted-stand-in-not-a-model"


@dataclass
class RoundFigures:
    number: int
    served: str  # what the SLM served during the replay
    replay: ReplayFigures
    flywheel: str = "-"  # what the flywheel round after the replay came to


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", default="toolcall", choices=("toolcall", "structured"), help="(default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="the prepared rows, <data-dir>/<track>/{train,val,test}.jsonl (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("slm_swap/06_gateway/flywheel_gain"),
                        help="everything this run writes; emptied first (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="flywheel rounds (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=24, help="requests replayed per round (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=20, help="fine-tuning steps per round (default: %(default)s)")
    parser.add_argument("--heldout-per-round", type=int, default=6,
                        help="traffic rows held out per round, never trained on (default: %(default)s)")
    parser.add_argument("--delta", default="0.01", help="promotion gate and target line (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight / SLM batch (default: %(default)s)")
    parser.add_argument("--fault", action="append", default=None, metavar="NAME=K",
                        help="stand-in faults (default: wrong=12 broken=15, as the main job)")
    args = parser.parse_args(argv)
    args.fault = args.fault if args.fault is not None else ["wrong=12", "broken=15"]
    if args.rounds < 1 or args.batch < 2:
        parser.error("--rounds must be >= 1 and --batch >= 2")
    return args


def fresh_work(work: Path) -> None:
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        raise SlmSwapError(f"{work}: not empty and not made by this bench; choose another --work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARKER).touch()


def jsonl(items: list[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def write_batches(args: argparse.Namespace) -> list[Path]:
    """Disjoint batches of the prepared train and test rows, each a data dir with a `test` split, and the
    flywheel's own "main job" rows (the prepared val rows); as many batches as the rows allow."""
    pool: list[tuple[dict, dict | None]] = []
    for split in ("train", "test"):
        _, rows, answers = load_split(args.data_dir, args.track, split)
        pool += [(row, answers[i] if answers else None) for i, row in enumerate(rows)]
    needed = args.batch * (args.rounds + 1)
    if len(pool) < needed:
        raise SlmSwapError(f"{args.data_dir}/{args.track}: {len(pool)} train+test rows, {needed} needed for "
                           f"{args.rounds + 1} batches of {args.batch} (prepare more, or lower --batch)")
    val = get_row_track(args.track).split_file(args.data_dir, "val")
    for split in ("train", "val"):
        atomic_write_bytes(args.work / "data" / args.track / f"{split}.jsonl", val.read_bytes())
    dirs = []
    for k in range(args.rounds + 1):
        chunk = pool[k * args.batch:(k + 1) * args.batch]
        folder = args.work / "batches" / f"round-{k}"
        atomic_write_text(folder / args.track / "test.jsonl", jsonl([row for row, _ in chunk]))
        if all(answer is not None for _, answer in chunk):
            atomic_write_text(folder / args.track / "test.answers.jsonl", jsonl([answer for _, answer in chunk]))
        dirs.append(folder)
    return dirs


def served_by(registry: Path, track: str) -> str:
    entry = promoted_adapter(load_registry(registry), track)
    return f"v{entry.version}" if entry else "base"


def replay(args: argparse.Namespace, number: int, batch_dir: Path) -> ReplayFigures:
    argv = ["--track", args.track, "--split", "test", "--data-dir", str(batch_dir), "--registry",
            str(args.work / "registry.json"), "--records", str(args.work / "records" / f"round-{number}.jsonl"),
            "--concurrency", str(args.concurrency), "--delta", args.delta, "--progress", "off"]
    argv += [item for fault in args.fault for item in ("--fault", fault)]  # the gate: the registry's, with its adapter
    print(f"\n######## round {number}: replay of {args.batch} fresh requests", flush=True)
    return gateway_replay.run(gateway_replay.parse_args(argv))[0]


def flywheel(args: argparse.Namespace, number: int, policy: Path) -> str:
    settings = load_settings()
    request = FlywheelRequest(track=args.track, max_steps=args.max_steps,
                              records=args.work / "records" / f"round-{number}.jsonl",
                              registry=args.work / "registry.json", policy=policy, data_dir=args.work / "data",
                              flywheel_dir=args.work / "rounds", delta=args.delta,
                              heldout_per_round=args.heldout_per_round, concurrency=args.concurrency,
                              batch_size=args.concurrency)
    print(f"\n######## flywheel round {number + 1} on round {number}'s records", flush=True)
    state = run_round(settings, request)
    print(f"flywheel round {number + 1}: {state.status} ({state.reason})", flush=True)
    return state.status + (f" v{state.promoted.version}" if state.promoted else "")


def print_table(args: argparse.Namespace, results: list[RoundFigures]) -> None:
    key = results[0].replay.accuracy_key
    print(f"\n== flywheel gain, {args.track}: {args.batch} fresh requests a round, {args.max_steps} steps a round, "
          f"hosted = scripted stand-in (NOT A MODEL)")
    header = f"{'round':<6}{'SLM':<6}{'coverage':>10}{'gateway ' + key:>22}{'hosted alone':>14}{'SLM alone':>11}  " \
             f"{'within delta':<13}then"
    print(header)
    for r in results:
        f = r.replay
        print(f"{r.number:<6}{r.served:<6}{f'{f.coverage}/{f.n}':>10}{f'{f.gateway}/{f.n}':>22}"
              f"{f'{f.hosted_alone}/{f.n}':>14}{f'{f.slm_alone}/{f.n}' if f.slm_asked else 'not asked':>11}  "
              f"{'yes' if f.within_delta else 'NO':<13}"
              f"{r.flywheel}")


def chart(path: Path, results: list[RoundFigures]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    rounds = [r.number for r in results]
    axes.plot(rounds, [r.replay.coverage / r.replay.n for r in results], "o-", label="coverage (SLM answered)")
    axes.plot(rounds, [r.replay.gateway / r.replay.n for r in results], "s-", label="gateway accuracy")
    axes.plot(rounds, [r.replay.hosted_alone / r.replay.n for r in results], "^--", label="hosted alone")
    axes.set(xlabel="round (fresh requests each)", ylim=(-0.02, 1.02), xticks=rounds, title="flywheel gain")
    axes.legend(loc="center right", fontsize=8)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path)


def run(args: argparse.Namespace) -> list[RoundFigures]:
    fresh_work(args.work)
    batches = write_batches(args)
    examples = [r.example for d in batches for r in load_replay_rows(d, args.track, "test", None)]
    examples += [r.example for r in load_replay_rows(args.work / "data", args.track, "val", None)]
    examples = list({e.id: e for e in examples}.values())
    policy = args.work / f"policy_{args.track}.json"
    results = []
    # The flywheel's hosted eval asks this stand-in (the replay starts its own, the same script).
    with ToolCallingTeacher(examples, parse_faults(args.fault, examples), model=HOSTED_MODEL) as hosted:
        os.environ.update(HOSTED_BASE_URL=hosted.url, HOSTED_MODEL=hosted.model)
        for number, batch_dir in enumerate(batches):
            served = served_by(args.work / "registry.json", args.track)
            results.append(RoundFigures(number, served, replay(args, number, batch_dir)))
            if number < args.rounds:
                results[-1].flywheel = flywheel(args, number, policy)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    try:
        results = run(args)
    except (SlmSwapError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print_table(args, results)
    chart(args.work / "flywheel_gain.png", results)
    print(f"\nchart: {args.work / 'flywheel_gain.png'}; the flywheel's rounds: {args.work / 'rounds' / args.track}"
          f" (rounds.png, round-<n>/report.md); total {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
