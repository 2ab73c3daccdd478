"""A flywheel round's report (`report.md`, `report.json` in its folder), the rounds history
(`<flywheel-dir>/<track>/rounds.jsonl`, one line per finished round) and its chart (`rounds.png`:
each side's accuracy on the held-out traffic and the gateway's calibrated coverage, per round).
Only counts, metrics and decisions go in: no prompt or answer text, so no traffic content leaks here."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slm_swap.core.promotion import summarize_metrics
from slm_swap.core.tracks import get_track
from slm_swap.evaluation.calibrate import evidence_needed
from slm_swap.infra.fileio import atomic_write_bytes, atomic_write_text, jsonl_text, read_jsonl, write_json

if TYPE_CHECKING:
    from slm_swap.app.flywheel import Round
    from slm_swap.app.requests import FlywheelRequest


def round_document(state: Round) -> dict[str, Any]:
    """Everything the round's report says, as JSON."""
    evals = {}
    for side, path in state.metrics.items():
        summary = summarize_metrics(path, state.track)
        evals[side] = {"path": str(path), "n": summary.n, "model": summary.model, "passes": summary.passes}
    promoted = state.promoted
    return {"round": state.number, "track": state.track, "status": state.status, "reason": state.reason,
            "started_at": state.started_at, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rows": state.counts, "evals": evals,
            "incumbent": {"version": state.incumbent.version, "adapter": str(state.incumbent.adapter)}
            if state.incumbent else None,
            "decision": state.decision.as_dict() if state.decision else None, "calibration": state.calibration,
            "promoted": {"version": promoted.version, "adapter": str(promoted.adapter)} if promoted else None}


def markdown(document: dict[str, Any]) -> str:
    track, rows = document["track"], document["rows"]
    lines = [f"# Flywheel round {document['round']} ({track}): {document['status']}", "",
             document["reason"], "", "## Rows", "",
             f"Records read: {rows['records']}; new {track} rows: {rows['new_rows']} "
             f"({rows['new_rows_held_out']} held out); secrets scrubbed from {rows['scrubbed']}.", "",
             "| source | records | rows | rejected |", "|---|---:|---:|---|"]
    for source, cell in rows["sources"].items():
        rejected = ", ".join(f"{reason} {n}" for reason, n in cell["rejected"].items()) or "-"
        lines.append(f"| {source} | {cell['seen']} | {cell['rows']} | {rejected} |")
    held, train = rows["heldout"], rows["train"]
    lines += ["", f"Held-out traffic test set: {held['before']} + {held['added']} = {held['total']} rows.",
              f"Train file: {train['main']} main-job rows + {train['earlier_traffic']} earlier traffic rows + "
              f"the new ones, held-out requests left out: {train['total']} rows.", "", "## Evals (pass counts)", ""]
    metrics = get_track(track).core_metrics
    lines += ["| side | n | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for side, ev in document["evals"].items():
        lines.append(f"| {side} | {ev['n']} | " + " | ".join(str(ev["passes"][m]) for m in metrics) + " |")
    if document["promoted"]:
        lines += ["", f"Promoted as v{document['promoted']['version']}: `{document['promoted']['adapter']}`."]
    if document["calibration"]:
        c = document["calibration"]
        if c["threshold"] is None:
            lines.append(f"Gateway threshold: none. No threshold shows the target accuracy {c['target']} with 95% "
                         f"confidence on the {c['n']} held-out requests ({evidence_needed(Fraction(c['target']))}), so "
                         "the gateway serves none of this adapter's answers until more held-out traffic shows it.")
        else:
            lines.append(f"Gateway threshold {c['threshold']} accepts {c['accepted']}/{c['n']} held-out requests "
                         f"({c['correct']} right; target accuracy {c['target']}, shown with 95% confidence).")
    return "\n".join(lines) + "\n"


def write_round_report(state: Round, request: FlywheelRequest) -> dict[str, Any]:
    document = round_document(state)
    write_json(state.folder / "report.json", document)
    atomic_write_text(state.folder / "report.md", markdown(document))
    return document


def history_path(request: FlywheelRequest) -> Path:
    from slm_swap.app.flywheel import rounds_dir

    return rounds_dir(request) / "rounds.jsonl"


def history_line(state: Round) -> dict[str, Any]:
    """Per side, the share of held-out rows right on the track's headline metric; the coverage the
    gateway's calibrated threshold gives (None when the round promoted nothing)."""
    metric = get_track(state.track).core_metrics[-1]
    accuracy = {}
    for side, path in state.metrics.items():
        summary = summarize_metrics(path, state.track)
        accuracy[side] = {"passes": summary.passes[metric], "n": summary.n}
    c = state.calibration
    return {"round": state.number, "track": state.track, "status": state.status, "metric": metric,
            "accuracy": accuracy, "coverage": {"accepted": c["accepted"], "n": c["n"]} if c else None,
            "promoted_version": state.promoted.version if state.promoted else None}


def append_history(state: Round, request: FlywheelRequest) -> Path:
    """Add the round's line (rewritten whole, atomically) and redraw the chart."""
    path = history_path(request)
    lines = [line for line in (read_jsonl(path, "flywheel rounds file") if path.is_file() else [])
             if isinstance(line, dict) and line.get("round") != state.number]
    lines.append(history_line(state))
    atomic_write_text(path, jsonl_text(lines))
    draw_history(lines, path.with_suffix(".png"))
    return path


def draw_history(lines: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rounds = [line["round"] for line in lines]
    for side in ("hosted", "incumbent", "candidate"):
        rates = [line["accuracy"][side]["passes"] / line["accuracy"][side]["n"] if side in line["accuracy"] else None
                 for line in lines]
        ax.plot(rounds, [float("nan") if r is None else r for r in rates], marker="o", label=f"{side} accuracy")
    coverage = [line["coverage"]["accepted"] / line["coverage"]["n"] if line.get("coverage") else float("nan")
                for line in lines]
    ax.plot(rounds, coverage, marker="s", linestyle="--", label="gateway coverage (after promotion)")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("flywheel round")
    ax.set_ylabel(f"share of held-out traffic ({lines[-1]['metric'] if lines else ''})")
    ax.legend(loc="lower right", fontsize="small", frameon=False)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    atomic_write_bytes(path, png.getvalue())
    return path


def round_line(state: Round) -> str:
    """The one line `slm-swap flywheel` prints per round."""
    head = f"flywheel {state.track} round {state.number}: "
    if state.status == "nothing to do":
        return head + f"nothing to do: {state.reason}"
    rows = state.counts
    sources = ", ".join(f"{source} {cell['rows']}" for source, cell in rows["sources"].items() if cell["rows"])
    line = history_line(state)
    evals = ", ".join(f"{side} {a['passes']}/{a['n']}" for side, a in line["accuracy"].items())
    verdict = (f"promoted v{state.promoted.version}" if state.promoted else f"refused: {state.reason}")
    return (head + f"{rows['new_rows']} new rows ({sources}), held-out {rows['heldout']['total']}; "
            f"{line['metric']} {evals}; {verdict}; report {state.folder / 'report.md'}")


__all__ = ["append_history", "draw_history", "history_line", "history_path", "markdown", "round_document",
           "round_line", "write_round_report"]
