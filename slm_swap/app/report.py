"""The pipeline's report: baseline and fine-tuned metrics, gaps, decisions and Langfuse trace ids,
as table rows, markdown and a PNG chart (matplotlib's Agg canvas, no display needed).

It opens with the story in words a newcomer follows, per track: what each side scored (passes out
of n test rows), what the gate decided, and how many of the rows the SLM was behind by fine-tuning
won back. A hosted side that is the scripted stand-in (`trajectories.teacher`) is named as such.

Pure functions over `TrackReport`s, plus `write_report` which writes `report.md`, `report.json`
and `report.png` into the eval folder. The Prefect report task turns the same rows and markdown
into artifacts.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from slm_swap.core.compare import Decision, delta_text, format_decision
from slm_swap.core.tracks import get_track
from slm_swap.infra.fileio import atomic_write_bytes, atomic_write_text, write_json
from slm_swap.trajectories.teacher import is_scripted

SIDES = (("hosted", "hosted"), ("slm", "SLM"), ("slm_ft", "SLM fine-tuned"))


@dataclass(frozen=True)
class TrackReport:
    """One track's story: both baselines, the decision, and (if trained) the adapter and its results."""

    track: str
    hosted: dict[str, Any]
    slm: dict[str, Any]
    decision: Decision
    trained: bool = False
    training: dict[str, Any] | None = None  # the adapter manifest
    slm_ft: dict[str, Any] | None = None
    final: Decision | None = None

    def metric_names(self) -> list[str]:
        return get_track(self.track).metric_names(self.hosted, self.slm)

    def trace_ids(self) -> dict[str, str | None]:
        """Every Langfuse trace id of this track, by step (None when tracing was off)."""
        ids = {
            "eval hosted": self.hosted.get("langfuse_trace_id"),
            "eval slm": self.slm.get("langfuse_trace_id"),
            "compare": self.decision.langfuse_trace_id,
        }
        if self.training is not None:
            ids["train"] = self.training.get("langfuse_trace_id")
        if self.slm_ft is not None:
            ids["eval slm ft"] = self.slm_ft.get("langfuse_trace_id")
        if self.final is not None:
            ids["compare ft"] = self.final.langfuse_trace_id
        return ids

    def experiments(self) -> list[dict[str, Any] | None]:
        """The evals' Langfuse dataset runs (hosted, SLM, fine-tuned SLM), None where not recorded."""
        return [d.get("langfuse_experiment") if d else None for d in (self.hosted, self.slm, self.slm_ft)]


def _rate(document: dict[str, Any] | None, name: str) -> float | None:
    if document is None or name not in document:
        return None
    return float(document[name])


def table_rows(reports: list[TrackReport]) -> list[dict[str, Any]]:
    """One row per track and metric: the three sides, the gaps before and after, the decisions."""
    rows = []
    for report in reports:
        for name in report.metric_names():
            hosted, slm, slm_ft = _rate(report.hosted, name), _rate(report.slm, name), _rate(report.slm_ft, name)
            rows.append({
                "track": report.track,
                "metric": name,
                "core": name in get_track(report.track).core_metrics,
                "hosted": hosted,
                "slm": slm,
                "slm_ft": slm_ft,
                "gap": None if hosted is None or slm is None else round(hosted - slm, 6),
                "gap_ft": None if hosted is None or slm_ft is None else round(hosted - slm_ft, 6),
                "fine_tune": int(report.decision.fine_tune),
                "trained": report.trained,
                "fine_tune_after": None if report.final is None else int(report.final.fine_tune),
            })
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def verdict(report: TrackReport) -> str:
    """One line per track: what the decision was and what training did about it."""
    before = f"FINE_TUNE={int(report.decision.fine_tune)}"
    if not report.trained:
        return f"{before}: the SLM trails, not fine-tuned" if report.decision.fine_tune else f"{before}: the SLM keeps up"
    before += ": the SLM trailed" if report.decision.fine_tune else ": the SLM kept up, fine-tuned anyway"
    if report.final is None:
        return f"{before}; fine-tuned (no final compare)"
    after = "it still trails" if report.final.fine_tune else "it keeps up"
    return f"{before}; fine-tuned, {after} (FINE_TUNE={int(report.final.fine_tune)})"


def hosted_identity(report: TrackReport) -> str | None:
    model = report.hosted.get("model")
    return model.get("identity") if isinstance(model, dict) else None


def stand_in_note(reports: list[TrackReport]) -> str | None:
    """The warning a report opens with when the hosted answers came from the scripted stand-in."""
    identities = sorted({i for report in reports if is_scripted(i := hosted_identity(report))})
    if not identities:
        return None
    return (f"The hosted side here is a SCRIPTED STAND-IN, NOT A MODEL ({', '.join(identities)}): it answers each "
            "test row from the row's gold answer and is wrong on purpose on a few rows, so it scores high but not "
            "perfectly. Set AZURE_* to evaluate a real deployment.")


def _ft_passes(report: TrackReport, name: str, n: int) -> int | None:
    """The fine-tuned SLM's passes on `name`: from the final compare, else from its metrics file."""
    if report.final is not None:
        return next((row.candidate_passes for row in report.final.rows if row.name == name), None)
    rate = _rate(report.slm_ft, name)
    return None if rate is None else round(rate * n)


def story(report: TrackReport) -> list[str]:
    """The track in plain words: the gate's decision, then one line per core metric with pass counts."""
    hosted = "the hosted stand-in" if is_scripted(hosted_identity(report)) else "the hosted model"
    decision, delta = report.decision, delta_text(report.decision.delta)
    if decision.fine_tune:
        lines = [f"{report.track} ({decision.n} test rows): the SLM trails {hosted} by more than delta={delta} on "
                 f"{', '.join(decision.trailing)}, so the gate said fine-tune (FINE_TUNE=1)."]
    else:
        lines = [f"{report.track} ({decision.n} test rows): the SLM is within delta={delta} of {hosted} on every core "
                 "metric, so the gate said no fine-tune is needed (FINE_TUNE=0)."]
    if report.trained and not decision.fine_tune:
        lines[0] += " It was fine-tuned anyway (--finetune always)."
    elif decision.fine_tune and not report.trained:
        lines[0] += " This run did not fine-tune (--finetune never)."
    if report.final is not None:
        lines[0] += (f" After fine-tuning it still trails on {', '.join(report.final.trailing)} (FINE_TUNE=1)."
                     if report.final.fine_tune else " After fine-tuning it keeps up (FINE_TUNE=0).")
    for row in decision.rows:
        if not row.core:
            continue
        hosted_passes, slm_passes, n = row.reference_passes, row.candidate_passes, row.n
        line = f"{row.name}: {hosted} passes {hosted_passes}/{n}, the SLM {slm_passes}/{n}"
        tuned = _ft_passes(report, row.name, n) if report.trained else None
        if tuned is not None:
            gap, gain = hosted_passes - slm_passes, tuned - slm_passes
            line += f", the fine-tuned SLM {tuned}/{n}"
            if gap <= 0:
                line += f": there was no gap to close ({gain:+d} rows)"
            elif gain <= 0:
                line += f": fine-tuning won back none of the {gap} rows it was behind" + (f" and lost {-gain}" if gain else "")
            elif gain >= gap:
                line += f": fine-tuning won back all {gap} rows it was behind" + (
                    f" and {tuned - hosted_passes} more" if tuned > hosted_passes else "")
            else:
                line += f": fine-tuning won back {gain} of the {gap} rows it was behind"
        lines.append(line)
    return lines


def markdown(
    reports: list[TrackReport],
    *,
    flow_run_id: str | None = None,
    chart: str | None = None,
    trace_url: Callable[[str], str | None] | None = None,
    comparison_url: Callable[[list[dict[str, Any] | None]], str | None] | None = None,
    preface: list[str] | None = None,
) -> str:
    """The report as markdown (the Prefect artifact and report.md). `comparison_url` links each
    track's evals side by side in Langfuse's experiment comparison (the hosted run the baseline);
    `preface`: markdown lines before the tracks (the distill flow's data section)."""
    lines = ["# SLM Swap report", ""]
    if flow_run_id:
        lines += [f"Prefect flow run: `{flow_run_id}`", ""]
    lines += preface or []
    lines += ["## In short", ""]
    if note := stand_in_note(reports):
        lines += [f"**{note}**", ""]
    for report in reports:
        headline, *details = story(report)
        lines += [headline, ""] + [f"- {detail}" for detail in details] + [""]
    for report in reports:
        delta = report.decision.delta
        identity = hosted_identity(report)
        lines += [f"## {report.track}: {verdict(report)}", "",
                  *([f"Hosted side: `{identity}`.", ""] if identity else []),
                  f"n={report.decision.n}, delta={delta_text(delta)}; gap = hosted - SLM (the SLM trails where gap > delta).", "",
                  "| metric | hosted | SLM | gap | SLM fine-tuned | gap after |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in table_rows([report]):
            name = row["metric"] if row["core"] else f"{row['metric']} (info)"
            lines.append(f"| {name} | {_fmt(row['hosted'])} | {_fmt(row['slm'])} | {_signed(row['gap'])} | "
                         f"{_fmt(row['slm_ft'])} | {_signed(row['gap_ft'])} |")
        lines.append("")
        if comparison_url and (url := comparison_url(report.experiments())):
            lines += [f"Langfuse experiment comparison (hosted = baseline): [{report.track}]({url})", ""]
        if report.training:
            t = report.training
            lines += [f"Adapter: backend={t.get('backend')} steps={t.get('steps')} train_loss={_fmt(t.get('train_loss'))} "
                      f"val_loss {_fmt(t.get('val_loss_before'))} -> {_fmt(t.get('val_loss'))}", ""]
    lines += ["## Langfuse traces", "", "| track | step | trace id |", "|---|---|---|"]
    any_trace = False
    for report in reports:
        for step, trace_id in report.trace_ids().items():
            if trace_id:
                any_trace = True
                url = trace_url(trace_id) if trace_url else None
                lines.append(f"| {report.track} | {step} | {f'[{trace_id}]({url})' if url else f'`{trace_id}`'} |")
    if not any_trace:
        lines.append("| - | - | tracing was off (LANGFUSE_DISABLED=1) |")
    lines.append("")
    if chart:
        lines += [f"Chart: `{chart}`", ""]
    return "\n".join(lines)


def decisions_text(reports: list[TrackReport]) -> str:
    """The compare tables (as `slm-swap compare` prints them), baseline and after fine-tuning, per
    track; then the story in words (the stand-in note first, when it played the hosted side)."""
    parts = []
    for report in reports:
        parts += [f"== {report.track}: baseline", format_decision(report.decision)]
        if report.final is not None:
            parts += [f"== {report.track}: fine-tuned", format_decision(report.final)]
        parts += [f"-> {report.track}: {verdict(report)}", ""]
    parts += ["== in short"] + ([note] if (note := stand_in_note(reports)) else [])
    for report in reports:
        headline, *details = story(report)
        parts += [headline] + [f"  {detail}" for detail in details]
    return "\n".join(parts).rstrip("\n")


def summary(reports: list[TrackReport], *, flow_run_id: str | None = None) -> dict[str, Any]:
    """JSON-able summary (report.json, the flow's return value)."""
    tracks = {}
    for report in reports:
        tracks[report.track] = {
            "decision": report.decision.as_dict(),
            "trained": report.trained,
            "adapter_manifest": report.training,
            "final_decision": report.final.as_dict() if report.final else None,
            "verdict": verdict(report),
            "story": story(report),
            "langfuse_trace_ids": report.trace_ids(),
            "langfuse_experiments": dict(zip(("hosted", "slm", "slm_ft"), report.experiments())),
        }
    return {"flow_run_id": flow_run_id, "tracks": tracks, "rows": table_rows(reports),
            "decisions_text": decisions_text(reports)}


def write_chart(reports: list[TrackReport], path: Path) -> Path:
    """Grouped bars per track: hosted, SLM and (if trained) fine-tuned SLM on each metric."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(5.5 * max(1, len(reports)), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(reports)), squeeze=False)[0]
    colors = {"hosted": "#4c72b0", "slm": "#dd8452", "slm_ft": "#55a868"}
    for ax, report in zip(axes, reports):
        names = report.metric_names()
        documents = {"hosted": report.hosted, "slm": report.slm, "slm_ft": report.slm_ft}
        sides = [(key, label) for key, label in SIDES if documents[key] is not None]
        width = 0.8 / len(sides)
        for i, (key, label) in enumerate(sides):
            values = [_rate(documents[key], name) or 0.0 for name in names]
            positions = [m + (i - (len(sides) - 1) / 2) * width for m in range(len(names))]
            bars = ax.bar(positions, values, width=width, label=label, color=colors[key])
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(range(len(names)), [n.removesuffix("_rate") for n in names], rotation=20, ha="right")
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("rate")
        ax.set_title(f"{report.track}: FINE_TUNE={int(report.decision.fine_tune)}"
                     + (f" -> {int(report.final.fine_tune)}" if report.final else ""))
        ax.legend(loc="upper center", ncol=len(sides), fontsize="small", frameon=False)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    atomic_write_bytes(path, png.getvalue())
    return path


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    json: Path
    chart: Path


def write_report(
    reports: list[TrackReport],
    eval_dir: Path,
    *,
    flow_run_id: str | None = None,
    trace_url: Callable[[str], str | None] | None = None,
    comparison_url: Callable[[list[dict[str, Any] | None]], str | None] | None = None,
    preface: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[ReportFiles, str]:
    """Write report.png, report.md and report.json into `eval_dir`; returns the paths and the markdown.
    `preface` opens the markdown; `extra` adds keys to report.json."""
    eval_dir = Path(eval_dir)
    files = ReportFiles(markdown=eval_dir / "report.md", json=eval_dir / "report.json", chart=eval_dir / "report.png")
    write_chart(reports, files.chart)
    text = markdown(reports, flow_run_id=flow_run_id, chart=str(files.chart), trace_url=trace_url,
                    comparison_url=comparison_url, preface=preface)
    atomic_write_text(files.markdown, text)
    document = {**summary(reports, flow_run_id=flow_run_id), **(extra or {})}
    write_json(files.json, json.loads(json.dumps(document, default=str)))
    return files, text
