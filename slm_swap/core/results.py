"""The metrics file: one JSON document per eval run, the contract `compare` and the pipeline read.

    {"track", "split", "n", "errors",
     "<metric>_rate": ..., "ci95": {"<metric>_rate": [low, high]},
     "model": {"kind": "azure"|"slm", "identity", "adapter"},
     "dataset": {"path", "sha256"}, "records_path", "timings", "langfuse_trace_id"}

Metric names sit at the top level, as in the seed's files. Per-example records live in the JSONL
file named by `records_path` (relative to the metrics file).
"""

from __future__ import annotations

from typing import Any

from slm_swap.core.metrics import summarize


def metrics_document(
    *,
    track: str,
    split: str,
    dataset: dict[str, Any],
    model: dict[str, Any],
    records: list[dict[str, Any]],
    records_path: str | None,
    timings: dict[str, Any] | None = None,
    langfuse_trace_id: str | None = None,
) -> dict[str, Any]:
    return {
        "track": track,
        "split": split,
        "n": len(records),
        "errors": sum(1 for record in records if record.get("error")),
        **summarize(records, track),
        "model": model,
        "dataset": dataset,
        "records_path": records_path,
        "timings": timings or {},
        "langfuse_trace_id": langfuse_trace_id,
    }
