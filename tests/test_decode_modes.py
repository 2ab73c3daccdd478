"""How the local SLM decodes (issue 32): in bf16 where asked (`--precision`), and through
`torch.compile` (`--compile`), with the answers a user relies on: a compiled step answers as the eager
one, a bf16 single stream as transformers' `generate` at bf16, and the identity says what ran."""

from __future__ import annotations

import pytest
import torch

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.app.pipeline import model_identity
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.llm import precision as precision_module
from slm_swap.llm.decoder import compile_step, greedy_decode
from slm_swap.llm.local import LocalModel, load_local_model
from slm_swap.llm.precision import resolve_precision
from test_local_serve import bfcl_messages


def test_a_bf16_single_stream_answers_as_transformers_generate_at_bf16(embedded_model_dir):
    # One at a time, the decoder's bf16 answers are transformers' own. Batched, bf16 kernels may round
    # differently (measured: 20 of 32 BFCL answers equal within 40 tokens; docs/benchmarks.md), which is
    # why the commands default to fp32.
    model = LocalModel(embedded_model_dir, max_new_tokens=24, precision="bf16")
    assert model.model.dtype == torch.bfloat16
    assert model.identity.endswith("(bf16)") and model.precision == "bf16"
    prompts = [model.render(m) for m in bfcl_messages(6)]
    assert [model.generate([p])[0].text for p in prompts] == [model.reference_generate(p) for p in prompts]


def test_auto_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", None, cuda=False) == "fp32"
    assert resolve_precision("auto", None, cuda=True) == "bf16"
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", None, cuda=False) == "bf16"
    assert resolve_precision("auto", "nf4", cuda=True) == "fp32"  # a 4-bit model keeps its compute dtype
    assert resolve_precision("fp32", None, cuda=True) == "fp32"


def test_a_bf16_model_keeps_its_adapter_unmerged_and_says_bf16(tiny_model_dir, tiny_adapter_dir):
    fp32 = load_local_model(tiny_model_dir, tiny_adapter_dir)
    bf16 = load_local_model(tiny_model_dir, tiny_adapter_dir, precision="bf16")
    assert fp32.merged_adapter == tiny_adapter_dir and not fp32.adapters
    assert bf16.merged_adapter is None and bf16.adapters == {"adapter": tiny_adapter_dir}  # merging would re-round
    assert bf16.identity == f"{tiny_model_dir} (bf16)" and fp32.identity == str(tiny_model_dir)
    # The pipeline knows the identity before loading: bf16 metrics are never reused for fp32 ones.
    settings = Settings(_env_file=None, slm_model_path=tiny_model_dir)
    assert model_identity(settings, "slm", None, "bf16") == bf16.identity
    assert model_identity(settings, "slm", None, "fp32") == fp32.identity


def test_bf16_is_refused_for_a_4bit_load_in_one_line(tiny_model_dir):
    with pytest.raises(SlmSwapError, match="--precision bf16 applies to a full-precision load"):
        LocalModel(tiny_model_dir, load_in_4bit=True, precision="bf16")
    with pytest.raises(SlmSwapError, match="--precision 'fp16'"):
        LocalModel(tiny_model_dir, precision="fp16")


def test_compile_without_a_cpp_compiler_is_refused_before_loading(tiny_model_dir, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SlmSwapError, match="^--compile needs a C\\+\\+ compiler"):
        LocalModel(tiny_model_dir, compile=True)


def test_compiled_decoding_answers_as_eager_decoding(tiny_model_dir, tiny_adapter_dir):
    # The decoder compiled, on a batch whose rows finish at different steps (so the compiled step also
    # runs on a cache cut down mid-way), then what `--compile` does: a lone prompt compiled, with and
    # without an adapter (which wraps the model: compiled anew).
    eager = LocalModel(tiny_model_dir, max_new_tokens=24)
    compiled = LocalModel(tiny_model_dir, max_new_tokens=24, compile=True)
    prompts = [eager.render([{"role": "user", "content": "word " * n}]) for n in (2, 30, 5, 60, 11, 17)]
    rows = eager.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    lengths = [3, 24, 5, 24, 9, 1]  # where each row stops

    def decode(step=None):
        stop_at = lambda row, tokens: len(tokens) >= lengths[row]  # noqa: E731
        return sorted(greedy_decode(eager.model, rows, 24, eager.stop_ids, stop_at, compiled_step=step))

    expected, answered = decode(), decode(compile_step(eager.model))
    assert [d.tokens for d in answered] == [d.tokens for d in expected]
    for got, want in zip(answered, expected):
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert [len(d.tokens) for d in expected] == lengths  # the rows really left at different steps

    assert [compiled.generate([p])[0].tokens for p in prompts[:2]] == [eager.generate([p])[0].tokens for p in prompts[:2]]
    for model in (eager, compiled):
        model.add_adapter("toolcall", tiny_adapter_dir)
    with_adapter = eager.generate(prompts[:1], adapter="toolcall")[0].tokens
    assert compiled.generate(prompts[:1], adapter="toolcall")[0].tokens == with_adapter
    assert with_adapter != eager.generate(prompts[:1])[0].tokens  # the adapter was applied


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--track", "toolcall", "--model-kind", "slm", "--precision", "bf16"], "--precision"),
    (["gateway", "--compile"], "--compile"),
    (["gateway", "--precision", "auto"], "--precision"),
])
def test_in_process_settings_with_an_engine_by_url_are_one_line_errors(argv, flag, monkeypatch, capsys, tmp_path,
                                                                      xlam_data_dir):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "eval":  # rows to evaluate, so that the check of the model's settings is the one that speaks
        argv = [*argv, "--data-dir", str(xlam_data_dir), "--out", str(tmp_path / "metrics.json")]
    monkeypatch.setenv("SLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HOSTED_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HOSTED_MODEL", "never-asked")
    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    assert main(argv) != 0
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and flag in lines[0] and "SLM_BASE_URL" in lines[0], lines
