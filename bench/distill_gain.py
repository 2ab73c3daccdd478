"""Does distillation visibly teach the student? The embedded model's agent metrics on the distill
demo's test tasks before and after observation-masked training on the demo's accepted trajectories,
side by side (with the teacher's, for reference).

    .venv/bin/python bench/distill_gain.py [--tasks 160] [--val 8] [--test 16] [--max-steps 2]
                                           [--max-turn-tokens 128] [--also-batch-size 4]

The data is the demo's (`scripts/distill.sh`): the SCRIPTED teacher (`slm_swap.trajectories.teacher`,
not a model: it answers from BFCL's gold calls, a wrong call every 7th task and broken code every 11th)
over the first `--tasks` BFCL simple_python tasks, then `slm-swap capture`, `filter`, `build`. The evals
are `slm-swap eval --track agent`; the fine-tune is `slm-swap train --track agent` (accelerate launch,
cpu backend, the seed's fixed settings, one epoch, the agent track's batch size of one conversation per
step). `--also-batch-size N` trains a second adapter on the same rows with N per step and evaluates it
too, in the same run: what the track's batch size buys.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANGFUSE_DISABLED", "1")

from slm_swap.app.cli import main as cli  # noqa: E402
from slm_swap.core.tracks import TRACKS  # noqa: E402
from slm_swap.llm.embedded import fetch_embedded_model  # noqa: E402
from slm_swap.train.run import MANIFEST  # noqa: E402
from slm_swap.trajectories.capture import source_examples  # noqa: E402
from slm_swap.trajectories.teacher import ScriptedTeacher, parse_faults  # noqa: E402

FAULTS = ["wrong=7", "broken=11"]  # as scripts/distill.sh starts the teacher


def timed(step, *args) -> float:
    started = time.perf_counter()
    assert step(*args) == 0, f"{args}: failed"
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=160,
                        help="BFCL simple_python tasks captured (default: %(default)s)")
    parser.add_argument("--val", type=int, default=8, help="validation tasks (default: %(default)s)")
    parser.add_argument("--test", type=int, default=16, help="test tasks (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=2, help="agent turns per task (default: %(default)s)")
    parser.add_argument("--max-turn-tokens", type=int, default=128, help="new tokens per turn (default: %(default)s)")
    parser.add_argument("--also-batch-size", type=int, help="also train and evaluate an adapter with N rows per step")
    args = parser.parse_args()
    model = fetch_embedded_model()
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_API_KEY"):
        os.environ.pop(key, None)
    os.environ["SLM_MODEL_PATH"] = str(model)
    examples, _ = source_examples("bfcl", limit=None)
    with tempfile.TemporaryDirectory() as tmp, ScriptedTeacher(examples, parse_faults(FAULTS, examples)) as teacher:
        tmp = Path(tmp)
        os.environ.update(HOSTED_BASE_URL=teacher.url, HOSTED_MODEL=teacher.model)
        trajectories, data = tmp / "03" / "trajectories.jsonl", tmp / "02"
        assert cli(["capture", "--limit", str(args.tasks), "--max-steps", str(args.max_steps),
                    "--max-turn-tokens", str(args.max_turn_tokens), "--out", str(trajectories)]) == 0
        assert cli(["filter", "--trajectories", str(trajectories)]) == 0
        assert cli(["build", "--accepted", str(tmp / "03" / "accepted.jsonl"), "--out-dir", str(data),
                    "--val", str(args.val), "--test", str(args.test)]) == 0

        def evaluate(out: str, *extra: str) -> int:
            return cli(["eval", "--track", "agent", "--data-dir", str(data), "--out", str(tmp / out),
                        "--concurrency", str(args.test), *extra])

        def train(name: str, *extra: str) -> int:
            return cli(["train", "--track", "agent", "--data-dir", str(data), "--out", str(tmp / "04" / name),
                        "--backend", "cpu", *extra])

        runs = {"teacher": ("--model-kind", "azure"), "before": ("--model-kind", "slm")}
        timings = {name: timed(evaluate, f"{name}.json", *flags) for name, flags in runs.items()}
        adapters = {"after": ()}
        if args.also_batch_size:
            adapters[f"after (batch {args.also_batch_size})"] = ("--batch-size", str(args.also_batch_size))
        manifests = {}
        for number, (name, extra) in enumerate(adapters.items()):
            adapter = tmp / "04" / f"adapter_{number}"
            timings[f"train {name}"] = timed(train, adapter.name, *extra)
            manifests[name] = json.loads((adapter / MANIFEST).read_text())
            timings[name] = timed(evaluate, f"{name}.json", "--model-kind", "slm", "--adapter", str(adapter))
        metrics = {name: json.loads((tmp / f"{name}.json").read_text()) for name in [*runs, *adapters]}
        filtered = json.loads((tmp / "03" / "filter.json").read_text())

    print(f"data: {filtered['accepted']} of {filtered['n']} trajectories accepted ({filtered['reasons']}); "
          f"{manifests['after']['datasets']['train']['rows']} train rows, {metrics['before']['n']} test tasks, "
          f"max {args.max_steps} turns of {args.max_turn_tokens} tokens")
    for name, manifest in manifests.items():
        print(f"fine-tune for '{name}': {manifest['steps']} steps of {manifest['global_batch_size']} in "
              f"{manifest['duration_s']:.0f} s, val_loss {manifest['val_loss_before']:.3f} -> {manifest['val_loss']:.3f}")
    print("wall s: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items()))
    names = list(metrics)
    print(f"{'metric':<22}" + "".join(f"{name:>20}" for name in names))
    for metric in TRACKS["agent"].metric_names(*metrics.values()):
        print(f"{metric:<22}" + "".join(f"{metrics[name][metric]:>20.3f}" for name in names))
    print(f"{'mean_steps':<22}" + "".join(f"{metrics[name]['mean_steps']:>20.2f}" for name in names))


if __name__ == "__main__":
    main()
