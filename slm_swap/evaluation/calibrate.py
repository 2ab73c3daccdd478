"""The gateway's confidence gate: one number per SLM answer, and the threshold that makes the answers
it accepts as accurate as the target, chosen on a labelled split (`slm-swap gateway calibrate`).

    point = Point(valid=verdict is None, confidence=confidence(token_logprobs), correct=example_correct(track, scores))
    choice = pick_threshold(points, parse_target("0.8"))     # the operating point and the whole curve
    policy = load_policy(path)                               # what the gateway reads
    policy.accepts(valid, openai_confidence(choice.logprobs.content))

An answer is accepted when the request's validators pass it and its confidence is at least the
threshold. The threshold is the one with the most coverage whose accepted answers reach the target
accuracy with 95% confidence: an exact one-sided binomial test on the counts, in integer arithmetic
(`reaches`), so that a threshold is never chosen on too little evidence. Measured in the flywheel
demo: a threshold that accepted 1 of 6 held-out answers (1 right) then served 6 of 24 fresh requests,
5 of them wrong; with the test, 1 of 1 right proves nothing and the gate accepts nothing there.
"""

from __future__ import annotations

import math
from math import comb
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

from slm_swap.core.prompts import render_functions
from slm_swap.core.tool_schema import check_structured
from slm_swap.core.tracks import NOT_PARSED, get_row_track
from slm_swap.infra import json_input
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_json

POLICY_KIND = "slm-swap gateway policy"
POLICY_VERSION = 1
# How an answer's confidence is computed, recorded in the policy so a gateway never applies a
# threshold to a number computed another way.
CONFIDENCE_MEASURE = "min_token_logprob"


def confidence(token_logprobs: Iterable[float]) -> float:
    """The answer's weakest token: the minimum log-probability over its tokens.

    Why the minimum: a call is wrong when any one of its values is wrong, and the tokens that
    carry the values are a few among many near-certain ones (`<tool_call name="`, quotes, braces).
    The mean dilutes one doubtful argument among them and the sum (the sequence's log-probability)
    punishes long calls for their length; the minimum is the one doubtful token itself.
    An answer of no tokens gives -inf: no evidence, below every threshold."""
    return min(token_logprobs, default=-math.inf)


def openai_confidence(content: Sequence[Any] | None) -> float:
    """`confidence` of an OpenAI `choices[0].logprobs.content` list (dicts, or the openai SDK's
    objects with `.logprob`); None or entries without a number give -inf, which no threshold accepts."""
    values = []
    for entry in content or []:
        value = entry.get("logprob") if isinstance(entry, dict) else getattr(entry, "logprob", None)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            return -math.inf
        values.append(float(value))
    return confidence(values)


@dataclass(frozen=True)
class Point:
    """One calibration example: did the validators pass the answer, its confidence, is it right."""

    valid: bool
    confidence: float
    correct: bool


@dataclass(frozen=True)
class CurvePoint:
    """Accepting valid answers with confidence >= threshold: how many, and how many are right."""

    threshold: float
    accepted: int
    correct: int


@dataclass(frozen=True)
class ThresholdChoice:
    """The operating point (threshold None: no threshold reaches the target, nothing is accepted)
    and the risk-coverage curve it was chosen from (thresholds from high to low), over n examples."""

    threshold: float | None
    accepted: int
    correct: int
    n: int
    valid: int
    curve: tuple[CurvePoint, ...]

    @property
    def coverage(self) -> Fraction:
        return Fraction(self.accepted, self.n) if self.n else Fraction(0)


ALPHA = Fraction(1, 20)  # the chance we accept to pick a threshold whose true accuracy is below the target


def reaches(correct: int, accepted: int, target: Fraction, alpha: Fraction = ALPHA) -> bool:
    """Whether `correct` right of `accepted` shows an accuracy of at least `target` with confidence
    1 - alpha: were the true accuracy `target` (or lower), this many right answers or more would
    occur with probability at most alpha. An exact one-sided binomial test, in integers:
    sum_{i >= correct} C(n, i) num^i (den - num)^(n - i) <= alpha * den^n. So 1 of 1 right shows
    little, 23 of 23 show 7/8, and no count shows a target of 1."""
    if accepted == 0 or correct > accepted:
        return False
    if target == 0:
        return True
    num, den = target.numerator, target.denominator
    tail = sum(comb(accepted, i) * num**i * (den - num) ** (accepted - i) for i in range(correct, accepted + 1))
    return tail * alpha.denominator <= alpha.numerator * den**accepted


def fewest_to_show(target: Fraction, alpha: Fraction = ALPHA, most: int = 100_000) -> int | None:
    """The fewest accepted answers, all right, that show `target` (`reaches`): what a calibration split
    must hold at the least before any threshold can pass; None when no count up to `most` does (a
    target of 1). 0.99 needs 299, 0.95 needs 59, 7/8 needs 23."""
    if target == 0:
        return 1
    if target >= 1:
        return None
    # all-right counts: target^n <= alpha; solved in floats, then checked exactly around the estimate.
    estimate = max(1, math.floor(math.log(float(alpha)) / math.log(float(target))) - 2)
    for count in range(estimate, most + 1):
        if reaches(count, count, target, alpha):
            return count
    return None


def evidence_needed(target: Fraction) -> str:
    """What any threshold needs before it can show `target`, in words."""
    fewest = fewest_to_show(target)
    if fewest is None:
        return "no count of right answers shows a target of 1"
    return f"showing it takes at least {fewest} accepted answers, all right"


def risk_coverage_curve(points: Sequence[Point]) -> tuple[CurvePoint, ...]:
    """One point per distinct confidence of a valid answer, from the highest threshold down. Answers
    of equal confidence are accepted together: a threshold cannot separate them."""
    ranked = sorted((p for p in points if p.valid and math.isfinite(p.confidence)), key=lambda p: -p.confidence)
    curve: list[CurvePoint] = []
    accepted = correct = 0
    for position, point in enumerate(ranked):
        accepted += 1
        correct += point.correct
        last_of_tie = position + 1 == len(ranked) or ranked[position + 1].confidence != point.confidence
        if last_of_tie:
            curve.append(CurvePoint(point.confidence, accepted, correct))
    return tuple(curve)


def pick_threshold(points: Sequence[Point], target: Fraction) -> ThresholdChoice:
    """The threshold with the most coverage whose accepted answers reach `target` accuracy (`reaches`:
    with 95% confidence).

    Coverage grows as the threshold falls, so the lowest threshold that reaches the target wins;
    when none does, the threshold is None and coverage 0 (the gateway sends everything to the
    hosted model). Points with a NaN confidence are a bug upstream and raise ValueError."""
    if any(math.isnan(p.confidence) for p in points):
        raise ValueError("a calibration point has a NaN confidence")
    curve = risk_coverage_curve(points)
    reaching = [c for c in curve if reaches(c.correct, c.accepted, target)]
    best = max(reaching, key=lambda c: c.accepted, default=None)
    valid = sum(p.valid for p in points)
    if best is None:
        return ThresholdChoice(None, 0, 0, len(points), valid, curve)
    return ThresholdChoice(best.threshold, best.accepted, best.correct, len(points), valid, curve)


def parse_target(value: str | Fraction, what: str = "--target") -> Fraction:
    """An accuracy as an exact fraction, 0 <= target <= 1: text as the decimal typed ("0.8" is 4/5)."""
    if isinstance(value, Fraction):
        target = value
    else:
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise SlmSwapError(f"{what} must be a decimal accuracy between 0 and 1, got {str(value)[:40]!r}") from None
        if not number.is_finite() or not 0 <= number <= 1:
            raise SlmSwapError(f"{what} must be a decimal accuracy between 0 and 1, got {str(value)[:40]!r}")
        target = Fraction(number)
    if not 0 <= target <= 1:
        raise SlmSwapError(f"{what} must be between 0 and 1, got {target}")
    return target


# -- one example's verdict and correctness --------------------------------------------------------


def example_correct(track: str, scores: dict[str, Any]) -> bool:
    """Whether a track's scores of one answer (`Track.score`, or an eval record) say it is right:
    BFCL's AST match where the split has possible answers, else every core metric passed
    (structured: the exact JSON; toolcall: a valid call with the gold name and arguments)."""
    if "args_ast_match" in scores:
        return bool(scores["args_ast_match"])
    return all(bool(scores.get(name.removesuffix("_rate"))) for name in get_row_track(track).core_metrics)


def example_point(track: str, record: dict[str, Any], functions: list[dict[str, Any]],
                  token_logprobs: Sequence[float]) -> Point:
    """One answer as a calibration point. `record`: the row with its answers-file line and the SLM's
    `output`, as `Track.score` takes it. Valid: the gateway's checks pass (one call, a name among
    `functions`, arguments valid against its schema: `tool_schema.check_structured` of what the
    track parsed). Raises ValueError for a function schema no validator can use (a data bug)."""
    scores = get_row_track(track).score(record)
    parsed = scores["parsed"]
    valid = record["output"] is not None and check_structured(NOT_PARSED if parsed is None else parsed, functions) is None
    return Point(valid, confidence(token_logprobs), example_correct(track, scores))


def prompt_functions(track: str, prompt: str) -> list[dict[str, Any]]:
    """The function signatures a row's prompt offers, read back from the track's template: one JSON
    signature per line between the text before `{functions}` and the text before `{request}`
    (signatures are written with `json.dumps`, so none holds a line break)."""
    template = get_row_track(track).template
    before, _, rest = template.partition("{functions}")
    between = rest.partition("{request}")[0]
    if not prompt.startswith(before) or between not in prompt[len(before):]:
        raise SlmSwapError(f"a {track} row's prompt is not the track's template: its functions cannot be read")
    block = prompt[len(before): prompt.index(between, len(before))]
    try:
        functions = [json_input.loads(line) for line in block.split("\n") if line.strip()]
    except json_input.JsonInputError as exc:
        raise SlmSwapError(f"a {track} row's prompt has a function signature that is not JSON: {exc}") from None
    if render_functions(functions) != block:
        raise SlmSwapError(f"a {track} row's prompt lists its functions in an unexpected form")
    return functions


# -- the policy file ------------------------------------------------------------------------------


def policy_document(*, track: str, split: str, model: dict[str, Any], dataset: dict[str, Any], choice: ThresholdChoice,
                    target: Fraction, target_source: dict[str, Any], created_at: str) -> dict[str, Any]:
    """The policy file's content: what the gateway applies (threshold, measure, track, model) and the
    record of how it was derived (target and its source, the counts, the whole curve)."""
    operating = {"threshold": choice.threshold, "accepted": choice.accepted, "correct": choice.correct,
                 "valid": choice.valid, "n": choice.n, "coverage": float(choice.coverage),
                 "accuracy": choice.correct / choice.accepted if choice.accepted else None}
    return {
        "kind": POLICY_KIND,
        "version": POLICY_VERSION,
        "track": track,
        "model": model,
        "split": split,
        "dataset": dataset,
        "confidence": CONFIDENCE_MEASURE,
        "threshold": choice.threshold,
        "target": {"accuracy": str(target), "decimal": float(target), **target_source},
        "test": {"kind": "one-sided exact binomial", "alpha": str(ALPHA)},
        "operating_point": operating,
        "curve": [{"threshold": c.threshold, "accepted": c.accepted, "correct": c.correct} for c in choice.curve],
        "created_at": created_at,
    }



@dataclass(frozen=True)
class Policy:
    """What the gateway needs from a policy file (the rest of the file is the record of how it was made)."""

    path: Path
    track: str
    threshold: float | None
    target: Fraction
    model_identity: str
    adapter: str | None
    split: str

    def accepts(self, valid: bool, answer_confidence: float) -> bool:
        """Whether the gateway serves an SLM answer: validators passed and the confidence reaches
        the threshold (a policy whose target nothing reached accepts nothing)."""
        return valid and self.threshold is not None and answer_confidence >= self.threshold


def load_policy(path: Path) -> Policy:
    """The policy file `gateway calibrate` wrote; anything else is one line naming the file."""
    path = Path(path)
    return policy_from_data(read_json(path, "policy file"), path)


def policy_from_data(data: Any, path: Path, where: str | None = None) -> Policy:
    """A policy from the content of the file `path` (read there, or kept in the registry of promoted
    adapters: `where` names that place in errors); anything else is one line."""
    place = where or str(path)

    def bad(why: str) -> SlmSwapError:
        return SlmSwapError(f"{place}: not a gateway policy file ({why}); run `slm-swap gateway calibrate` again")

    if not isinstance(data, dict) or data.get("kind") != POLICY_KIND:
        raise bad(f"expected an object with kind {POLICY_KIND!r}")
    if data.get("version") != POLICY_VERSION:
        raise bad(f"version {data.get('version')!r}, expected {POLICY_VERSION}")
    if data.get("confidence") != CONFIDENCE_MEASURE:
        raise bad(f"confidence measure {data.get('confidence')!r}, expected {CONFIDENCE_MEASURE!r}")
    threshold = data.get("threshold")
    if threshold is not None and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)):
        raise bad(f"'threshold' must be a number or null, got {str(threshold)[:40]!r}")
    model = data.get("model")
    target = data.get("target")
    if not isinstance(model, dict) or not isinstance(model.get("identity"), str):
        raise bad("'model' must be an object with its 'identity'")
    if not isinstance(target, dict) or not isinstance(target.get("accuracy"), str):
        raise bad("'target' must be an object with its 'accuracy' as a fraction string")
    try:
        target_value = Fraction(target["accuracy"])
    except (ValueError, ZeroDivisionError):
        raise bad(f"target accuracy {target['accuracy'][:40]!r} is not a fraction") from None
    try:
        track = get_row_track(data.get("track") if isinstance(data.get("track"), str) else "")
    except SlmSwapError as exc:
        raise bad(str(exc)) from None
    adapter = model.get("adapter")
    if not isinstance(adapter, (str, type(None))) or not isinstance(data.get("split"), str):
        raise bad("'model.adapter' must be a path or null and 'split' a name")
    return Policy(path, track.name, None if threshold is None else float(threshold), target_value,
                  model["identity"], adapter, data["split"])
