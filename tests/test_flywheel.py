"""One flywheel round (`slm_swap.app.flywheel`, `slm-swap flywheel`) on the tiny model: the gateway's
records (in its exact shape, `test_traffic.record`) become rows, a candidate is trained and evaluated
against the base SLM and the hosted stub on the held-out traffic, and the gate decides. A round killed
at any step leaves the registry and the watermark as they were, and the next one runs cleanly."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

# Prefect keeps its home (profiles, local result storage) here, never in the developer's ~/.prefect.
if "PREFECT_HOME" not in os.environ:
    import atexit

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="slm-swap-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import pytest  # noqa: E402

from openai_stub import OpenAIStub  # noqa: E402
from prefect_api import prefect_api, run_graph  # noqa: E402,F401  (a fixture and a helper)
from test_traffic import append, record, tool_calls
from slm_swap.app import flywheel
from slm_swap.app.requests import FlywheelRequest
from slm_swap.data.examples import load_rows
from slm_swap.data.traffic import read_heldout, rows_from_records, watermark_path
from slm_swap.evaluation.registry import load_registry, promoted_adapter
from slm_swap.infra.config import Settings
from slm_swap.infra.fileio import write_json
from slm_swap.train.launch import CPU_CONFIG
from slm_swap.train.run import MANIFEST

CITIES = ["Oslo", "Lima", "Rome", "Cairo", "Quito", "Hanoi", "Dakar", "Perth", "Riga", "Bern", "Accra", "Doha",
          "Kyiv", "Baku", "Male", "Suva"]


def traffic(cities=CITIES, *, sabotaged: bool = False) -> list[dict]:
    """Fallbacks the hosted model answered; sabotaged: it called a function the request never offered."""
    name = "drop_database" if sabotaged else "get_weather"
    return [record(f"What is the weather in {city}?", rid=f"req-{city}",
                   output=tool_calls((name, json.dumps({"city": city})))) for city in cities]


@pytest.fixture
def world(tmp_path, xlam_data_dir, tiny_model_dir, monkeypatch):
    """The main job's rows (a copy), the gateway's records file, an empty registry, the hosted stub
    answering every traffic prompt with the traffic's own (validated) answer."""
    data = tmp_path / "data"
    shutil.copytree(xlam_data_dir, data)
    records = tmp_path / "gateway" / "requests.jsonl"
    records.parent.mkdir()
    append(records, *traffic())
    answers = {row.prompt: row.completion for row in rows_from_records(traffic()).rows}
    stub = OpenAIStub(lambda messages: answers.get(messages[-1]["content"], "no idea"))
    stub.__enter__()
    for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_API_KEY", "PREFECT__FLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOSTED_BASE_URL", f"{stub.url}/v1")
    monkeypatch.setenv("HOSTED_MODEL", "hosted-stub")
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    request = FlywheelRequest(track="toolcall", max_steps=1, records=records,
                              registry=tmp_path / "gateway" / "registry.json",
                              policy=tmp_path / "gateway" / "policy_toolcall.json", data_dir=data,
                              flywheel_dir=tmp_path / "rounds", accelerate_config=CPU_CONFIG, batch_size=16)
    yield request
    stub.__exit__(None, None, None)


def fake_finetune(tiny_adapter_dir: Path):
    """A finished training's output (a whole adapter with its manifest), without the training."""
    def finetune(state, request, settings, flow_run_id=None):
        shutil.copytree(tiny_adapter_dir, state.adapter)
        write_json(state.adapter / MANIFEST, {"track": state.track, "fake": True})
    return finetune


def forced_promotion(real_decide):
    """The real gate's comparison, but promoting: the random tiny model rarely beats the base."""
    def decide(state, request):
        decision = dataclasses.replace(real_decide(state, request), promote=True, reason="promoted by the test")
        state.decision, state.status = decision, "promoting"
        return decision
    return decide


def evaluate_once(real_evaluate):
    """The real three evals in the first round that gets there; later rounds (same held-out bytes,
    same models) take copies of its metrics files instead of decoding again: only for speed."""
    first = []

    def evaluate(state, request, settings, flow_run_id=None):
        if not first:
            real_evaluate(state, request, settings, flow_run_id)
            first.append(state)
            return
        shutil.copytree(first[0].folder / "eval", state.folder / "eval")
        state.incumbent = promoted_adapter(load_registry(request.registry), state.track)
        state.metrics = {side: state.folder / "eval" / side / path.name for side, path in first[0].metrics.items()}
    return evaluate


def registry_bytes(request: FlywheelRequest) -> bytes | None:
    return request.registry.read_bytes() if request.registry.exists() else None


@pytest.mark.integration
def test_a_round_as_the_flow_trains_evaluates_decides_and_reports(prefect_api, world, capsys):
    """The Prefect flow, its fine-tune the pipeline's real subflow on the tiny model; then the command."""
    from flows.flywheel import slm_swap_flywheel
    from flows.runtime import run_in_process
    from slm_swap.app.cli import main

    request = world
    run_id, line = run_in_process(slm_swap_flywheel, request)
    folder = request.flywheel_dir / "toolcall" / "round-1"
    report = json.loads((folder / "report.json").read_text())
    assert line.startswith("flywheel toolcall round 1: 16 new rows (fallback 16), held-out ")
    graph = run_graph(run_id, expect_tasks=5)
    assert {"flywheel-collect", "flywheel-rows", "flywheel-evaluate", "flywheel-decide", "flywheel-finish"} <= {
        name.rsplit("-", 1)[0] for name in graph["tasks"]}
    assert len(graph["children"]) == 1  # the fine-tune subflow
    assert all(t.state.is_completed() for t in graph["tasks"].values())
    assert set(report["evals"]) == {"candidate", "incumbent", "hosted"}
    hosted = report["evals"]["hosted"]
    assert hosted["passes"]["args_exact_rate"] == hosted["n"] == report["rows"]["heldout"]["total"] >= 1
    assert report["evals"]["incumbent"]["model"]["adapter"] is None  # nothing promoted: the base SLM
    # The gate's verdict and the registry agree; a refusal leaves no registry behind.
    promoted = promoted_adapter(load_registry(request.registry), "toolcall")
    assert report["decision"]["promote"] == (promoted is not None) == (report["status"] == "promoted")
    assert ("refused: " + report["decision"]["reason"] in line) != report["decision"]["promote"]
    # No held-out request in the round's train file, nor in the traffic rows kept for later rounds.
    heldout = {row.prompt for row in read_heldout(request.data_dir / "flywheel" / "toolcall" / "test.jsonl")}
    trained = {row["prompt"] for row in load_rows(folder / "data" / "toolcall" / "train.jsonl")}
    kept = {row["prompt"] for row in load_rows(request.data_dir / "flywheel" / "toolcall" / "traffic_train.jsonl")}
    assert heldout and not heldout & trained and not heldout & kept and len(kept) == 16 - len(heldout)
    assert len(trained) == 20 + len(kept)  # the main job's 20 rows, then the traffic's
    manifest = json.loads((folder / "adapter_toolcall" / MANIFEST).read_text())
    assert manifest["track"] == "toolcall"
    assert manifest["datasets"]["train"]["path"].endswith("round-1/data/toolcall/train.jsonl")
    history = [json.loads(x) for x in (request.flywheel_dir / "toolcall" / "rounds.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1] and (request.flywheel_dir / "toolcall" / "rounds.png").is_file()
    assert (folder / "report.md").read_text().startswith(f"# Flywheel round 1 (toolcall): {report['status']}")

    # The command: the watermark moved, so the same records are not taken again; nothing is left behind.
    args = ["flywheel", "--track", "toolcall", "--records", str(request.records), "--registry", str(request.registry),
            "--data-dir", str(request.data_dir), "--flywheel-dir", str(request.flywheel_dir)]
    assert main(args) == 0
    assert "flywheel toolcall round 2: nothing to do: 0 new toolcall rows" in capsys.readouterr().out
    assert not (request.flywheel_dir / "toolcall" / "round-2").exists()
    assert main([*args[:-2], "--flywheel-dir", str(request.flywheel_dir), "--data-dir", str(folder)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"{folder / 'toolcall' / 'train.jsonl'}: no such dataset file: the flywheel trains on the main job's rows plus "
        "traffic (run `slm-swap prepare`, or set --data-dir)")


def test_sabotaged_hosted_answers_give_no_rows_and_never_promote(world):
    request = world
    request.records.write_text("")
    append(request.records, *traffic(sabotaged=True))
    state = flywheel.run_round(Settings(), request)
    assert state.status == "nothing to do" and state.counts["new_rows"] == 0
    assert state.counts["sources"]["fallback"]["rejected"] == {"invalid_hosted_answer": len(CITIES)}
    assert not request.registry.exists() and not watermark_path(request.records, "toolcall").exists()


STEPS = ["collect", "make_rows", "finetune", "evaluate", "decide", "calibrate_candidate", "promote"]


def test_a_round_killed_at_any_step_changes_nothing_and_the_next_runs_cleanly(world, tiny_adapter_dir, monkeypatch):
    request = world
    monkeypatch.setattr(flywheel, "finetune", fake_finetune(tiny_adapter_dir))
    monkeypatch.setattr(flywheel, "decide", forced_promotion(flywheel.decide))
    monkeypatch.setattr(flywheel, "evaluate", evaluate_once(flywheel.evaluate))
    shared = request.data_dir / "flywheel" / "toolcall"
    for step in STEPS:
        real = getattr(flywheel, step)

        def killed(*args, step=step, **kwargs):
            raise KeyboardInterrupt(f"killed at {step}")

        monkeypatch.setattr(flywheel, step, killed)
        with pytest.raises(KeyboardInterrupt, match=step):
            flywheel.run_round(Settings(), request)
        monkeypatch.setattr(flywheel, step, real)
        assert registry_bytes(request) is None, step
        assert not watermark_path(request.records, "toolcall").exists(), step
        assert not shared.exists() and not request.policy.exists(), step

    state = flywheel.run_round(Settings(), request)  # the next round: clean, and it promotes
    assert state.number == len(STEPS) + 1 and state.status == "promoted"
    entry = promoted_adapter(load_registry(request.registry), "toolcall")
    assert entry.version == 1 and entry.adapter == state.adapter.resolve()
    assert json.loads(request.policy.read_text())["model"]["adapter"] == str(state.adapter)
    assert entry.gate().adapter == str(state.adapter)  # the gate switches with the adapter, in the same write
    assert entry.gate().threshold == json.loads(request.policy.read_text())["threshold"]
    assert watermark_path(request.records, "toolcall").exists() and (shared / "test.jsonl").is_file()
    report = json.loads((state.folder / "report.json").read_text())
    assert report["promoted"] == {"version": 1, "adapter": str(entry.adapter)} and report["calibration"]["installed"]



def test_a_round_killed_after_its_registry_write_keeps_the_promotion_and_the_next_round_starts_cleanly(
        world, tiny_adapter_dir, monkeypatch):
    """The registry write is the round's commit point: a kill after it (installing the policy copy, or in
    `finish`) keeps the promotion, adapter and gate together, and leaves rows and watermark unpublished.
    The next round reads the same traffic, draws the same held-out rows (so nothing the killed round
    trained on is ever held out), and measures against what the killed round promoted."""
    request = world
    monkeypatch.setattr(flywheel, "finetune", fake_finetune(tiny_adapter_dir))
    monkeypatch.setattr(flywheel, "decide", forced_promotion(flywheel.decide))
    monkeypatch.setattr(flywheel, "evaluate", evaluate_once(flywheel.evaluate))
    shared = request.data_dir / "flywheel" / "toolcall"
    real_record, real_finish = flywheel.record_promotion, flywheel.finish

    def record_then_killed(*args, **kwargs):
        real_record(*args, **kwargs)
        raise KeyboardInterrupt("killed after the registry write")

    def finish_killed(*args, **kwargs):
        raise KeyboardInterrupt("killed in finish")

    rounds = []
    for where, patch in [("record_promotion", record_then_killed), ("finish", finish_killed)]:
        monkeypatch.setattr(flywheel, where, patch)
        with pytest.raises(KeyboardInterrupt):
            flywheel.run_round(Settings(), request)
        monkeypatch.setattr(flywheel, "record_promotion", real_record)
        monkeypatch.setattr(flywheel, "finish", real_finish)
        rounds.append(sorted((request.flywheel_dir / "toolcall").glob("round-*"))[-1])
        entry = promoted_adapter(load_registry(request.registry), "toolcall")
        assert entry.version == len(rounds) and entry.adapter == (rounds[-1] / "adapter_toolcall").resolve()
        assert entry.gate().adapter == str(rounds[-1] / "adapter_toolcall")  # the gate came with it
        assert not watermark_path(request.records, "toolcall").exists() and not shared.exists()
        # Killed before the policy copy: the registry holds the gate anyway; killed in finish: the copy is made.
        assert request.policy.exists() == (where == "finish")

    state = flywheel.run_round(Settings(), request)
    assert state.number == 3 and state.status == "promoted" and state.incumbent.version == 2
    assert state.counts["records"] == len(CITIES)  # the same traffic, read again
    heldout = {row.prompt for row in state.heldout}
    assert heldout == {row["prompt"] for row in load_rows(rounds[0] / "data" / "toolcall" / "test.jsonl")}
    for folder in [*rounds, state.folder]:  # no round ever trained on a held-out request
        assert not heldout & {row["prompt"] for row in load_rows(folder / "data" / "toolcall" / "train.jsonl")}
    assert promoted_adapter(load_registry(request.registry), "toolcall").version == 3
    assert watermark_path(request.records, "toolcall").exists() and request.policy.exists()
