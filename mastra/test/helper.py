"""Test helper for the Mastra client's tests: everything here comes from the Python package.

    python test/helper.py tiny DIR      # DIR/model (tiny random Llama) + DIR/adapters/adapter_toolcall (random LoRA)
    python test/helper.py messages      # stdin: [{"track", "request", "functions" | "functions_json"}, ...]
                                        # -> stdout: the evaluation's messages for each row
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny(root: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slm_swap.llm.embedded import fetch_embedded_model
    from slm_swap.llm.tiny_model import build_tiny_model

    model_dir = build_tiny_model(fetch_embedded_model(), root / "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
        get_peft_model(model, lora).save_pretrained(root / "adapters" / "adapter_toolcall")
    print(json.dumps({"model": str(model_dir), "adapters": str(root / "adapters")}))


def messages() -> None:
    from slm_swap.core.prompts import build_messages, build_prompt

    rows = json.load(sys.stdin)
    out = []
    for row in rows:  # functions_json: JSON text, parsed here as the data sets are (json.loads)
        functions = json.loads(row["functions_json"]) if "functions_json" in row else row["functions"]
        out.append(build_messages(build_prompt(row["track"], row["request"], functions)))
    sys.stdout.write(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    if sys.argv[1:2] == ["tiny"] and len(sys.argv) == 3:
        tiny(Path(sys.argv[2]))
    elif sys.argv[1:] == ["messages"]:
        messages()
    else:
        sys.exit(__doc__)
