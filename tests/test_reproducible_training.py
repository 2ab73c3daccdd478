"""Same seed, same data, same settings: the same adapter. Three CPU trainings of the tiny model
(3 steps each: two with seed 0, one with seed 1), and the seed-0 adapter evaluated twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_swap.app.cli import main
from slm_swap.infra.tracing import NullRun
from slm_swap.train.hyperparams import HyperParams
from slm_swap.train.run import TrainRequest, train

pytestmark = pytest.mark.integration


class LoggedLosses(NullRun):
    """The per-step losses `train` records on its trace."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def event(self, name, *, metadata):
        if name == "train_step":
            self.losses.append((metadata["step"], metadata["loss"]))


def _train(data_dir: Path, model_dir: Path, out: Path, seed: int) -> dict:
    from safetensors.torch import load_file

    trace = LoggedLosses()
    request = TrainRequest(track="toolcall", train_path=data_dir / "toolcall" / "train.jsonl",
                           val_path=data_dir / "toolcall" / "val.jsonl", out_dir=out, model_path=model_dir,
                           max_steps=3, hp=HyperParams(per_device_batch_size=2, seed=seed))
    manifest = train(request, trace=trace)
    return {"manifest": manifest, "losses": trace.losses, "weights": load_file(out / "adapter_model.safetensors"), "path": out}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, xlam_data_dir, tiny_model_dir):
    """One after the other in this process: generator state left over by a run must not leak into the next."""
    folder = tmp_path_factory.mktemp("seeded")
    return {name: _train(xlam_data_dir, tiny_model_dir, folder / name, seed)
            for name, seed in (("first", 0), ("again", 0), ("other", 1))}


def test_the_same_seed_gives_tensor_identical_adapters_and_losses(runs):
    import torch

    first, again = runs["first"], runs["again"]
    assert len(first["weights"]) == 28 and first["weights"].keys() == again["weights"].keys()  # 2 layers x 7 modules x (A, B)
    assert [name for name, tensor in first["weights"].items() if not torch.equal(tensor, again["weights"][name])] == []
    assert [step for step, _ in first["losses"]] == [1, 2, 3] and first["losses"] == again["losses"]
    for key in ("train_loss", "val_loss_before", "val_loss", "train_tokens"):
        assert first["manifest"][key] == again["manifest"][key], key
    assert first["manifest"]["seed"] == 0
    determinism = first["manifest"]["determinism"]
    assert determinism["device"] == "cpu" and determinism["deterministic"] is True and determinism["cpu_threads"] >= 1


def test_a_different_seed_gives_a_different_adapter(runs):
    import torch

    first, other = runs["first"], runs["other"]
    assert other["manifest"]["seed"] == 1
    assert [name for name, tensor in first["weights"].items() if torch.equal(tensor, other["weights"][name])] == []


def test_the_same_adapter_evaluated_twice_gives_identical_outputs_and_metrics(runs, xlam_data_dir, tiny_model_dir,
                                                                             tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    documents, records = [], []
    for name in ("one", "two"):
        eval_dir = tmp_path / name
        assert main(["eval", "--track", "toolcall", "--model-kind", "slm", "--adapter", str(runs["first"]["path"]),
                     "--data-dir", str(xlam_data_dir), "--eval-dir", str(eval_dir), "--limit", "4"]) == 0
        document = json.loads((eval_dir / "toolcall_slm_ft_test.json").read_text())
        documents.append({key: value for key, value in document.items() if key != "timings"})
        lines = (eval_dir / document["records_path"]).read_text().splitlines()
        # latency_s is a timing too; everything else in a record is what the model said and its score.
        records.append([{k: v for k, v in json.loads(line).items() if k != "latency_s"} for line in lines])
    assert documents[0] == documents[1] and documents[0]["n"] == 4
    assert records[0] == records[1] and len(records[0]) == 4
    assert any(record["output"] for record in records[0])  # something was generated to compare
