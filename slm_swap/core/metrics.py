"""The seed's metrics: each example scored by its track's object (`get_track(name).score(record)`,
`slm_swap.core.tracks`), then pass rates and their bootstrap intervals, as pure functions.

A model's output is stripped of surrounding whitespace and nothing else: no code-fence removal,
no JSON repair. An output of `None` is a request that failed; it fails every metric.

Structured track:  json_valid (parses as JSON), exact_match (canonical JSON equals the gold).
Tool-call track:   valid_call (exactly one `<tool_call name="...">{json object}</tool_call>` and
                   nothing else), name_match, args_exact (canonical arguments equal the gold).
Both, where BFCL possible answers exist: args_ast_match (any acceptable alternative, optional
parameters omitted, int for float), reported beside the core metrics, never used by the decision.
"""

from __future__ import annotations

import random
from typing import Any

from slm_swap.core.tracks import get_row_track, get_track, parse_structured, parse_toolcall  # noqa: F401 (the parsers, re-exported)


def gold_problem(track: str, completion: str) -> str | None:
    """Why a dataset row's gold completion cannot be scored on `track`, or None when it can."""
    return get_row_track(track).gold_problem(completion)


def metric_keys(records: list[dict[str, Any]], track: str) -> list[str]:
    """Per-example keys present in every record: the core ones, then any the track scores beside them."""
    return get_track(track).metric_keys(records)


def bootstrap_interval(passes: list[bool], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of a pass rate (fixed seed: same data, same interval)."""
    n = len(passes)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    values = [1 if p else 0 for p in passes]
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    return (means[int(0.025 * (resamples - 1))], means[int(round(0.975 * (resamples - 1)))])


def summarize(records: list[dict[str, Any]], track: str) -> dict[str, Any]:
    """Rates (`<key>_rate`) and their 95% intervals (`ci95`) over per-example records."""
    summary: dict[str, Any] = {}
    intervals: dict[str, list[float]] = {}
    for key in metric_keys(records, track):
        passes = [bool(record[key]) for record in records]
        name = f"{key}_rate"
        summary[name] = sum(passes) / len(passes) if passes else 0.0
        intervals[name] = list(bootstrap_interval(passes))
    summary["ci95"] = intervals
    return summary
