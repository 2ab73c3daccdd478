"""The promotion gate: may a candidate adapter replace the one a track's gateway serves?

Decided as `compare` decides, on pass counts with exact arithmetic, over the track's core metrics
of two metrics files on the same test set (same dataset bytes, split and size). The candidate is
promoted only when, on every core metric, it trails the incumbent (the promoted adapter, or the
base SLM before any promotion) by no more than delta, and it beats it on at least one: equal
everywhere is no reason to change what serves. "Trails by more than delta" is
(incumbent passes - candidate passes) / n > delta as a fraction, so a gap equal to delta is within
it, where float rates would misjudge (30/100 - 29/100 is 0.010000000000000009).

With no incumbent at all (nothing promoted, no base metrics given) the candidate is promoted as
the track's first adapter, and the decision says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from slm_swap.core.compare import delta_text, load_metrics_file, parse_delta, pass_count
from slm_swap.core.tracks import get_track
from slm_swap.infra.errors import SlmSwapError

PROMOTION_REFUSED_EXIT = 10  # like `compare`'s FINE_TUNE=1: the gate said no (0: promoted, 2: bad input)
_MODEL_KEYS = ("kind", "identity", "adapter")


@dataclass(frozen=True)
class MetricsSummary:
    """What the gate needs of a metrics file, and what the registry keeps of it: the test set's
    identity, the model measured, and each metric's pass count out of n (core metrics first)."""

    path: str
    track: str
    split: str | None
    n: int
    dataset_path: str | None
    dataset_sha256: str
    model: dict[str, str | None]
    passes: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "track": self.track, "split": self.split, "n": self.n,
                "dataset": {"path": self.dataset_path, "sha256": self.dataset_sha256}, "model": self.model,
                "passes": self.passes, "rates": {name: passes / self.n for name, passes in self.passes.items()}}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> MetricsSummary:
        """Back from `as_dict` (a registry entry); a field of the wrong kind is one line naming `where`."""
        try:
            dataset, model, passes = data["dataset"], data["model"], data["passes"]
            summary = cls(path=data["path"], track=data["track"], split=data["split"], n=data["n"],
                          dataset_path=dataset["path"], dataset_sha256=dataset["sha256"], model=dict(model),
                          passes=dict(passes))
        except (KeyError, TypeError, ValueError) as exc:
            raise SlmSwapError(f"{where}: not a metrics summary (bad or missing {exc})") from None
        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        n_ok = whole(summary.n) and summary.n >= 1
        counts_ok = n_ok and all(whole(v) and 0 <= v <= summary.n for v in summary.passes.values())
        if not (isinstance(summary.track, str) and isinstance(summary.dataset_sha256, str) and counts_ok):
            raise SlmSwapError(f"{where}: not a metrics summary (n, pass counts or dataset sha256 out of shape)")
        missing = [name for name in get_track(summary.track).core_metrics if name not in summary.passes]
        if missing:
            raise SlmSwapError(f"{where}: not a metrics summary of track {summary.track!r} (no {', '.join(missing)})")
        return summary


def summarize_metrics(path: Path, track: str) -> MetricsSummary:
    """A metrics file of `slm-swap eval`, checked as `compare` checks it, as pass counts."""
    data = load_metrics_file(Path(path), track)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    return MetricsSummary(
        path=str(path), track=track, split=data.get("split"), n=data["n"],
        dataset_path=data["dataset"].get("path"), dataset_sha256=data["dataset"]["sha256"],
        model={key: model[key] if isinstance(model.get(key), str) else None for key in _MODEL_KEYS},
        passes={name: pass_count(Path(path), data, name) for name in get_track(track).metric_names(data)})


def check_same_test_set(candidate: MetricsSummary, incumbent: MetricsSummary) -> None:
    """Two sides are compared only on the very same examples: same dataset bytes, split and size."""
    for label, theirs, ours in (("datasets", incumbent.dataset_sha256, candidate.dataset_sha256),
                                ("splits", incumbent.split, candidate.split), ("sizes", incumbent.n, candidate.n)):
        if theirs != ours:
            raise SlmSwapError(
                f"cannot compare different {label}: {incumbent.path} measured {_test_set(incumbent)}, "
                f"{candidate.path} measured {_test_set(candidate)}: evaluate both on the same test set")


def _test_set(summary: MetricsSummary) -> str:
    return f"{summary.dataset_path} ({summary.dataset_sha256[:12]}) split={summary.split} n={summary.n}"


@dataclass(frozen=True)
class MetricGate:
    """One core metric of both sides, as pass counts out of the same n."""

    name: str
    incumbent_passes: int
    candidate_passes: int
    n: int

    def worse_beyond(self, delta: Fraction) -> bool:
        return Fraction(self.incumbent_passes - self.candidate_passes, self.n) > delta

    @property
    def better(self) -> bool:
        return self.candidate_passes > self.incumbent_passes

    def verdict(self, delta: Fraction) -> str:
        if self.better:
            return "better"
        if self.candidate_passes == self.incumbent_passes:
            return "equal"
        return "worse by more than delta" if self.worse_beyond(delta) else "worse within delta"


@dataclass(frozen=True)
class PromotionDecision:
    track: str
    delta: Fraction
    against: str  # what the candidate was measured against: "promoted v3 (...)", "the base SLM", "nothing"
    metrics: tuple[MetricGate, ...]
    promote: bool
    reason: str
    n: int
    dataset_sha256: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"track": self.track, "delta": delta_text(self.delta), "against": self.against, "n": self.n,
                "dataset_sha256": self.dataset_sha256, "promote": self.promote, "reason": self.reason,
                "metrics": {m.name: {"candidate_passes": m.candidate_passes, "incumbent_passes": m.incumbent_passes,
                                     "verdict": m.verdict(self.delta)} for m in self.metrics}}


def decide_promotion(track: str, candidate: MetricsSummary, incumbent: MetricsSummary | None,
                     delta: str | float | Fraction, *, against: str) -> PromotionDecision:
    """The gate. `incumbent` None: nothing to compare with, so the candidate is the track's first."""
    exact_delta = parse_delta(delta)
    if incumbent is None:
        return PromotionDecision(track, exact_delta, "nothing", (), True,
                                 f"first promotion on track {track}: nothing promoted and no base metrics to compare "
                                 "with", candidate.n, candidate.dataset_sha256)
    check_same_test_set(candidate, incumbent)
    gates = tuple(MetricGate(name, incumbent.passes[name], candidate.passes[name], candidate.n)
                  for name in get_track(track).core_metrics)
    worse = [gate.name for gate in gates if gate.worse_beyond(exact_delta)]
    better = [gate.name for gate in gates if gate.better]
    if worse:
        reason = f"worse than {against} by more than delta={delta_text(exact_delta)} on {', '.join(worse)}"
    elif not better:
        reason = f"not better than {against} on any core metric"
    else:
        reason = f"better than {against} on {', '.join(better)}, and within delta={delta_text(exact_delta)} elsewhere"
    return PromotionDecision(track, exact_delta, against, gates, not worse and bool(better), reason, candidate.n,
                             candidate.dataset_sha256)


def format_promotion(decision: PromotionDecision) -> str:
    """Each core metric with both counts and its verdict, the reason, and `PROMOTE=0|1`."""
    lines = [f"track={decision.track} n={decision.n} delta={delta_text(decision.delta)} against {decision.against}"]
    for gate in decision.metrics:
        lines.append(f"{gate.name:<22} candidate {gate.candidate_passes:>5}/{gate.n:<5} incumbent "
                     f"{gate.incumbent_passes:>5}/{gate.n:<5} {gate.verdict(decision.delta)}")
    lines.append(f"{'promote' if decision.promote else 'refuse'}: {decision.reason}")
    lines.append(f"PROMOTE={int(decision.promote)}")
    return "\n".join(lines)
