"""`report`: report.md/.json/.png in the eval folder (`slm_swap.app.report`), plus a markdown and a
table artifact (keys `slm-swap-report`, `slm-swap-metrics`) on the flow run."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.report import TrackReport, summary, table_rows, write_report
from slm_swap.infra.config import load_settings
from slm_swap.infra.tracing import comparison_url, trace_url

REPORT_KEY = "slm-swap-report"
METRICS_KEY = "slm-swap-metrics"


@task(name="report", task_run_name="report", cache_policy=NO_CACHE)
def build_report(config: PipelineConfig, reports: list[TrackReport], flow_run_id: str | None = None,
                 preface: list[str] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    settings = load_settings()
    files, text = write_report(reports, config.eval_dir, flow_run_id=flow_run_id,
                               trace_url=lambda trace_id: trace_url(settings, trace_id), comparison_url=comparison_url,
                               preface=preface, extra=extra)
    create_markdown_artifact(text, key=REPORT_KEY, description="SLM Swap: decisions, metrics and Langfuse traces")
    create_table_artifact(table_rows(reports), key=METRICS_KEY, description="hosted vs SLM (vs fine-tuned SLM) per metric")
    return {**summary(reports, flow_run_id=flow_run_id), **(extra or {}),
            "report": {"markdown": str(files.markdown), "json": str(files.json), "chart": str(files.chart)}}
