"""NF4 4-bit loading through bitsandbytes, run for real on CPU (integration tier): the local model
with and without an adapter, the eval's record of it, and the one-line error without bitsandbytes."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.core.prompts import build_messages
from slm_swap.llm.local import LocalModel, load_local_model

pytestmark = pytest.mark.integration


def linear_kinds(model) -> set[str]:
    return {type(module).__name__ for name, module in model.named_modules() if name.endswith("q_proj")}


def test_4bit_load_on_cpu_quantizes_and_generates(tiny_model_dir, tiny_adapter_dir):
    full = LocalModel(tiny_model_dir, max_new_tokens=8)
    nf4 = LocalModel(tiny_model_dir, max_new_tokens=8, load_in_4bit=True)
    assert full.quantization is None and linear_kinds(full.model) == {"Linear"}
    assert nf4.quantization == "nf4" and linear_kinds(nf4.model) == {"Linear4bit"}
    assert nf4.identity == f"{tiny_model_dir} (nf4)" and full.identity == str(tiny_model_dir)
    weight = next(m for n, m in nf4.model.named_modules() if n.endswith("q_proj")).weight
    assert weight.quant_state.quant_type == "nf4" and weight.numel() * 2 <= 64 * 64  # packed: two weights a byte
    messages = [build_messages("What is the capital of Norway?"), build_messages("Add 2 and 3.")]
    base = [c.text for c in sorted(nf4.complete(messages), key=lambda c: c.index)]
    assert all(isinstance(text, str) for text in base)
    # A LoRA adapter on top of the 4-bit base (what a QLoRA adapter is evaluated with) changes outputs.
    nf4.add_adapter("toolcall", tiny_adapter_dir)
    nf4.default_adapter = "toolcall"
    tuned = [c.text for c in sorted(nf4.complete(messages), key=lambda c: c.index)]
    assert tuned != base


def test_eval_load_in_4bit_records_the_quantization(tiny_model_dir, xlam_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    out = tmp_path / "toolcall_slm_test.json"
    assert main(["eval", "--track", "toolcall", "--model-kind", "slm", "--data-dir", str(xlam_data_dir), "--out", str(out),
                 "--limit", "3", "--load-in-4bit"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 3 and metrics["model"]["identity"] == f"{tiny_model_dir} (nf4)"


def test_4bit_without_bitsandbytes_is_one_line(tiny_model_dir, xlam_data_dir, tmp_path, monkeypatch, capsys):
    load_local_model.cache_clear()  # an earlier test's 4-bit model would be reused
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    out = tmp_path / "m.json"
    assert main(["eval", "--track", "toolcall", "--model-kind", "slm", "--data-dir", str(xlam_data_dir), "--out", str(out),
                 "--load-in-4bit"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--load-in-4bit needs the bitsandbytes package" in lines[0] and "--no-load-in-4bit" in lines[0]
    assert not out.exists()


def test_load_in_4bit_is_for_the_slm_only(xlam_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AZURE_ENDPOINT", "https://x.openai.azure.com/openai/deployments/d")
    monkeypatch.setenv("AZURE_API_KEY", "k" * 12)
    assert main(["eval", "--track", "toolcall", "--model-kind", "azure", "--data-dir", str(xlam_data_dir),
                 "--out", str(tmp_path / "m.json"), "--load-in-4bit"]) == 2
    assert "--load-in-4bit applies to --model-kind slm only" in capsys.readouterr().err
