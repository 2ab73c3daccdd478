"""The decision rule: does the SLM trail the hosted model by more than `delta` on any core metric?

Pure functions over two metrics files of the same track, dataset and size. The rule is decided on
pass counts with exact arithmetic: a metric trails when (hosted passes - SLM passes) / n > delta,
with delta taken as the decimal the user typed (`Fraction("0.01")` is exactly 1/100). Float rates
would misjudge ties: 30/100 - 29/100 is 0.010000000000000009 in floats, "more than" 0.01.

Beside the rule (never changing it) an exact McNemar test on the per-example results says how
likely a difference this size is on this many examples by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from slm_swap.core.tracks import get_track
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json, read_jsonl

FINE_TUNE_EXIT = 10
# A rate read back from JSON is passes / n as a float; it is taken as a count only this close to one.
_COUNT_TOLERANCE = 1e-6
_MAX_N = 2**53  # rates times n are exact in floats up to here (and a larger n has no float at all)
# Decimal places a delta may have: finer than any test set resolves, and it bounds the arithmetic.
MAX_DELTA_PLACES = 100


def parse_delta(value: str | float | Fraction) -> Fraction:
    """delta as an exact fraction: text as typed, a float by its shortest decimal form (0.01 -> 1/100).
    A gap is a difference of two rates, so only 0 <= delta < 1 means anything: a delta of 1 or more
    could never be exceeded, and `1e999` has no float form to print or trace."""
    if isinstance(value, Fraction):
        delta = value
    else:
        delta = _decimal_fraction(repr(value) if isinstance(value, float) else str(value).strip(), value)
    if not 0 <= delta < 1:
        raise SlmSwapError(f"--delta must be a number with 0 <= delta < 1, got {_shown(value)}")
    return delta


def _decimal_fraction(text: str, value: object) -> Fraction:
    """The exact value of a decimal. Through `Decimal`, which keeps `1e-999999999` as digits and an
    exponent, where `Fraction(text)` would first compute 10**999999999."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise SlmSwapError(f"--delta must be a decimal number with 0 <= delta < 1, got {_shown(value)}") from None
    if not number.is_finite() or not 0 <= number < 1:
        raise SlmSwapError(f"--delta must be a number with 0 <= delta < 1, got {_shown(value)}")
    if number == 0:
        return Fraction(0)
    sign, digits, exponent = number.as_tuple()
    significant = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(significant)
    if -exponent > MAX_DELTA_PLACES:
        raise SlmSwapError(f"--delta must have at most {MAX_DELTA_PLACES} decimal places, got {_shown(value)}")
    return Fraction(int(significant), 10**-exponent)


def _shown(value: object) -> str:
    """The value as typed, quoted (argv may hold undecodable bytes as lone surrogates), cut to 40 characters."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:40] + "..."


def delta_text(delta: Fraction) -> str:
    return f"{float(delta):g}"


@dataclass(frozen=True)
class MetricRow:
    """One metric of both sides, as pass counts out of `n` examples."""

    name: str
    core: bool
    reference_passes: int
    candidate_passes: int
    n: int
    mcnemar_p: float | None  # None when per-example records are unavailable

    @property
    def reference(self) -> float:
        return self.reference_passes / self.n

    @property
    def candidate(self) -> float:
        return self.candidate_passes / self.n

    @property
    def gap(self) -> float:
        """How far the candidate (SLM) trails the reference (hosted); negative when it leads (for display)."""
        return (self.reference_passes - self.candidate_passes) / self.n

    def trails(self, delta: Fraction) -> bool:
        """The seed's rule, exactly: a core metric where the SLM is worse by more than delta."""
        return self.core and Fraction(self.reference_passes - self.candidate_passes, self.n) > delta


@dataclass(frozen=True)
class Decision:
    track: str
    delta: Fraction
    rows: list[MetricRow]
    n: int
    langfuse_trace_id: str | None = None

    @property
    def trailing(self) -> list[str]:
        return [row.name for row in self.rows if row.trails(self.delta)]

    @property
    def fine_tune(self) -> bool:
        return bool(self.trailing)

    def as_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "delta": float(self.delta),
            "n": self.n,
            "fine_tune": self.fine_tune,
            "trailing": self.trailing,
            "langfuse_trace_id": self.langfuse_trace_id,
            "metrics": {
                row.name: {
                    "reference": row.reference,
                    "candidate": row.candidate,
                    "reference_passes": row.reference_passes,
                    "candidate_passes": row.candidate_passes,
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
    for key in ("n", "dataset", *get_track(track).core_metrics):
        if key not in data:
            raise SlmSwapError(f"{path}: not a metrics file for track {track!r} (missing {key!r})")
    n = data["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise SlmSwapError(f"{path}: 'n' must be a whole number >= 1, got {_shown(n)}")
    if n > _MAX_N:
        raise SlmSwapError(f"{path}: 'n' must be a whole number at most 2**53, got {_shown(n)}")
    if not isinstance(data.get("records_path"), (str, type(None))):
        raise SlmSwapError(f"{path}: 'records_path' must be a file name or null, got {_shown(data['records_path'])}")
    if not isinstance(data["dataset"], dict) or not isinstance(data["dataset"].get("sha256"), str):
        raise SlmSwapError(f"{path}: 'dataset' must be an object with the dataset's 'sha256', got {data['dataset']!r}")
    return data


def pass_count(path: Path, data: dict[str, Any], name: str) -> int:
    """How many of the file's n examples passed metric `name` (its rate times n, checked to be whole)."""
    rate, n = data[name], data["n"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate) or not 0 <= rate <= 1:
        raise SlmSwapError(f"{path}: {name!r} must be a rate between 0 and 1, got {rate!r}")
    passes = round(rate * n)
    if abs(rate * n - passes) > _COUNT_TOLERANCE:
        raise SlmSwapError(f"{path}: {name}={rate!r} is not a whole number of passes out of n={n}")
    return passes


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
    """The per-example records beside a metrics file, by index; None when absent or incomplete."""
    name = data.get("records_path")
    if not name:
        return None
    path = Path(metrics_path).parent / name
    if not path.exists():
        return None
    records = read_jsonl(path, "records file")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not isinstance(record.get("index"), int):
            raise SlmSwapError(f"{path}: record {number} has no whole-number 'index' (not a records file of slm-swap eval)")
    records.sort(key=lambda record: record["index"])
    return records if len(records) == data["n"] else None


def decide(
    track: str,
    reference_path: Path,
    candidate_path: Path,
    delta: str | float | Fraction,
) -> Decision:
    """Compare the hosted (reference) and SLM (candidate) metrics files of one track."""
    core = get_track(track).core_metrics
    delta = parse_delta(delta)
    reference = load_metrics_file(reference_path, track)
    candidate = load_metrics_file(candidate_path, track)
    for key, label in (("n", "sizes"), ("split", "splits")):
        if reference.get(key) != candidate.get(key):
            raise SlmSwapError(
                f"cannot compare different {label}: {reference_path} has {key}={reference.get(key)!r}, "
                f"{candidate_path} has {key}={candidate.get(key)!r}"
            )
    ref_hash, cand_hash = reference["dataset"]["sha256"], candidate["dataset"]["sha256"]
    if ref_hash != cand_hash:
        raise SlmSwapError(
            f"cannot compare different datasets: {reference_path} used {reference['dataset'].get('path')} "
            f"({ref_hash[:12]}), {candidate_path} used {candidate['dataset'].get('path')} ({cand_hash[:12]})"
        )
    ref_records = _load_records(reference_path, reference)
    cand_records = _load_records(candidate_path, candidate)
    names = get_track(track).metric_names(reference, candidate)
    n = reference["n"]
    rows = []
    for name in names:
        key = name.removesuffix("_rate")
        p_value = None
        if ref_records and cand_records and all(key in r for r in ref_records + cand_records):
            p_value = mcnemar_exact([bool(r[key]) for r in ref_records], [bool(r[key]) for r in cand_records])
        rows.append(MetricRow(name, name in core, pass_count(reference_path, reference, name),
                              pass_count(candidate_path, candidate, name), n, p_value))
    return Decision(track=track, delta=delta, rows=rows, n=n)


def format_decision(decision: Decision) -> str:
    """The per-metric table and the `FINE_TUNE=` line automation reads; verdicts by the same rule."""
    lines = [
        f"track={decision.track} n={decision.n} delta={delta_text(decision.delta)}",
        f"{'metric':<22} {'hosted':>8} {'slm':>8} {'gap':>8} {'mcnemar_p':>10}  verdict",
    ]
    for row in decision.rows:
        p_text = "-" if row.mcnemar_p is None else f"{row.mcnemar_p:.3f}"
        verdict = "info" if not row.core else "SLM trails" if row.trails(decision.delta) else "ok"
        lines.append(f"{row.name:<22} {row.reference:>8.3f} {row.candidate:>8.3f} {row.gap:>+8.3f} {p_text:>10}  {verdict}")
    lines.append(f"FINE_TUNE={int(decision.fine_tune)}")
    return "\n".join(lines)
