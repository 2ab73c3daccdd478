"""`slm-swap gateway promote`: put an adapter in front of a track's gateway traffic by hand, forward
or back, through the flywheel's gate (`core.promotion`) unless --force.

    slm-swap eval --track toolcall --model-kind slm --adapter NEW --out new.json       # the candidate
    slm-swap eval --track toolcall --model-kind slm --adapter CURRENT --out cur.json   # the promoted one, same test set
    slm-swap gateway promote --track toolcall --adapter NEW --metrics new.json --against cur.json
    # exit 0: promoted (a new version in slm_swap/06_gateway/registry.json); 10: refused, registry unchanged

Each metrics file must measure the adapter it stands for (its `model.adapter` is that folder), so a
candidate cannot be promoted on another model's numbers. Without --against the promoted adapter's
own metrics kept in the registry are used when they were measured on the candidate's test set;
with nothing promoted yet, --against may give the base SLM's metrics, and with none the candidate
is promoted as the track's first.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from slm_swap.core.compare import parse_delta
from slm_swap.core.promotion import (MetricsSummary, PromotionDecision, decide_promotion, format_promotion,
                                     summarize_metrics)
from slm_swap.evaluation.registry import (PromotedAdapter, check_adapter_folder, load_registry, promoted_adapter,
                                          record_promotion, same_folder)
from slm_swap.infra.errors import SlmSwapError


@dataclass(frozen=True)
class PromotionOutcome:
    track: str
    decision: PromotionDecision | None  # None: forced without metrics, so no gate was run
    entry: PromotedAdapter | None  # the new promotion; None: refused, the registry unchanged
    current: PromotedAdapter | None  # what the track served before
    registry_path: Path


def promote(*, track: str, adapter: Path, metrics: Path | None, against: Path | None, delta: str | Fraction,
            force: bool, registry_path: Path, policy: Path | None = None) -> PromotionOutcome:
    """The gate's decision on `adapter`, and its promotion when the gate (or --force) says so."""
    exact_delta = parse_delta(delta)
    check_adapter_folder(Path(adapter), track)  # before any metrics are read; checked again before the write
    current = promoted_adapter(load_registry(registry_path), track)
    candidate: MetricsSummary | None = None
    decision = None
    if metrics is None and not force:
        raise SlmSwapError("--metrics is needed unless --force: the candidate's metrics file from "
                           f"`slm-swap eval --track {track} --model-kind slm --adapter {adapter}` on the test set")
    if metrics is not None:
        candidate = summarize_metrics(Path(metrics), track)
        check_measures(candidate, Path(adapter), "--metrics")
        incumbent, label = _incumbent(track, current, against, candidate)
        decision = decide_promotion(track, candidate, incumbent, exact_delta, against=label)
    elif against is not None:
        raise SlmSwapError("--against needs --metrics: the candidate's metrics on the same test set")
    if decision is not None and not decision.promote and not force:
        return PromotionOutcome(track, decision, None, current, Path(registry_path))
    entry = record_promotion(registry_path, track, Path(adapter), metrics=candidate.as_dict() if candidate else None,
                             decision=decision.as_dict() if decision else None, forced=force, policy_file=policy)
    return PromotionOutcome(track, decision, entry, current, Path(registry_path))


def check_measures(summary: MetricsSummary, adapter: Path, flag: str) -> None:
    """A metrics file stands for an adapter only when its eval ran that adapter folder."""
    if not same_folder(summary.model.get("adapter"), adapter):
        measured = summary.model.get("adapter") or f"the {summary.model.get('kind') or 'unknown'} model without an adapter"
        raise SlmSwapError(f"{flag} {summary.path}: measures {measured}, not the adapter {adapter}")


def _incumbent(track: str, current: PromotedAdapter | None, against: Path | None,
               candidate: MetricsSummary) -> tuple[MetricsSummary | None, str]:
    """What the candidate must beat, and how the decision names it."""
    if against is not None:
        incumbent = summarize_metrics(Path(against), track)
        if current is not None:
            check_measures(incumbent, current.adapter, "--against")
            return incumbent, f"promoted v{current.version}"
        base = incumbent.model.get("adapter") is None
        return incumbent, "the base SLM" if base else f"adapter {incumbent.model['adapter']} (never promoted)"
    if current is None:
        return None, "nothing"
    kept = None
    if current.metrics is not None:
        kept = MetricsSummary.from_dict(current.metrics, f"registry, track {track} v{current.version}")
    same = kept is not None and (kept.track, kept.dataset_sha256, kept.split, kept.n) == (
        track, candidate.dataset_sha256, candidate.split, candidate.n)
    if not same:
        raise SlmSwapError(f"--against is needed: track {track}'s promoted adapter v{current.version} ({current.adapter}) "
                           "has no metrics on the candidate's test set in the registry; give its metrics on "
                           f"{candidate.dataset_path} ({candidate.dataset_sha256[:12]}), or --force")
    return kept, f"promoted v{current.version} (its metrics in the registry)"


def describe(outcome: PromotionOutcome) -> str:
    """The gate's table and verdict, then what happened to the registry."""
    lines = [format_promotion(outcome.decision)] if outcome.decision else ["no gate: forced without --metrics"]
    serving = f"v{outcome.current.version} ({outcome.current.adapter})" if outcome.current else "the base model"
    if outcome.entry is None:
        lines.append(f"refused: track {outcome.track} keeps {serving}; {outcome.registry_path} unchanged")
    else:
        entry = outcome.entry
        forced = " (forced)" if entry.forced else ""
        gate = entry.gate()
        lines.append(f"promoted{forced}: track {entry.track} v{entry.version} {entry.adapter}, replacing {serving}, "
                     f"in {outcome.registry_path}; confidence gate: "
                     + (f"threshold {gate.threshold} ({gate.path})" if gate else "none given (the gateway keeps the "
                        "track's)"))
    return "\n".join(lines)
