"""The local SLM client and `slm-swap serve` (integration tier: real models, a real server process).

The server is checked the way the product uses it: the real openai SDK (Azure and plain OpenAI
URL shapes) evaluating through it must produce exactly what the in-process local client produces.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from slm_swap.app.cli import main
from slm_swap.app.serve import parse_adapter_specs
from slm_swap.core.prompts import build_messages, build_prompt
from slm_swap.data.bfcl import load_bfcl
from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.local import LocalModel, load_local_model

pytestmark = pytest.mark.integration
KEY = "serve-key-123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bfcl_messages(n: int, track: str = "toolcall") -> list[list[dict[str, str]]]:
    examples, _ = load_bfcl(("simple_python",))
    return [build_messages(build_prompt(track, e.request, e.functions)) for e in examples[:n]]


def test_batched_generation_equals_one_at_a_time_on_the_embedded_model(embedded_model_dir):
    # 13 prompts of different lengths (two prefill groups) where five stop early and the rest hit
    # the token limit, so finished rows leave the batch mid-way: every output must still be what
    # transformers' `generate` gives for that prompt alone.
    model = LocalModel(embedded_model_dir, max_new_tokens=40, batch_size=13)
    messages = bfcl_messages(13)
    one_at_a_time = [model.reference_generate(model.render(m)) for m in messages]
    batched = {c.index: c.text for c in model.complete(messages)}
    assert [batched[i] for i in range(len(messages))] == one_at_a_time
    assert all(one_at_a_time)

    streamed = [generation for _, generation in model.stream([model.render(m) for m in messages])]
    reasons = {generation.finish_reason for generation in streamed}
    assert reasons == {"stop", "length"}
    # Each row comes out at the step it finishes (a stop token costs one step more than its text).
    steps = [g.completion_tokens + (g.finish_reason == "stop") for g in streamed]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    single = model.generate([model.render(messages[0])], max_new_tokens=3)[0]
    assert (single.completion_tokens, single.finish_reason) == (3, "length")


def test_adapter_changes_outputs_and_models_load_once(tiny_model_dir, tiny_adapter_dir):
    base = load_local_model(tiny_model_dir)
    assert load_local_model(tiny_model_dir) is base  # one load per process
    tuned = load_local_model(tiny_model_dir, tiny_adapter_dir)
    messages = bfcl_messages(2)
    base_texts = [c.text for c in base.complete(messages)]
    tuned_texts = [c.text for c in tuned.complete(messages)]
    assert base_texts != tuned_texts
    unmerged = LocalModel(tiny_model_dir)
    unmerged.add_adapter("tuned", tiny_adapter_dir)
    assert [c.text for c in unmerged.complete(messages, adapter=None)] == base_texts  # adapter off = base


def test_an_evals_adapter_is_merged_and_answers_as_the_adapter_unmerged_in_fp32(tiny_model_dir, tiny_adapter_dir):
    """An eval serves one adapter: it is folded into the weights (no LoRA layers on every decode
    step), and in full precision that changes no output, token or log-probability beyond rounding."""
    merged = load_local_model(tiny_model_dir, tiny_adapter_dir)
    assert merged.merged_adapter == tiny_adapter_dir and not merged.adapters
    assert not any("lora" in name for name, _ in merged.model.named_modules())
    unmerged = LocalModel(tiny_model_dir)
    unmerged.add_adapter("tuned", tiny_adapter_dir)
    unmerged.default_adapter = "tuned"
    prompts = [merged.render(m) for m in bfcl_messages(6)]
    one, other = merged.generate(prompts, max_new_tokens=24), unmerged.generate(prompts, max_new_tokens=24)
    assert [g.tokens for g in one] == [g.tokens for g in other] and [g.text for g in one] == [g.text for g in other]
    assert max(abs(a - b) for x, y in zip(one, other) for a, b in zip(x.token_logprobs, y.token_logprobs)) < 1e-4
    assert [g.text for g in unmerged.generate(prompts, adapter=None, max_new_tokens=24)] != [g.text for g in one]
    with pytest.raises(SlmSwapError, match="merged into this model"):
        merged.generate(prompts, adapter=None)


def test_missing_checkpoint_and_adapter_are_one_line_errors(tmp_path, tiny_model_dir):
    with pytest.raises(SlmSwapError, match="no checkpoint there"):
        LocalModel(tmp_path)
    with pytest.raises(SlmSwapError, match="not a PEFT adapter"):
        load_local_model(tiny_model_dir).add_adapter("x", tmp_path)


@pytest.mark.parametrize("spec", ["../up=dir", "a/b=dir", "=dir", "name", ".hidden=dir", "x" * 80 + "=dir"])
def test_adapter_names_that_could_escape_are_refused(spec):
    with pytest.raises(SlmSwapError):
        parse_adapter_specs([spec])


def start_server(args: list[str], key: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real `slm-swap serve` process (stdout and stderr together) and its URL, once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "slm_swap.app.cli", "serve", "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stdout.read()}")
    return process, url


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_adapter_dir):
    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny",
                                 "--adapter", f"toolcall={tiny_adapter_dir}", "--api-key", KEY], KEY)
    yield url
    process.terminate()
    output, _ = process.communicate(timeout=30)
    assert "Traceback" not in output, output  # whatever the tests sent, the server logged no crash


def test_models_route_lists_base_and_adapters(server):
    response = httpx.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in response.json()["data"]] == ["tiny", "toolcall"]


@pytest.mark.parametrize(
    "headers, body, status, code_or_param",
    [
        ({}, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer wrong"}, {"model": "tiny", "messages": []}, 401, "invalid_api_key"),
        ({"Authorization": f"Bearer {KEY}"}, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
        ({"Authorization": f"Bearer {KEY}"}, {"model": "tiny"}, 400, "messages"),
        ({"Authorization": f"Bearer {KEY}"}, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True}, 400, "stream"),
        ({"Authorization": f"Bearer {KEY}"}, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_style_errors(server, headers, body, status, code_or_param):
    response = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and code_or_param in (error["code"], error["param"])


def test_invalid_json_body_is_a_400(server):
    response = httpx.post(f"{server}/v1/chat/completions", content=b"{nope", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # json gives up with RecursionError
        b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        # Parses (shallow enough for json), but a content part's text must be a string.
        b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": '
        + b"[" * 500 + b"]" * 500 + b"}]}]}",
    ],
    ids=["unclosed", "messages", "content-part"],
)
def test_deeply_nested_json_is_a_400_not_a_500(server, body):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{server}/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server}/v1/models", headers=headers).status_code == 200


def test_a_lone_surrogate_in_the_content_is_a_400(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 4}'
    response = httpx.post(f"{server}/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert response.status_code == 400 and "lone surrogate" in response.json()["error"]["message"]


def test_nested_too_deeply_says_so(server):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{server}/v1/chat/completions", content=b"[" * 100_000, headers=headers, timeout=30)
    assert response.status_code == 400 and "nested more than 64 levels deep" in response.json()["error"]["message"]


def prompt_tokens(model_dir, messages) -> int:
    """Tokens in the prompt the server renders for `messages` (as `LocalModel` renders it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])


@pytest.mark.parametrize(
    "text, max_tokens",
    [
        ("hello " * 9000, 16),  # over the tiny model's 8192 positions by itself
        ("hello " * 8000, 500),  # fits, but not with the completion asked for
    ],
    ids=["prompt", "prompt+completion"],
)
def test_prompt_over_the_context_is_refused_at_once(server, tiny_model_dir, text, max_tokens):
    headers = {"Authorization": f"Bearer {KEY}"}
    messages = [{"role": "user", "content": text}]
    tokens = prompt_tokens(tiny_model_dir, messages)
    started = time.monotonic()
    body = {"model": "tiny", "messages": messages, "max_tokens": max_tokens}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=120)
    elapsed = time.monotonic() - started
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "context_length_exceeded", "messages")
    assert error["message"].startswith("This model's maximum context length is 8192 tokens.")
    assert f"{tokens + max_tokens} tokens ({tokens} in the messages, {max_tokens} in the completion)" in error["message"]
    assert elapsed < 2, f"took {elapsed:.1f} s"
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    response = httpx.post(f"{server}/v1/chat/completions", json=ok, headers=headers, timeout=120)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] <= 4


def test_huge_prompt_is_refused_without_tokenizing_and_does_not_hold_up_others(server):
    # ~5 MB: tokenizing it would take seconds; its length in characters already says it cannot fit.
    headers = {"Authorization": f"Bearer {KEY}"}
    huge = {"model": "tiny", "messages": [{"role": "user", "content": "hello world, " * 400_000}]}
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        refused = pool.submit(httpx.post, f"{server}/v1/chat/completions", json=huge, headers=headers, timeout=120)
        answered = pool.submit(httpx.post, f"{server}/v1/chat/completions", json=ok, headers=headers, timeout=120)
        refused, answered = refused.result(), answered.result()
        elapsed = time.monotonic() - started
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 8192 tokens.")
    assert re.search(r"a prompt of 520\d{4} characters", error["message"]), error["message"]
    assert answered.status_code == 200
    assert elapsed < 3, f"took {elapsed:.1f} s"


def test_api_key_from_the_environment_is_required_and_never_printed(tiny_model_dir):
    key = "env-serve-key-8f3a9c"
    env = {**os.environ, "SLM_SWAP_SERVE_API_KEY": key}
    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny"], key, env)
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        chat = f"{url}/v1/chat/completions"
        assert httpx.post(chat, json=body, timeout=60).status_code == 401
        assert httpx.post(chat, json=body, headers={"Authorization": "Bearer wrong"}, timeout=60).status_code == 401
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.post(chat, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code == 200
        assert httpx.post(chat, json=body, headers={"api-key": key}, timeout=60).status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert '"slm_swap_serve_api_key": "set"' in output  # the setting was read (and logged as set)
    assert key not in output


def test_an_abandoned_row_leaves_its_batch_at_once_and_the_others_carry_on(tiny_model_dir):
    """A client that hangs up mid-generation abandons its job: its row ends at the next decode step
    (not at max_tokens), and the row decoded beside it still runs to its full length."""
    from slm_swap.llm.batching import Job, ModelWorker

    model = load_local_model(tiny_model_dir)
    worker = ModelWorker(model, batch_size=2, gather_s=1.0)  # both jobs in one batch
    budget = 1024  # "hi" never ends early on the tiny model: both rows would run to the budget
    try:
        leaving, staying = (Job([{"role": "user", "content": "hi"}], None, budget) for _ in range(2))
        left, stayed = worker.submit(leaving), worker.submit(staying)
        while not left.running():
            time.sleep(0.005)
        time.sleep(0.1)  # some tokens in
        leaving.abandon()
        abandoned, finished = left.result(120), stayed.result(120)
    finally:
        worker.stop()
    assert abandoned.finish_reason == "abandoned" and abandoned.completion_tokens < budget // 4, abandoned
    assert (finished.finish_reason, finished.completion_tokens) == ("length", budget)


def test_a_client_that_hangs_up_frees_the_model_for_the_next_request(server):
    """The row of a client that left mid-generation is dropped: the next request waits a fraction
    of what a full-length generation takes, not for that generation to end."""
    headers = {"Authorization": f"Bearer {KEY}"}
    long = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1024}
    short = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    chat = f"{server}/v1/chat/completions"
    started = time.monotonic()
    response = httpx.post(chat, json=long, headers=headers, timeout=120)
    full_length = time.monotonic() - started
    assert response.json()["usage"]["completion_tokens"] == 1024  # the prompt does not end early
    with pytest.raises(httpx.ReadTimeout):  # the client hangs up mid-generation
        httpx.post(chat, json=long, headers=headers, timeout=httpx.Timeout(120, read=full_length / 10))
    started = time.monotonic()
    response = httpx.post(chat, json=short, headers=headers, timeout=120)
    next_request = time.monotonic() - started
    assert response.status_code == 200
    # Decoding to the end would make it about 0.9 of a full generation; dropped, about 0.2.
    assert next_request < full_length / 2, f"the next request took {next_request:.2f} s, a full generation {full_length:.2f} s"


def test_a_lone_request_waits_batch_wait_ms_for_company_and_a_full_batch_does_not(tiny_model_dir):
    """A client's parallel requests arrive milliseconds apart; --batch-wait-ms lets them share one
    batch. A lone request waits that long for company; a full batch starts at once."""
    process, url = start_server(["--model-path", str(tiny_model_dir), "--model-name", "tiny", "--api-key", KEY,
                                 "--batch-size", "2", "--batch-wait-ms", "3000"], KEY)
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def ask():
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60).status_code

    try:
        started = time.monotonic()
        assert ask() == 200
        alone = time.monotonic() - started
        with ThreadPoolExecutor(2) as pool:
            started = time.monotonic()
            assert list(pool.map(lambda _: ask(), range(2))) == [200, 200]
            together = time.monotonic() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert alone >= 3.0, f"a lone request took {alone:.2f} s: it did not wait for company"
    assert together < 3.0, f"a full batch took {together:.2f} s: it waited"


def test_concurrent_requests_are_all_answered_as_if_alone(server):
    messages = bfcl_messages(8)
    headers = {"Authorization": f"Bearer {KEY}"}

    def ask(m, model="tiny"):
        body = {"model": model, "messages": m, "max_tokens": 16, "temperature": 0.7}
        return httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=120).json()["choices"][0]["message"]["content"]

    alone = [ask(m) for m in messages[:4]] + [ask(m, "toolcall") for m in messages[4:]]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, messages, ["tiny"] * 4 + ["toolcall"] * 4))
    assert together == alone


@pytest.mark.parametrize("shape", ["azure", "openai"])
def test_eval_through_the_server_matches_the_local_client(server, shape, xlam_data_dir, tiny_model_dir, tiny_adapter_dir, tmp_path, monkeypatch):
    """The hosted path (real SDK, real HTTP) and the local path give identical outputs for the same model."""
    for key in ("AZURE_ENDPOINT", "AZURE_DEPLOYMENT", "AZURE_API_KEY", "HOSTED_BASE_URL", "HOSTED_MODEL", "HOSTED_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    if shape == "azure":  # the deployment name selects the adapter
        monkeypatch.setenv("AZURE_ENDPOINT", f"{server}/openai/deployments/toolcall")
        monkeypatch.setenv("AZURE_API_KEY", KEY)
    else:
        monkeypatch.setenv("HOSTED_BASE_URL", f"{server}/v1")
        monkeypatch.setenv("HOSTED_MODEL", "toolcall")
        monkeypatch.setenv("HOSTED_API_KEY", KEY)
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    common = ["--track", "toolcall", "--split", "test", "--data-dir", str(xlam_data_dir), "--limit", "4"]
    assert main(["eval", *common, "--model-kind", "azure", "--out", str(tmp_path / "hosted.json")]) == 0
    assert main(["eval", *common, "--model-kind", "slm", "--adapter", str(tiny_adapter_dir), "--out", str(tmp_path / "local.json")]) == 0
    outputs = lambda name: [json.loads(l)["output"] for l in (tmp_path / f"{name}.records.jsonl").read_text().splitlines()]
    assert outputs("hosted") == outputs("local")
    assert main(["compare", "--track", "toolcall", "--azure", str(tmp_path / "hosted.json"), "--slm", str(tmp_path / "local.json")]) == 0
