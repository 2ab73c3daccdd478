"""The decision rule: does the SLM trail the hosted model by more than `delta` on any core metric?

Pure functions over two metrics files of the same track, dataset and size. Beside the rule (never
changing it) an exact McNemar test on the per-example results says how likely a difference this
size is on this many examples by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_swap.errors import SlmSwapError
from slm_swap.fileio import read_json, read_jsonl
from slm_swap.metrics import AST_METRIC, CORE_METRICS
from slm_swap.prompts import check_track

FINE_TUNE_EXIT = 10


@dataclass(frozen=True)
class MetricRow:
    name: str
    core: bool
    reference: float
    candidate: float
    mcnemar_p: float | None  # None when per-example records are unavailable

    @property
    def gap(self) -> float:
        """How far the candidate (SLM) trails the reference (hosted); negative when it leads."""
        return self.reference - self.candidate


@dataclass(frozen=True)
class Decision:
    track: str
    delta: float
    rows: list[MetricRow]
    n: int
    langfuse_trace_id: str | None = None

    @property
    def trailing(self) -> list[str]:
        return [row.name for row in self.rows if row.core and row.gap > self.delta]

    @property
    def fine_tune(self) -> bool:
        return bool(self.trailing)

    def as_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "delta": self.delta,
            "n": self.n,
            "fine_tune": self.fine_tune,
            "trailing": self.trailing,
            "langfuse_trace_id": self.langfuse_trace_id,
            "metrics": {
                row.name: {
                    "reference": row.reference,
                    "candidate": row.candidate,
                    "gap": row.gap,
                    "core": row.core,
                    "mcnemar_p": row.mcnemar_p,
                }
                for row in self.rows
            },
        }


def load_metrics_file(path: Path, track: str) -> dict[str, Any]:
    """Read a metrics file written by `slm-swap eval` and check it belongs to `track`."""
    data = read_json(Path(path), "metrics file")
    if not isinstance(data, dict):
        raise SlmSwapError(f"{path}: not a metrics file (expected a JSON object)")
    if data.get("track") != track:
        raise SlmSwapError(f"{path}: metrics are for track {data.get('track')!r}, not {track!r}")
    for key in ("n", "dataset", *CORE_METRICS[track]):
        if key not in data:
            raise SlmSwapError(f"{path}: not a metrics file for track {track!r} (missing {key!r})")
    return data


def mcnemar_exact(reference: list[bool], candidate: list[bool]) -> float:
    """Two-sided exact McNemar p-value on paired pass/fail results."""
    only_reference = sum(1 for r, c in zip(reference, candidate) if r and not c)
    only_candidate = sum(1 for r, c in zip(reference, candidate) if c and not r)
    discordant = only_reference + only_candidate
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_reference, only_candidate) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def _load_records(metrics_path: Path, data: dict[str, Any]) -> list[dict[str, Any]] | None:
    name = data.get("records_path")
    if not name:
        return None
    path = Path(metrics_path).parent / name
    if not path.exists():
        return None
    records = sorted(read_jsonl(path, "records file"), key=lambda record: record["index"])
    return records if len(records) == data["n"] else None


def decide(
    track: str,
    reference_path: Path,
    candidate_path: Path,
    delta: float,
) -> Decision:
    """Compare the hosted (reference) and SLM (candidate) metrics files of one track."""
    check_track(track)
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
        raise SlmSwapError(f"--delta must be a finite number >= 0, got {delta}")
    reference = load_metrics_file(reference_path, track)
    candidate = load_metrics_file(candidate_path, track)
    for key, label in (("n", "sizes"), ("split", "splits")):
        if reference.get(key) != candidate.get(key):
            raise SlmSwapError(
                f"cannot compare different {label}: {reference_path} has {key}={reference.get(key)!r}, "
                f"{candidate_path} has {key}={candidate.get(key)!r}"
            )
    ref_hash, cand_hash = reference["dataset"].get("sha256"), candidate["dataset"].get("sha256")
    if ref_hash != cand_hash:
        raise SlmSwapError(
            f"cannot compare different datasets: {reference_path} used {reference['dataset'].get('path')} "
            f"({str(ref_hash)[:12]}), {candidate_path} used {candidate['dataset'].get('path')} ({str(cand_hash)[:12]})"
        )
    ref_records = _load_records(reference_path, reference)
    cand_records = _load_records(candidate_path, candidate)
    names = list(CORE_METRICS[track])
    if AST_METRIC in reference and AST_METRIC in candidate:
        names.append(AST_METRIC)
    rows = []
    for name in names:
        key = name.removesuffix("_rate")
        p_value = None
        if ref_records and cand_records and all(key in r for r in ref_records + cand_records):
            p_value = mcnemar_exact([bool(r[key]) for r in ref_records], [bool(r[key]) for r in cand_records])
        rows.append(MetricRow(name, name in CORE_METRICS[track], float(reference[name]), float(candidate[name]), p_value))
    return Decision(track=track, delta=float(delta), rows=rows, n=int(reference["n"]))


def format_decision(decision: Decision) -> str:
    """The per-metric table and the `FINE_TUNE=` line automation reads."""
    lines = [
        f"track={decision.track} n={decision.n} delta={decision.delta:g}",
        f"{'metric':<22} {'hosted':>8} {'slm':>8} {'gap':>8} {'mcnemar_p':>10}  verdict",
    ]
    for row in decision.rows:
        p_text = "-" if row.mcnemar_p is None else f"{row.mcnemar_p:.3f}"
        if not row.core:
            verdict = "info"
        elif row.gap > decision.delta:
            verdict = "SLM trails"
        else:
            verdict = "ok"
        lines.append(f"{row.name:<22} {row.reference:>8.3f} {row.candidate:>8.3f} {row.gap:>+8.3f} {p_text:>10}  {verdict}")
    lines.append(f"FINE_TUNE={int(decision.fine_tune)}")
    return "\n".join(lines)
