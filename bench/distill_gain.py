"""Does distillation visibly teach the student? The embedded model's agent metrics on the distill
demo's test tasks before and after observation-masked training on the demo's accepted trajectories,
side by side (with the teacher's, for reference).

    .venv/bin/python bench/distill_gain.py [--tasks 96] [--val 8] [--test 8] [--max-steps 2]

The data is the demo's (`scripts/distill.sh`): the SCRIPTED teacher (`slm_swap.trajectories.teacher`,
not a model: it answers from BFCL's gold calls, a wrong call every 7th task and broken code every 11th)
over the first `--tasks` BFCL simple_python tasks, then `slm-swap capture`, `filter`, `build`. The evals
are `slm-swap eval --track agent`; the fine-tune is the library's own (`slm_swap.training.run.train`,
cpu backend, the seed's fixed settings, one epoch), the same as `slm-swap train --track agent`.
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

from slm_swap.cli import main as cli  # noqa: E402
from slm_swap.models import fetch_embedded_model  # noqa: E402
from slm_swap.trajectories.capture import source_examples  # noqa: E402
from slm_swap.trajectories.teacher import ScriptedTeacher, parse_faults  # noqa: E402
from slm_swap.tracks import TRACKS  # noqa: E402
from slm_swap.training.run import TrainRequest, train  # noqa: E402

FAULTS = ["wrong=7", "broken=11"]  # as scripts/distill.sh starts the teacher


def timed(step, *args) -> float:
    started = time.perf_counter()
    assert step(*args) == 0, f"{args}: failed"
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=96, help="BFCL simple_python tasks captured (default: %(default)s)")
    parser.add_argument("--val", type=int, default=8, help="validation tasks (default: %(default)s)")
    parser.add_argument("--test", type=int, default=8, help="test tasks (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=2, help="agent turns per task (default: %(default)s)")
    args = parser.parse_args()
    model = fetch_embedded_model()
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_API_KEY"):
        os.environ.pop(key, None)
    os.environ["SLM_MODEL_PATH"] = str(model)
    examples, _ = source_examples("bfcl", limit=None)
    with tempfile.TemporaryDirectory() as tmp, ScriptedTeacher(examples, parse_faults(FAULTS, examples)) as teacher:
        tmp = Path(tmp)
        os.environ.update(HOSTED_BASE_URL=teacher.url, HOSTED_MODEL="scripted-teacher")
        trajectories, data, adapter = tmp / "03" / "trajectories.jsonl", tmp / "02", tmp / "04" / "adapter_agent"
        assert cli(["capture", "--limit", str(args.tasks), "--max-steps", str(args.max_steps), "--out", str(trajectories)]) == 0
        assert cli(["filter", "--trajectories", str(trajectories)]) == 0
        assert cli(["build", "--accepted", str(tmp / "03" / "accepted.jsonl"), "--out-dir", str(data),
                    "--val", str(args.val), "--test", str(args.test)]) == 0
        evaluate = lambda out, *extra: cli(["eval", "--track", "agent", "--data-dir", str(data), "--out", str(tmp / out),  # noqa: E731
                                            *extra])
        timings = {"teacher": timed(evaluate, "teacher.json", "--model-kind", "azure"),
                   "before": timed(evaluate, "before.json", "--model-kind", "slm")}
        manifest = train(TrainRequest(track="agent", train_path=data / "agent" / "train.jsonl",
                                      val_path=data / "agent" / "val.jsonl", out_dir=adapter, model_path=model,
                                      backend="cpu", save_steps=10_000))
        timings["after"] = timed(evaluate, "after.json", "--model-kind", "slm", "--adapter", str(adapter))
        teacher_m, before, after = (json.loads((tmp / f"{name}.json").read_text()) for name in ("teacher", "before", "after"))
        filtered = json.loads((tmp / "03" / "filter.json").read_text())
    print(f"data: {filtered['accepted']} of {filtered['n']} trajectories accepted ({filtered['reasons']}); "
          f"{manifest['datasets']['train']['rows']} train rows, {after['n']} test tasks, max {args.max_steps} turns")
    print(f"fine-tune: {manifest['steps']} steps in {manifest['duration_s']:.0f} s, "
          f"val_loss {manifest['val_loss_before']:.3f} -> {manifest['val_loss']:.3f}; evals: teacher {timings['teacher']:.0f} s, "
          f"student before {timings['before']:.0f} s, after {timings['after']:.0f} s")
    print(f"{'metric':<22} {'teacher':>8} {'before':>8} {'after':>8} {'gain':>8}")
    for name in TRACKS["agent"].metric_names(teacher_m, before, after):
        print(f"{name:<22} {teacher_m[name]:>8.3f} {before[name]:>8.3f} {after[name]:>8.3f} {after[name] - before[name]:>+8.3f}")
    print(f"{'mean_steps':<22} {teacher_m['mean_steps']:>8.2f} {before['mean_steps']:>8.2f} {after['mean_steps']:>8.2f}")


if __name__ == "__main__":
    main()
