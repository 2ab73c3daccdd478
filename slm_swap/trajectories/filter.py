"""`slm-swap filter`: keep the trajectories that pass automatic correctness checks, with a reason
for each (the checks and reasons: `slm_swap.core.verdict`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from slm_swap.core.verdict import REASONS, verdict
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_text, check_writable_dir, jsonl_text, sha256_file, write_json
from slm_swap.trajectories.records import read_trajectories


def accepted_path(out_dir: Path) -> Path:
    return Path(out_dir) / "accepted.jsonl"


def filter_trajectories(path: Path, out_dir: Path, *, max_steps: int | None = None) -> dict[str, Any]:
    """Write `accepted.jsonl`, `rejected.jsonl` (each record with its verdict) and `filter.json` (counts
    by reason) under `out_dir`; returns the summary."""
    if max_steps is not None and max_steps < 1:
        raise SlmSwapError(f"--max-steps must be >= 1, got {max_steps}")
    records = read_trajectories(path)
    if not records:
        raise SlmSwapError(f"{path}: no trajectories to filter")
    check_writable_dir(Path(out_dir), "--out-dir")
    judged = [{**record, "verdict": verdict(record, max_steps)} for record in records]
    accepted = [r for r in judged if r["verdict"]["accepted"]]
    rejected = [r for r in judged if not r["verdict"]["accepted"]]
    reasons = Counter(r["verdict"]["reason"] for r in rejected)
    summary = {
        "trajectories": {"path": str(path), "sha256": sha256_file(Path(path))},
        "max_steps": max_steps,
        "n": len(judged),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "acceptance_rate": len(accepted) / len(judged),
        "reasons": {reason: reasons[reason] for reason in REASONS if reasons[reason]},
    }
    atomic_write_text(accepted_path(out_dir), jsonl_text(accepted))
    atomic_write_text(Path(out_dir) / "rejected.jsonl", jsonl_text(rejected))
    write_json(Path(out_dir) / "filter.json", summary)
    return summary
