"""Training examples: the evaluation's own messages, the completion as the assistant turn.

The prompt is rendered exactly as at inference (`build_messages` + the chat template with the
generation prompt), and the completion is what the template puts after it for an assistant
message (the completion text and the end-of-turn token), so the model learns to answer and stop
in the format the evaluation reads. Prompt and completion are tokenized separately and joined,
which makes the mask exact: `labels` is -100 (ignored by the loss) on every prompt token and the
token itself on every completion token. TRL's SFTTrainer uses a `labels` column as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_swap.data.examples import load_rows
from slm_swap.errors import SlmSwapError
from slm_swap.metrics import parse_structured, parse_toolcall
from slm_swap.prompts import build_messages


def check_rows_for_track(path: Path, rows: list[dict[str, str]], track: str) -> None:
    """Refuse a file whose completions belong to the other track (or to none)."""
    for number, row in enumerate(rows, start=1):
        completion = row["completion"]
        if track == "toolcall":
            ok = parse_toolcall(completion) is not None
        else:
            value = parse_structured(completion)
            ok = isinstance(value, dict) and {"name", "arguments"} <= set(value)
        if not ok:
            raise SlmSwapError(f"{path}: row {number}: completion is not a {track} completion (rows for the other track?)")


def load_training_rows(path: Path, track: str) -> list[dict[str, str]]:
    rows = load_rows(path)
    if not rows:
        raise SlmSwapError(f"{path}: no rows")
    check_rows_for_track(path, rows, track)
    return rows


def completion_suffix(tokenizer, completion: str) -> str:
    """What the chat template appends after the generation prompt for this assistant turn."""
    messages = [{"role": "user", "content": "x"}]
    with_answer = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}], tokenize=False
    )
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not with_answer.startswith(prefix):
        raise SlmSwapError("the model's chat template does not extend the generation prompt with the answer; cannot mask the prompt")
    return with_answer[len(prefix):]


def tokenize_row(tokenizer, row: dict[str, str]) -> dict[str, Any]:
    prompt_text = tokenizer.apply_chat_template(build_messages(row["prompt"]), tokenize=False, add_generation_prompt=True)
    completion_text = completion_suffix(tokenizer, row["completion"])
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [-100] * len(prompt_ids) + completion_ids,
    }


def tokenize_rows(tokenizer, rows: list[dict[str, str]], max_length: int, path: Path) -> list[dict[str, Any]]:
    examples = [tokenize_row(tokenizer, row) for row in rows]
    too_long = [i + 1 for i, e in enumerate(examples) if len(e["input_ids"]) > max_length]
    if too_long:
        # Truncating would cut the completion: the part that is trained. Refuse instead.
        raise SlmSwapError(f"{path}: rows {too_long[:5]} exceed max_seq_length={max_length} tokens")
    return examples
