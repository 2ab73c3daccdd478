"""Observation-masked training on agent rows (`slm-swap train --track agent`): the loss falls on the
model's own turns and nowhere else, for SmolLM2's chat template (no generation markers) and for
Phi-4-mini's (tests/fixtures/chat_templates), bad rows are refused, and a tiny model overfits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.infra.errors import SlmSwapError
from slm_swap.train.data import load_conversation_rows, load_training_rows, tokenize_conversation
from slm_swap.train.run import MANIFEST

PHI_TEMPLATE = Path(__file__).parent / "fixtures" / "chat_templates" / "phi-4-mini-instruct.jinja"

SYSTEM = ("You solve the user's task by writing Python code that calls the tools below.\n"
          "Tools:\ndef calculate_triangle_area(base: integer, height: integer) -> string:")
TASK = "New task:\nFind the area of a triangle with a base of 10 units and height of 5 units."
CALL = ("Thought: I call calculate_triangle_area with the base and height the task names.\n<code>\n"
        "result = calculate_triangle_area(base=10, height=5)\nprint(result)\n</code>")
OBSERVATION = 'Observation:\nExecution logs:\n{"status": "ok", "tool": "calculate_triangle_area", "result_id": "5f2a"}\n'
FINAL = "Thought: I have the result.\n<code>\nfinal_answer(result)\n</code>"


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content, "trained": role == "assistant"}


def conversation(observation: str = OBSERVATION, *, closing_observation: str | None = None) -> list[dict]:
    messages = [message("system", SYSTEM), message("user", TASK), message("assistant", CALL),
                message("user", observation), message("assistant", FINAL)]
    if closing_observation is not None:
        messages.append(message("user", closing_observation))
    return messages


def loss_spans(example: dict) -> list[list[int]]:
    """The runs of consecutive tokens that carry loss."""
    spans, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label == -100:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token  # a trained token's label is the token itself
            current.append(token)
    return spans + ([current] if current else [])


@pytest.fixture(scope="module")
def tokenizers(embedded_model_dir):
    from transformers import AutoTokenizer

    smollm2 = AutoTokenizer.from_pretrained(embedded_model_dir)
    phi = AutoTokenizer.from_pretrained(embedded_model_dir)
    phi.chat_template = PHI_TEMPLATE.read_text()
    return {"smollm2": smollm2, "phi-4-mini": phi}


# What each template writes after an assistant turn's text: in the middle of a conversation, and
# when the turn ends it (Phi-4-mini's template then adds the end-of-text token).
END_OF_TURN = {"smollm2": ("<|im_end|>\n", "<|im_end|>\n"), "phi-4-mini": ("<|end|>", "<|end|><|im_end|>")}


@pytest.mark.parametrize("template", sorted(END_OF_TURN))
def test_the_tokens_with_loss_decode_to_exactly_the_assistant_turns(tokenizers, template):
    tokenizer = tokenizers[template]
    messages = conversation()
    example = tokenize_conversation(tokenizer, messages)
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    # The whole conversation is there, token for token as the template renders it...
    assert tokenizer.decode(example["input_ids"]) == tokenizer.apply_chat_template(plain, tokenize=False)
    # ...and the loss falls on the two assistant turns, each with its end-of-turn marker, and nothing else.
    middle, last = END_OF_TURN[template]
    assert [tokenizer.decode(span) for span in loss_spans(example)] == [CALL + middle, FINAL + last]


def test_a_template_without_the_turns_boundaries_is_refused(embedded_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    # A template that renders the last message only: a turn's prompt does not begin the conversation.
    tokenizer.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>>{% endif %}"
    with pytest.raises(SlmSwapError, match="does not render the conversation turn by turn"):
        tokenize_conversation(tokenizer, conversation())


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def token_losses(model, example: dict) -> list[float]:
    """The loss of each trained token, as the trainer computes it (next-token cross-entropy)."""
    import torch

    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"][1:])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    losses = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
    return losses[labels != -100].tolist()


def test_an_observations_text_changes_no_loss_it_could_carry(tokenizers, tiny_model):
    """Observations are context, never targets. After the last turn, an observation cannot matter
    at all: the loss is the same whatever it says (up to float noise from the longer sequence's
    matmuls). In the middle, it is context for the turn that follows, so only that turn's loss may
    move: the turns before it, and which tokens are trained, stay as they were."""
    tokenizer = tokenizers["smollm2"]
    other = 'Observation:\nExecution logs:\n{"status": "error", "detail": "quota exceeded for this key, retry later"}\n'

    closing = tokenize_conversation(tokenizer, conversation(closing_observation=OBSERVATION))
    closing_other = tokenize_conversation(tokenizer, conversation(closing_observation=other))
    assert closing["input_ids"] != closing_other["input_ids"]
    assert token_losses(tiny_model, closing) == pytest.approx(token_losses(tiny_model, closing_other), rel=1e-5)

    middle = tokenize_conversation(tokenizer, conversation())
    middle_other = tokenize_conversation(tokenizer, conversation(observation=other))
    assert loss_spans(middle) == loss_spans(middle_other)
    first_turn = len(loss_spans(middle)[0])
    assert token_losses(tiny_model, middle)[:first_turn] == pytest.approx(token_losses(tiny_model, middle_other)[:first_turn], rel=1e-5)

    # Had the observation carried loss, the same change would have moved it: the check can fail.
    def unmasked(example: dict) -> dict:
        return {"input_ids": example["input_ids"], "labels": example["input_ids"]}
    assert abs(sum(token_losses(tiny_model, unmasked(closing))) - sum(token_losses(tiny_model, unmasked(closing_other)))) > 1.0


def write_rows(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [dict(m, trained=False) for m in conversation()]}],
     "row 1: no message is trained: nothing in it would carry loss"),
    ([{"messages": conversation()}, {"messages": [dict(m, trained=True) for m in conversation()]}],
     "row 2: message 1 is a 'system' message marked trained: only the model's own (assistant) turns can carry loss"),
    ([{"prompt": "p", "completion": "c"}], "row 1: expected exactly {\"messages\": [...]}"),
    ([{"messages": [{"role": "user", "content": "x"}]}], "row 1: message 1: expected 'role' and 'content'"),
])
def test_bad_agent_rows_are_one_line_and_write_nothing(tmp_path, capsys, rows, message):
    data = tmp_path / "data"
    write_rows(data / "agent" / "train.jsonl", rows)
    write_rows(data / "agent" / "val.jsonl", [{"messages": conversation()}])
    assert main(["train", "--track", "agent", "--data-dir", str(data), "--ft-dir", str(tmp_path / "ft")]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"slm-swap: error: {data / 'agent' / 'train.jsonl'}: {message}")
    assert not (tmp_path / "ft").exists()


def test_v0_rows_are_refused_for_the_agent_track_and_agent_rows_for_v0(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", [{"messages": conversation()}])
    assert load_conversation_rows(rows)[0]["messages"][2]["trained"]
    with pytest.raises(SlmSwapError, match="row 1"):
        load_training_rows(rows, "toolcall")


@pytest.mark.integration
def test_a_tiny_model_overfits_a_few_trajectories(tiny_model_dir, tmp_path, monkeypatch):
    """Four agent rows as both train and validation: a real `accelerate launch` run of
    `slm-swap train --track agent` lowers the loss on their trained tokens."""
    rows = [{"messages": conversation(OBSERVATION.replace("5f2a", f"{n:04x}"))} for n in range(4)]
    data = tmp_path / "data"
    write_rows(data / "agent" / "train.jsonl", rows)
    write_rows(data / "agent" / "val.jsonl", rows)
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    assert main(["train", "--track", "agent", "--data-dir", str(data), "--ft-dir", str(tmp_path / "ft"),
                 "--max-steps", "8"]) == 0
    manifest = json.loads((tmp_path / "ft" / "adapter_agent" / MANIFEST).read_text())
    assert manifest["track"] == "agent" and manifest["steps"] == 8
    # The agent track's own batch size: one conversation per step.
    assert manifest["hyperparameters"]["per_device_batch_size"] == 1 and manifest["global_batch_size"] == 1
    assert manifest["val_loss"] < manifest["val_loss_before"]
    assert manifest["datasets"]["train"]["rows"] == 4
