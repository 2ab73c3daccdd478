"""Training examples as `input_ids` and `labels` (-100: no loss), built here for every chat template.

v0 rows (`{"prompt", "completion"}`): the prompt is rendered exactly as at inference (`build_messages`
+ the chat template with the generation prompt), and the completion is what the template puts after
it for an assistant message (the completion text and the end-of-turn token), so the model learns to
answer and stop in the format the evaluation reads. Prompt and completion are tokenized separately
and joined, which makes the mask exact: loss on every completion token and no prompt token.

Agent rows (`{"messages": [{"role", "content", "trained"}]}`, from `slm-swap build`): the
conversation is rendered once by the chat template, and cut at each trained (assistant) turn: the
turn starts where the template's generation prompt for it ends (what the model saw when it wrote
the turn) and ends where rendering the conversation up to and including it stops agreeing with the
whole (its text and end-of-turn marker; a template that closes the conversation with an extra
token adds it to the last turn only). Pieces are tokenized separately, as at inference, where each
turn is generated after its tokenized prompt, so the loss falls on exactly the trained turns'
tokens: the system prompt, the task and every observation carry none. This needs no generation
markers in the template (the embedded SmolLM2's has none, so TRL's `assistant_only_loss` cannot be
used); it needs only that each turn's generation prompt begins the rest of the conversation, and a
template that breaks that is refused rather than masked wrongly.

TRL's SFTTrainer uses a `labels` column as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_swap.core.prompts import build_messages
from slm_swap.core.tracks import get_row_track, get_track
from slm_swap.data.examples import load_rows
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import read_jsonl


def check_rows_for_track(path: Path, rows: list[dict[str, str]], track: str) -> None:
    """Refuse a file whose completions belong to the other track (or to none)."""
    own = get_row_track(track).is_own_completion
    for number, row in enumerate(rows, start=1):
        if not own(row["completion"]):
            raise SlmSwapError(f"{path}: row {number}: completion is not a {track} completion (rows for the other track?)")


def load_training_rows(path: Path, track: str) -> list[dict[str, Any]]:
    """A split's rows for `track`'s kind of rows, every row checked (one line naming the bad one)."""
    if get_track(track).trains_on_conversations:
        return load_conversation_rows(path)
    rows = load_rows(path)
    if not rows:
        raise SlmSwapError(f"{path}: no rows")
    check_rows_for_track(path, rows, track)
    return rows


def load_conversation_rows(path: Path) -> list[dict[str, Any]]:
    """Agent rows: each exactly `{"messages": [...]}`, every message `role`, `content` (strings) and
    `trained` (a bool), only assistant turns trained, and at least one trained turn per row."""
    if not Path(path).is_file():
        raise SlmSwapError(f"{path}: no such dataset file")
    rows = read_jsonl(Path(path), "dataset file")
    if not rows:
        raise SlmSwapError(f"{path}: no rows")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or set(row) != {"messages"} or not isinstance(row["messages"], list) or not row["messages"]:
            raise SlmSwapError(f"{path}: row {number}: expected exactly {{\"messages\": [...]}} (an agent row of "
                               "`slm-swap build`; rows of prompt and completion belong to the structured/toolcall tracks)")
        for place, message in enumerate(row["messages"], start=1):
            if not (isinstance(message, dict) and set(message) == {"role", "content", "trained"}
                    and isinstance(message["role"], str) and isinstance(message["content"], str)
                    and isinstance(message["trained"], bool)):
                raise SlmSwapError(f"{path}: row {number}: message {place}: expected 'role' and 'content' (strings) "
                                   "and 'trained' (true or false)")
            if message["trained"] and message["role"] != "assistant":
                raise SlmSwapError(f"{path}: row {number}: message {place} is a {message['role']!r} message marked "
                                   "trained: only the model's own (assistant) turns can carry loss")
        if not any(message["trained"] for message in row["messages"]):
            raise SlmSwapError(f"{path}: row {number}: no message is trained: nothing in it would carry loss")
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


def trained_turns(tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, list[int]]]]:
    """(the rendered conversation, each trained turn as (start, end, token ids)): see the module doc.

    A turn's tokens are what the model would generate after its prompt: the template's text for the
    turn, tokenized on its own, cut to the longest run of whole tokens whose text the rest of the
    conversation agrees with (so a token the template adds only when the conversation ends there,
    such as an end-of-text after the last turn, is trained only on the last turn)."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    render = tokenizer.apply_chat_template
    full = render(plain, tokenize=False)
    turns: list[tuple[int, int, list[int]]] = []
    for index, message in enumerate(messages):
        if not message["trained"]:
            continue
        prompt = render(plain[:index], tokenize=False, add_generation_prompt=True) if index else ""
        turn = render(plain[: index + 1], tokenize=False)
        ids: list[int] = []
        if full.startswith(prompt) and turn.startswith(prompt) and (not turns or len(prompt) >= turns[-1][1]):
            candidate = tokenizer(turn[len(prompt):], add_special_tokens=False)["input_ids"]
            rest = full[len(prompt):]
            while candidate and not rest.startswith(tokenizer.decode(candidate)):
                candidate = candidate[:-1]
            ids = candidate
        text = tokenizer.decode(ids)
        if message["content"] not in text:
            raise SlmSwapError(
                "the model's chat template does not render the conversation turn by turn (the generation prompt "
                f"for message {index + 1} does not begin the rest of it): cannot tell the trained turns' tokens apart")
        turns.append((len(prompt), len(prompt) + len(text), ids))
    return full, turns


def tokenize_conversation(tokenizer, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """`input_ids` of the whole conversation, `labels` on the trained turns' tokens only."""
    full, turns = trained_turns(tokenizer, messages)
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for start, end, ids in [*turns, (len(full), len(full), [])]:
        if full[cursor:start]:
            context = tokenizer(full[cursor:start], add_special_tokens=False)["input_ids"]
            input_ids += context
            labels += [-100] * len(context)
        input_ids += ids
        labels += ids
        cursor = end
    return {"input_ids": input_ids, "labels": labels}


def tokenize_example(tokenizer, row: dict[str, Any]) -> dict[str, Any]:
    """Either kind of row (checked by `load_training_rows`) as input_ids and labels."""
    return tokenize_conversation(tokenizer, row["messages"]) if "messages" in row else tokenize_row(tokenizer, row)


def tokenize_rows(tokenizer, rows: list[dict[str, Any]], max_length: int, path: Path) -> list[dict[str, Any]]:
    examples = [tokenize_example(tokenizer, row) for row in rows]
    too_long = [i + 1 for i, e in enumerate(examples) if len(e["input_ids"]) > max_length]
    if too_long:
        # Truncating would cut the completion (or the last turns): the part that is trained. Refuse instead.
        raise SlmSwapError(f"{path}: rows {too_long[:5]} exceed max_seq_length={max_length} tokens")
    return examples
