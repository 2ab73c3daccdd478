"""One Langfuse trace per gateway request, made from its record: a generation per model call (model,
usage, latency), a score for the route and one for the SLM answer's acceptance, tags for track and mode.

Made from the record as it is written (scrubbed, and metadata only under `--no-log-content`), so a
trace never says more than the records file does."""

from __future__ import annotations

from typing import Any

from slm_swap.infra.tracing import Tracer

TRACE_NAME = "gateway-request"
_SUMMARY = ("id", "requested_model", "track", "mode", "route", "verdict", "reason", "status", "latency_s")


def _generation(side: str, part: dict[str, Any]) -> dict[str, Any]:
    usage = part.get("usage") if isinstance(part.get("usage"), dict) else {}
    return {"name": f"{side}-model", "input": None, "output": part.get("output", part.get("error")),
            "metadata": {"failed": "error" in part or bool(part.get("failed"))},
            "generation": {"model": part.get("model"), "prompt_tokens": usage.get("prompt_tokens"),
                           "completion_tokens": usage.get("completion_tokens"), "latency_s": part.get("latency_s")}}


def trace_request(tracer: Tracer, record: dict[str, Any]) -> str | None:
    """Trace one request's record; its trace id (None when tracing is off)."""
    summary = {key: record.get(key) for key in _SUMMARY}
    tags = [f"track:{record.get('track') or 'none'}", f"mode:{record.get('mode') or 'none'}", f"route:{record.get('route')}"]
    with tracer.run(TRACE_NAME, input={"requested_model": record.get("requested_model"), "track": record.get("track"),
                                       "not_swappable": record.get("not_swappable")},
                    metadata=summary, tags=tags) as run:
        calls = [_generation(side, record[side]) for side in ("slm", "hosted") if isinstance(record.get(side), dict)]
        if calls:
            run.child("model-calls", input=None, output=None, metadata={"calls": len(calls)}, children=calls)
        if record.get("shadow"):
            run.event("shadow", metadata=dict(record["shadow"]))
        run.score("route_slm", 1.0 if record.get("route") == "slm" else 0.0)  # 1: the SLM's answer was served
        if record.get("verdict") in ("valid", "invalid", "low_confidence"):  # the SLM answered: was its answer accepted?
            run.score("slm_accepted", 1.0 if record["verdict"] == "valid" else 0.0)
        run.update(output={"route": record.get("route"), "reason": record.get("reason"), "status": record.get("status")})
        return getattr(run, "trace_id", None)
