"""Langfuse tracing for `eval`, `train` and `compare`: the only package that imports `langfuse`.

    with open_tracer(settings) as tracer:   # SlmSwapError unless LANGFUSE_* are set or LANGFUSE_DISABLED=1
        with tracer.run("eval toolcall azure", input={...}, metadata={"prefect_flow_run_id": id}) as run:
            run.use_dataset("slm-swap/xlam/toolcall/test", items, metadata={"sha256": sha}, experiment="azure gpt-4o")
            run.example(0, input=prompt, output=text, metadata={...}, scores={"valid_call": True},
                        generation={"model": "gpt-4o", "prompt_tokens": 812, "completion_tokens": 31, "latency_s": 0.9})
            run.score("valid_call_rate", 0.82)
        tracer.flush()   # False, plus one stderr line, if something was not delivered
        run.experiment   # the dataset run: {"dataset", "run", "id", "url"}

A run is a trace; `event` an event observation, `score` a score on the trace. An eval that calls
`use_dataset` is a Langfuse experiment: its split a dataset (one item per row, uploaded once, in the
background while the eval runs), the eval a dataset run whose example traces link to their items,
each with a generation (model, tokens, latency) and its metrics as scores, the rates as run scores.
Under LANGFUSE_DISABLED=1 a `NullTracer` records nothing through the same interface.

Public SDK API only: one client per process (the SDK keeps one per public key), `mask=` and
`mask_otel_spans=`, `start_as_current_observation`, `score_trace`, the dataset calls,
`run_experiment`, `flush`, `shutdown`. The SDK logs failed deliveries rather than raising: its log
records are collected (not printed) and `flush()` reports them in one line. `flush()` publishes the
experiments and flushes on a worker thread joined with `flush_timeout_s`: a Langfuse that is down,
failing or hanging costs a command at most that, plus `EXIT_TIMEOUT_S` for the client's shutdown at
exit (which also removes the SDK's own, unbounded, exit hook). Values under a key containing
key/secret/token/password and the secret values in `Settings` become "[redacted]", values are
capped at 4 KB, and every exported string attribute is scrubbed once more.

Modules, one concern each: `interface` (Run, Tracer and their null versions), `settings` (checks and
URLs), `masking` (secret scrubbing and caps), `problems` (the SDK's log records), `clients` (the
process's clients and bounded threads), `datasets` (eval splits as datasets), `langfuse_tracer`
(runs as traces, evals as experiments).
"""

from __future__ import annotations

import sys

from slm_swap.infra.config import REDACTED, Settings
from slm_swap.infra.tracing.clients import EXIT_TIMEOUT_S
from slm_swap.infra.tracing.datasets import DATASET_WRITERS
from slm_swap.infra.tracing.interface import NullRun, NullTracer, Run, Tracer
from slm_swap.infra.tracing.langfuse_tracer import LangfuseTracer
from slm_swap.infra.tracing.masking import SECRET_KEY_PARTS, VALUE_CAP_BYTES
from slm_swap.infra.tracing.settings import check_tracing_settings, comparison_url, trace_url

__all__ = ["DATASET_WRITERS", "EXIT_TIMEOUT_S", "REDACTED", "SECRET_KEY_PARTS", "VALUE_CAP_BYTES", "LangfuseTracer",
           "NullRun", "NullTracer", "Run", "Tracer", "check_tracing_settings", "comparison_url", "open_tracer",
           "trace_url"]


def open_tracer(settings: Settings, *, flush_timeout_s: float = 10.0) -> Tracer:
    """The tracer for one command: a `LangfuseTracer`, or a `NullTracer` under LANGFUSE_DISABLED=1."""
    check_tracing_settings(settings)
    if settings.langfuse_disabled:
        print("warning: LANGFUSE_DISABLED=1: tracing is off, nothing is sent to Langfuse", file=sys.stderr)
        return NullTracer()
    return LangfuseTracer(settings, flush_timeout_s=flush_timeout_s)
