"""A GGUF file as an ordinary float32 transformers checkpoint: dequantized, ready for chat, and
checked after saving.

Notes on the conversion (transformers 5.23):

* GGUF loading goes through a quantizer (``GgufHfQuantizer``). We ask for
  ``GgufConfig(dequantize=True)`` so the weights are unpacked into plain ``nn.Linear``
  tensors and the quantizer detaches itself; otherwise ``config.quantization_config``
  and ``model.hf_quantizer`` stay on the model and ``save_pretrained`` refuses to run
  (the GGUF quantizer is not serializable). We strip any leftovers defensively.
* The weights are the *dequantized Q4_1* weights, not the original bf16 release; that
  is the model this project evaluates and fine-tunes.
* SmolLM2 ties ``lm_head`` to the input embeddings (the GGUF has no ``output.weight``);
  the saved safetensors hold the embedding once and reloading re-ties it. The conversion
  reloads what it saved and checks the logits match before publishing it.
* The GGUF carries the ChatML chat template and ``<|im_end|>`` as eos/pad; both are kept
  (and enforced if a future file lacks them), and the generation config stops on
  ``<|im_end|>``.

Heavy imports (torch, transformers) happen inside the functions that need them.
"""

from __future__ import annotations

import json
from pathlib import Path

from slm_swap.llm.model_folders import ModelError

# SmolLM2-Instruct's ChatML template, verbatim from the GGUF (and the upstream
# tokenizer_config.json). Only used if a GGUF ever comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A chat turn ends with this token, so it is what generation must stop on.
CHAT_EOS_TOKEN = "<|im_end|>"


def load_from_gguf(gguf: Path):
    """Load tokenizer and dense float32 model from the GGUF, ready to be saved as a normal checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # local_files_only: the hub is never needed here, whatever the environment says.
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        # transformers 5 spells it `dtype` (`torch_dtype` is only kept for backward compatibility).
        dtype=torch.float32,
        # Unpack every weight into plain tensors: the alternative keeps GGUF blocks (when the
        # `kernels` package is around), which is neither trainable nor serializable.
        quantization_config=GgufConfig(dequantize=True),
        local_files_only=True,
    )
    _strip_quantization(model)
    _prepare_for_chat(tokenizer, model)
    return tokenizer, model


def _strip_quantization(model) -> None:
    """Leave no trace of the GGUF quantizer, so save_pretrained writes a plain checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    # The GGUF loader copies the file's `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2")
    # into the config; it is meaningless once saved, so it goes too.
    if hasattr(model.config, "_model_name_or_path"):
        del model.config._model_name_or_path


def _prepare_for_chat(tokenizer, model) -> None:
    """Chat template, eos/pad and generation config as SmolLM2-Instruct expects them."""
    from transformers import GenerationConfig

    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE

    # Generation must stop at the end of the assistant turn, i.e. on <|im_end|>.
    if tokenizer.convert_tokens_to_ids(CHAT_EOS_TOKEN) in (None, tokenizer.unk_token_id):
        raise ModelError(f"the embedded tokenizer has no {CHAT_EOS_TOKEN} token; is this a ChatML model?")
    if tokenizer.eos_token != CHAT_EOS_TOKEN:
        tokenizer.eos_token = CHAT_EOS_TOKEN
    # Upstream SmolLM2-Instruct pads with <|im_end|> as well; padded positions are masked
    # by the attention mask, so sharing the id with eos is harmless.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF tokenizer comes with an "infinite" max length; the model's context is the real one.
    tokenizer.model_max_length = model.config.max_position_embeddings

    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    # An explicit generation config (rather than one derived from the model config) is
    # what gets saved and what later `generate()` calls start from.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def verify_saved(model, tokenizer, saved: Path) -> None:
    """Reload the staged checkpoint the plain way and check it is the model we have in memory."""
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((saved / "config.json").read_text())
    if "quantization_config" in config:
        raise ModelError(f"the converted config still has a quantization_config ({saved / 'config.json'})")

    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, local_files_only=True)
    if reloaded.config.tie_word_embeddings != model.config.tie_word_embeddings:
        raise ModelError("tie_word_embeddings changed across save/reload")
    if model.config.tie_word_embeddings and (
        reloaded.get_output_embeddings().weight.data_ptr() != reloaded.get_input_embeddings().weight.data_ptr()
    ):
        raise ModelError("lm_head is no longer tied to the input embeddings after save/reload")

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        expected = model(**prompt).logits
        actual = reloaded(**prompt).logits
    # Same float32 tensors through the same code: anything beyond noise means a lost weight.
    if not torch.allclose(expected, actual, atol=1e-4, rtol=0):
        diff = (expected - actual).abs().max().item()
        raise ModelError(f"the saved checkpoint's logits differ from the converted model's (max abs diff {diff:.3g})")
