"""Berkeley Function Calling Leaderboard (BFCL) converter: the embedded default dataset.

The `bfcl-eval` package ships the data (`bfcl_eval/data/BFCL_v4_<category>.json`, JSON lines)
and possible answers (`possible_answer/`). It pins heavy dependencies we do not need, so it is
installed with `--no-deps` and only its files are read. Only Python-typed single-call categories
are supported: the metrics compare JSON arguments, and BFCL's Java/JavaScript answers are
language-specific strings.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from pathlib import Path

from slm_swap.core.bfcl_match import first_choice_arguments
from slm_swap.data.examples import Example
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_jsonl

BFCL_PACKAGE = "bfcl-eval"
BFCL_VERSION = "2026.3.23"
CATEGORIES = ("simple_python", "live_simple", "multiple", "live_multiple")
DEFAULT_CATEGORIES = ("simple_python",)


def bfcl_data_dir() -> Path:
    try:
        dist = importlib.metadata.distribution(BFCL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SlmSwapError(
            f"BFCL data not found: install it with `pip install --no-deps {BFCL_PACKAGE}=={BFCL_VERSION}`"
        ) from None
    return Path(str(dist.locate_file("bfcl_eval/data")))


def load_bfcl(categories: tuple[str, ...] = DEFAULT_CATEGORIES, data_dir: Path | None = None) -> tuple[list[Example], Counter]:
    """Single-call examples of the given categories; returns (examples, skip counts by reason)."""
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise SlmSwapError(f"unknown BFCL category {unknown[0]!r}: expected one of {', '.join(CATEGORIES)}")
    data_dir = Path(data_dir) if data_dir else bfcl_data_dir()
    examples: list[Example] = []
    skipped: Counter = Counter()
    for category in categories:
        questions_path = data_dir / f"BFCL_v4_{category}.json"
        answers_path = data_dir / "possible_answer" / f"BFCL_v4_{category}.json"
        answers = {row["id"]: row["ground_truth"] for row in read_jsonl(answers_path, "BFCL answer file")}
        for row in read_jsonl(questions_path, "BFCL data file"):
            row_id = row.get("id")
            turns = row.get("question") or []
            # One turn holding one user message: BFCL's single-turn shape.
            if len(turns) != 1 or len(turns[0]) != 1 or turns[0][0].get("role") != "user":
                skipped["not_single_user_turn"] += 1
                continue
            if row_id not in answers:
                raise SlmSwapError(f"{answers_path}: no possible answer for row id={row_id}")
            truth = answers[row_id]
            if len(truth) != 1:
                skipped["multi_call"] += 1
                continue
            (name, _), = truth[0].items()
            examples.append(
                Example(
                    id=row_id,
                    request=turns[0][0]["content"],
                    functions=row["function"],
                    name=name,
                    arguments=first_choice_arguments(truth[0]),
                    possible_answer=truth[0],
                )
            )
    return examples, skipped
