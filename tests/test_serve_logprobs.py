"""Token log-probabilities: the decoder records the chosen token's log-probability at every step, and
`slm-swap serve` returns them in OpenAI's `logprobs` shape when asked (the gateway's confidence gate
reads them). The real openai SDK over real HTTP on 127.0.0.1, against the embedded model in this process
(the tiny random model repeats one token, which would prove little about which token is which).
"""

from __future__ import annotations

import threading
import time

import openai
import pytest
import torch

from slm_swap.core.prompts import build_messages, build_prompt
from slm_swap.data.bfcl import load_bfcl
from slm_swap.evaluation.calibrate import confidence, openai_confidence
from slm_swap.llm.local import LocalModel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(embedded_model_dir):
    return LocalModel(embedded_model_dir, max_new_tokens=24, batch_size=8)


@pytest.fixture(scope="module")
def client(model):
    import uvicorn

    from slm_swap.app.http_server import listening_socket
    from slm_swap.app.serve import create_app

    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(model, "tiny", batch_wait_s=0), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="unused", max_retries=0)
    server.should_exit = True
    thread.join(timeout=30)
    sock.close()


def prompts(n: int) -> list[list[dict[str, str]]]:
    examples, _ = load_bfcl(("simple_python",))
    return [build_messages(build_prompt("toolcall", e.request, e.functions)) for e in examples[:n]]


def forward_logprobs(model: LocalModel, messages: list[dict[str, str]], tokens: tuple[int, ...]) -> list[float]:
    """Each completion token's log-probability from one plain forward pass over prompt + completion."""
    prompt = model.tokenizer(model.render(messages), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + list(tokens)])
    with torch.inference_mode():
        logits = model.model(input_ids=ids).logits[0].float().log_softmax(-1)
    return [logits[len(prompt) + i - 1, token].item() for i, token in enumerate(tokens)]


def test_batched_decoding_records_each_chosen_tokens_true_log_probability(model):
    # Five prompts of different lengths decoded together (rows finish at different steps): each
    # row's recorded log-probabilities are those a plain forward pass gives its tokens.
    messages = prompts(5)
    generations = model.generate([model.render(m) for m in messages])
    for m, generation in zip(messages, generations):
        assert len(generation.token_logprobs) == len(generation.tokens) == generation.completion_tokens > 0
        assert generation.token_logprobs == pytest.approx(forward_logprobs(model, m, generation.tokens), abs=1e-4)
        assert all(value <= 0 for value in generation.token_logprobs)
        assert "".join(model.token_texts(generation.tokens)) == generation.text


@pytest.mark.parametrize("messages", [
    prompts(1)[0],
    # accents and an emoji: characters of several bytes, some split across tokens
    [{"role": "user", "content": "Repeat exactly: Écris une phrase avec des accents: é à ç ü, et un emoji 🎉"}],
], ids=["toolcall", "multibyte"])
def test_serve_returns_one_logprob_per_completion_token_through_the_openai_sdk(client, messages):
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16)
    asked = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, logprobs=True, top_logprobs=0)
    assert asked.choices[0].message.content == plain.choices[0].message.content  # asking changes nothing else
    assert plain.choices[0].logprobs is None
    content = asked.choices[0].logprobs.content
    assert len(content) == asked.usage.completion_tokens
    assert all(entry.logprob <= 0 and entry.top_logprobs == [] for entry in content)
    assert "".join(entry.token for entry in content) == asked.choices[0].message.content
    assert bytes(b for entry in content for b in entry.bytes).decode("utf-8") == asked.choices[0].message.content
    assert openai_confidence(content) == confidence(entry.logprob for entry in content) == min(e.logprob for e in content)


def test_a_completion_cut_at_a_stop_string_has_logprobs_for_the_kept_text_only(client):
    messages = prompts(1)[0]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, logprobs=True)
    text = whole.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # two characters from the middle
    assert stop.strip(), f"pick another cut: {text!r}"
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=16, logprobs=True, stop=[stop])
    kept = cut.choices[0].message.content
    assert kept == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    content = cut.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == kept
    assert len(content) < len(whole.choices[0].logprobs.content)
    assert [e.logprob for e in content] == [e.logprob for e in whole.choices[0].logprobs.content][: len(content)]


@pytest.mark.parametrize("extra, says", [
    ({"logprobs": True, "top_logprobs": 2}, "not supported"),
    ({"top_logprobs": 0, "logprobs": "yes"}, "logprobs"),
    ({"logprobs": False, "top_logprobs": 1}, "requires logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "between 0 and 20"),
])
def test_top_logprobs_it_cannot_answer_are_a_400_naming_the_parameter(client, extra, says):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body=extra)
    error = caught.value.body
    assert says in error["message"] and error["param"] in ("top_logprobs", "logprobs")
