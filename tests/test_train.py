"""Fine-tuning on CPU with the tiny model: masking, a real `accelerate launch` and `torchrun`,
overfitting, resume, the adapter's re-evaluation, a manifest that records what ran apart from what
was asked, bad inputs, and the launch configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.data.examples import load_rows
from slm_swap.infra.errors import SlmSwapError
from slm_swap.train.data import tokenize_row
from slm_swap.train.hyperparams import HyperParams
from slm_swap.train.launch import ACCELERATE_CONFIG_DIR, CPU_CONFIG, GPU_CONFIG, launch_command
from slm_swap.train.run import MANIFEST, TrainRequest, train
from slm_swap.train.options import TrainOptions

pytestmark = pytest.mark.integration
# Small batches: the tiny model trains a few steps in seconds.
SMALL = HyperParams(per_device_batch_size=2)
CPU_2PROC_CONFIG = ACCELERATE_CONFIG_DIR / "cpu_2proc.yaml"


def test_labels_mask_every_prompt_token_and_no_completion_token(xlam_data_dir, tiny_model_dir):
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = load_rows(xlam_data_dir / "toolcall" / "train.jsonl")[:3]
    examples = [tokenize_row(tokenizer, row) for row in rows]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    for i, (row, example) in enumerate(zip(rows, examples)):
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": "You are a careful assistant. Follow the requested output format exactly."},
             {"role": "user", "content": row["prompt"]}], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        n = len(example["input_ids"])
        labels, ids = batch["labels"][i].tolist(), batch["input_ids"][i].tolist()
        assert labels[:n_prompt] == [-100] * n_prompt  # every prompt token masked
        assert labels[n_prompt:n] == ids[n_prompt:n]  # no completion token masked
        assert all(label == -100 for label in labels[n:])  # padding masked
        assert tokenizer.decode(ids[n_prompt:n]) == row["completion"] + "<|im_end|>\n"  # answer, then stop


def test_on_cpu_the_loss_is_trls_through_the_labelled_positions_only(xlam_data_dir, tiny_model_dir, tmp_path):
    """The CPU trainer sends only the positions whose next token carries loss through the LM head,
    and gets the loss and the gradients TRL's own SFTTrainer gets on the same batch."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from slm_swap.train.backends import load_for_training
    from slm_swap.train.labelled_loss import LabelledPositionsSFTTrainer

    results = {}
    for name, trainer_class in (("trl", SFTTrainer), ("ours", LabelledPositionsSFTTrainer)):
        model, tokenizer = load_for_training("cpu", tiny_model_dir, SMALL)  # seeded: the same adapter both times
        examples = [tokenize_row(tokenizer, row) for row in load_rows(xlam_data_dir / "toolcall" / "train.jsonl")[:3]]
        trainer = trainer_class(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(examples),
                                args=SFTConfig(output_dir=str(tmp_path / name), use_cpu=True, report_to="none",
                                               completion_only_loss=True))
        batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
        projected = []
        head = model.get_output_embeddings().register_forward_hook(lambda m, args, out: projected.append(args[0].shape[:-1]))
        model.eval()  # no dropout: the two runs see the same network
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        head.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[name] = (loss.item(), grads, projected)

    labelled = batch["labels"][:, 1:] != -100
    assert results["ours"][0] == pytest.approx(results["trl"][0], rel=1e-5)
    for name, grad in results["trl"][1].items():
        assert torch.allclose(results["ours"][1][name], grad, rtol=1e-3, atol=1e-6), name
    # Ours: one call over the positions some row is labelled at, fewer than the batch's positions.
    assert results["ours"][2] == [torch.Size([3, int(labelled.any(0).sum())])]
    assert int(labelled.any(0).sum()) < labelled.shape[1]


@pytest.fixture(scope="module")
def overfit_split(tmp_path_factory, xlam_data_dir):
    """Four toolcall rows used as both train and validation: loss on them must fall."""
    folder = tmp_path_factory.mktemp("overfit")
    lines = (xlam_data_dir / "toolcall" / "train.jsonl").read_text().splitlines()[:4]
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "rows.jsonl"


def test_a_few_examples_overfit_and_resume_continues(overfit_split, tiny_model_dir, tmp_path):
    hp = replace(SMALL, learning_rate=2e-3)  # a random tiny model needs a push to move in 12 steps
    request = TrainRequest(track="toolcall", train_path=overfit_split, val_path=overfit_split, out_dir=tmp_path / "adapter",
                           model_path=tiny_model_dir, max_steps=6, save_steps=3, hp=hp)
    first = train(request)
    assert first["steps"] == 6 and first["val_loss"] < first["val_loss_before"]
    assert sorted(p.name for p in request.checkpoints_dir().glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    second = train(replace(request, resume=True, max_steps=12))
    assert second["steps"] == 12 and second["resumed_from"].endswith("checkpoint-6")
    assert second["val_loss"] < first["val_loss"]


def test_throughput_counts_only_the_tokens_trained_in_this_run(xlam_data_dir, tiny_model_dir, tmp_path):
    """Eight copies of one row, two per step: 2 steps of a 4-step epoch train exactly 4 rows' tokens,
    and a resumed third step 2 more, not the whole file's tokens each time."""
    from transformers import AutoTokenizer

    line = (xlam_data_dir / "toolcall" / "train.jsonl").read_text().splitlines()[0]
    rows = tmp_path / "same_row.jsonl"
    rows.write_text((line + "\n") * 8)
    row_tokens = len(tokenize_row(AutoTokenizer.from_pretrained(tiny_model_dir), json.loads(line))["input_ids"])
    request = TrainRequest(track="toolcall", train_path=rows, val_path=rows, out_dir=tmp_path / "adapter",
                           model_path=tiny_model_dir, max_steps=2, save_steps=2, hp=SMALL)
    first = train(request)
    assert first["steps"] == 2 and first["train_tokens"] == 4 * row_tokens
    assert first["train_tokens_per_s"] == pytest.approx(first["train_tokens"] / first["duration_s"], rel=0.01)
    resumed = train(replace(request, resume=True, max_steps=3))
    assert resumed["steps"] == 3 and resumed["train_tokens"] == 2 * row_tokens


def test_accelerate_launch_trains_an_adapter_that_re_evaluates(xlam_data_dir, tiny_model_dir, tmp_path, monkeypatch):
    """The documented commands, for real: `slm-swap train` (accelerate launch, CPU config), then eval --adapter."""
    out = tmp_path / "04_ft" / "adapter_toolcall"
    env = {**os.environ, "SLM_MODEL_PATH": str(tiny_model_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "slm_swap.app.cli", "train", "--track", "toolcall", "--data-dir", str(xlam_data_dir),
         "--out", str(out), "--accelerate-config", str(CPU_CONFIG), "--max-steps", "3"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accelerate launch --quiet --config_file" in result.stdout and "-m slm_swap.train" in result.stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["backend"] == "cpu" and manifest["world_size"] == 1 and manifest["strategy"] == "no"
    assert manifest["hyperparameters"]["lora_r"] == 64 and manifest["hyperparameters"]["lora_alpha"] == 16
    assert manifest["hyperparameters"]["lora_dropout"] == 0.1 and manifest["hyperparameters"]["learning_rate"] == 2e-4
    assert manifest["datasets"]["train"]["rows"] == 20 and len(manifest["datasets"]["train"]["sha256"]) == 64
    assert manifest["train_tokens_per_s"] > 0 and manifest["val_loss"] > 0
    assert manifest["seed"] == 0 and manifest["determinism"]["deterministic"] is True
    assert not any(p.name.startswith(".adapter_toolcall") for p in out.parent.iterdir())  # no staging left

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    assert model.peft_config["default"].r == 64

    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    eval_dir = tmp_path / "05_eval"
    assert main(["eval", "--track", "toolcall", "--model-kind", "slm", "--adapter", str(out), "--data-dir",
                 str(xlam_data_dir), "--eval-dir", str(eval_dir), "--limit", "3"]) == 0
    metrics = json.loads((eval_dir / "toolcall_slm_ft_test.json").read_text())  # the seed's naming
    assert metrics["model"]["adapter"] == str(out) and metrics["n"] == 3


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def four_bit_claims(manifest: dict) -> list[str]:
    """Where a manifest, outside what was `requested`, says the base was loaded in 4 bits: a
    `*4bit*` field that is set, or a 4-bit quantization type as a value."""
    claims = []

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                if "4bit" in str(key).lower() and item:
                    claims.append(f"{path}{key}")
                walk(item, f"{path}{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}{i}.")
        elif isinstance(value, str) and value.lower() in ("nf4", "fp4"):
            claims.append(path.rstrip("."))

    walk({key: value for key, value in manifest.items() if key != "requested"}, "")
    return claims


def test_a_full_precision_cpu_run_records_what_ran_apart_from_the_seeds_request(xlam_data_dir, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    """`--backend cpu` in fp32: the seed's `load_in_4bit: true` stays what was asked (`requested`),
    and nothing the manifest says ran claims a 4-bit load; the pipeline still recognises the adapter
    as the one it would train (it compares what was requested)."""
    from slm_swap.app.finetune_step import TrainingPlan, reusable_adapter
    from slm_swap.infra.config import Settings
    from slm_swap.train.hyperparams import hyperparams_for

    rows = xlam_data_dir / "toolcall"
    request = TrainRequest(track="toolcall", train_path=rows / "train.jsonl", val_path=rows / "val.jsonl",
                           out_dir=tmp_path / "adapter_toolcall", model_path=tiny_model_dir, backend="cpu",
                           precision="fp32", max_steps=1)
    manifest = train(request)
    assert json.loads((request.out_dir / MANIFEST).read_text()) == manifest
    asked = manifest["requested"]
    assert asked["hyperparameters"] == hyperparams_for("toolcall").as_dict() and asked["hyperparameters"]["load_in_4bit"] is True
    assert (asked["backend"], asked["precision"], asked["max_steps"]) == ("cpu", "fp32", 1)
    assert four_bit_claims(manifest) == []
    assert manifest["backend"] == "cpu" and manifest["quantization"] is None and manifest["precision"] == "fp32"
    assert manifest["weight_dtypes"] == {"base": "float32", "adapter": "float32"}
    assert (manifest["strategy"], manifest["world_size"], manifest["process_group"]) == ("no", 1, None)
    ran = manifest["hyperparameters"]  # read back from the adapter's PEFT config and the trainer's arguments
    assert (ran["lora_r"], ran["lora_alpha"], ran["lora_dropout"], ran["per_device_batch_size"]) == (64, 16, 0.1, 4)
    assert sorted(ran["target_modules"]) == sorted(asked["hyperparameters"]["target_modules"])
    assert manifest["steps"] == 1 and manifest["global_batch_size"] == 4

    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    plan = TrainingPlan(track="toolcall", train_path=request.train_path, val_path=request.val_path, out=request.out_dir,
                        options=TrainOptions(overwrite=True, max_steps=1))
    assert reusable_adapter(Settings(), plan) == manifest
    assert reusable_adapter(Settings(), replace(plan, options=TrainOptions(overwrite=True, max_steps=2))) is None


def test_bnb_backend_trains_4bit_qlora_on_cpu_repeatably(xlam_data_dir, tiny_model_dir, tmp_path):
    """The QLoRA backend for real on CPU: an NF4 base (bitsandbytes Linear4bit), LoRA on top, the
    loss falling, the same seed giving the same adapter, which then evaluates on the 4-bit base."""
    hp = replace(SMALL, learning_rate=2e-3)
    rows = xlam_data_dir / "toolcall" / "train.jsonl"
    request = TrainRequest(track="toolcall", train_path=rows, val_path=rows, out_dir=tmp_path / "a", model_path=tiny_model_dir,
                           backend="bnb", max_steps=4, hp=hp)
    first = train(request)
    assert first["backend"] == "bnb" and first["quantization"] == "nf4" and four_bit_claims(first) == ["quantization"]
    # The base's other weights in the CPU compute dtype; the LoRA weights in bf16, as TRL casts them on
    # a quantized model (the QLoRA paper's recipe), whatever the precision: the manifest shows it.
    assert first["weight_dtypes"] == {"base": "float32", "adapter": "bfloat16"}
    assert first["val_loss"] < first["val_loss_before"]
    assert first["determinism"]["device"] == "cpu" and first["global_batch_size"] == 2
    second = train(replace(request, out_dir=tmp_path / "b"))
    one, two = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert one.keys() == two.keys() and all((one[k] == two[k]).all() for k in one)
    assert second["train_loss"] == first["train_loss"]

    from slm_swap.llm.local import LocalModel

    model = LocalModel(tiny_model_dir, max_new_tokens=4, load_in_4bit=True)
    model.add_adapter("toolcall", tmp_path / "a")
    assert model.quantization == "nf4" and len(model.generate([model.render([{"role": "user", "content": "hi"}])])) == 1


@pytest.mark.parametrize("config,strategy", [("cpu_2proc.yaml", "multi_cpu"), ("cpu_2proc_zero2.yaml", "deepspeed_zero2")])
def test_two_cpu_processes_train_data_parallel(xlam_data_dir, tiny_model_dir, tmp_path, config, strategy):
    """The CPU configs really start two processes that share the data (plain DDP, and DeepSpeed
    ZeRO-2 as on the 4-GPU box): 20 rows at 4 per device make 5 steps an epoch in one process, 3
    in two; the loss is measured before and after; only rank 0 writes."""
    out = tmp_path / "04_ft" / "adapter_toolcall"
    env = {**os.environ, "SLM_MODEL_PATH": str(tiny_model_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "slm_swap.app.cli", "train", "--track", "toolcall", "--data-dir", str(xlam_data_dir),
         "--out", str(out), "--accelerate-config", str(ACCELERATE_CONFIG_DIR / config)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["world_size"] == 2 and manifest["strategy"] == strategy and manifest["process_group"] == "gloo"
    assert manifest["backend"] == "cpu" and four_bit_claims(manifest) == []
    per_device = manifest["hyperparameters"]["per_device_batch_size"]
    assert manifest["global_batch_size"] == 2 * per_device
    assert manifest["steps"] == -(-20 // (2 * per_device))  # one epoch of 20 rows, shared by two processes
    assert manifest["val_loss_before"] > 0 and manifest["val_loss"] > 0
    assert result.stdout.count("adapter ") == 1  # one summary: the other rank reports nothing
    assert sorted(p.name for p in out.parent.iterdir()) == ["adapter_toolcall", "adapter_toolcall.checkpoints"]


def test_torchrun_starts_two_cpu_processes_that_train_data_parallel(xlam_data_dir, tiny_model_dir, tmp_path):
    """The seed's other launcher: `torchrun --nproc_per_node=2 -m slm_swap.train` (here with
    `--standalone`: a free port, so parallel runs cannot collide) trains the same adapter and manifest
    as the two-process accelerate run: plain DDP over gloo, 3 steps for 20 rows, rank 0 writing."""
    out = tmp_path / "04_ft" / "adapter_toolcall"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "slm_swap.train", "--track", "toolcall",
         "--train", str(xlam_data_dir / "toolcall" / "train.jsonl"), "--val", str(xlam_data_dir / "toolcall" / "val.jsonl"),
         "--out", str(out)],
        env={**os.environ, "SLM_MODEL_PATH": str(tiny_model_dir)}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["strategy"], manifest["world_size"], manifest["process_group"]) == ("multi_cpu", 2, "gloo")
    assert manifest["backend"] == "cpu" and manifest["quantization"] is None and four_bit_claims(manifest) == []
    per_device = manifest["hyperparameters"]["per_device_batch_size"]
    assert manifest["global_batch_size"] == 2 * per_device
    assert manifest["steps"] == -(-20 // (2 * per_device))  # one epoch of 20 rows, shared by two processes
    assert manifest["val_loss_before"] > 0 and manifest["val_loss"] > 0
    assert result.stdout.count("adapter ") == 1 and "world_size=2" in result.stdout  # rank 1 reports nothing
    assert sorted(p.name for p in out.parent.iterdir()) == ["adapter_toolcall", "adapter_toolcall.checkpoints"]
    assert (out / "adapter_model.safetensors").is_file()


def test_bad_inputs_are_one_line_errors_and_write_nothing(xlam_data_dir, tiny_model_dir, tmp_path):
    base = TrainRequest(track="toolcall", train_path=xlam_data_dir / "toolcall" / "train.jsonl",
                        val_path=xlam_data_dir / "toolcall" / "val.jsonl", out_dir=tmp_path / "out", model_path=tiny_model_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "adapter_config.json").write_text("{}")
    cases = [
        (replace(base, train_path=tmp_path / "missing.jsonl"), "missing.jsonl: no such dataset file"),
        (replace(base, val_path=empty), "empty.jsonl: no rows"),
        (replace(base, train_path=xlam_data_dir / "structured" / "train.jsonl"), "not a toolcall completion"),
        (replace(base, out_dir=existing), "already holds an adapter: pass --overwrite"),
        (replace(base, model_path=tmp_path / "no-model"), "no-model: no checkpoint there"),
    ]
    for request, message in cases:
        with pytest.raises(SlmSwapError, match=message):
            train(request)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in existing.iterdir()) == ["adapter_config.json"]
    # And through the entry point: one line on stderr, exit 2.
    result = subprocess.run(
        [sys.executable, "-m", "slm_swap.train", "--track", "toolcall", "--train", str(tmp_path / "missing.jsonl"),
         "--val", str(empty), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "SLM_MODEL_PATH": str(tiny_model_dir)}, timeout=300,
    )
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"slm_swap.train: error: {tmp_path / 'missing.jsonl'}: no such dataset file"]


def test_launch_configs_load_with_accelerates_own_parsers():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    gpu = load_config_from_file(str(GPU_CONFIG))
    assert gpu.num_processes == 4 and str(gpu.distributed_type).endswith("DEEPSPEED")
    ds_file = Path(gpu.deepspeed_config["deepspeed_config_file"])
    assert ds_file.name == "deepspeed_zero2.json"
    plugin = DeepSpeedPlugin(hf_ds_config=str(GPU_CONFIG.parent.parent / ds_file))
    assert plugin.zero_stage == 2
    cpu = load_config_from_file(str(CPU_CONFIG))
    assert cpu.use_cpu and cpu.num_processes == 1
    command = launch_command(track="toolcall", train=Path("t.jsonl"), val=Path("v.jsonl"), out=Path("o"), accelerate_config=GPU_CONFIG)
    assert command[1:5] == ["launch", "--quiet", "--config_file", str(GPU_CONFIG)] and command[5:7] == ["-m", "slm_swap.train"]
