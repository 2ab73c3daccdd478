"""What eval, compare and train send to Langfuse, decoded by a real receiver on 127.0.0.1.

The commands run as users run them (`slm-swap eval|compare`, `slm_swap.train`), with LANGFUSE_*
pointing at the receiver and AZURE_* at an OpenAI-compatible stub. Each receiver has its own public
key: the SDK keeps one client per public key and process.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from conftest import error_lines
from langfuse_receiver import DATASET_ITEMS_PATH, DATASETS_PATH, LangfuseReceiver
from openai_stub import OpenAIStub
from slm_swap.app.cli import main
from slm_swap.core.prompts import build_messages
from slm_swap.data.examples import load_rows
from slm_swap.train.entry import main as train_main

pytestmark = pytest.mark.usefixtures("loopback_only")
SECRET_KEY = "sk-lf-commands-SECRET-93b1"
AZURE_KEY = "azure-commands-SECRET-77d2e4"


@pytest.fixture
def env(monkeypatch, xlam_data_dir):
    def configure(receiver: LangfuseReceiver | None, stub: OpenAIStub | None = None, public_key: str | None = None):
        for key in ("LANGFUSE_DISABLED", "HOSTED_BASE_URL", "AZURE_DEPLOYMENT", "PREFECT__FLOW_RUN_ID"):
            monkeypatch.delenv(key, raising=False)
        if receiver:
            monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", public_key or receiver.public_key)
            monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
            monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        if stub:
            monkeypatch.setenv("AZURE_ENDPOINT", f"{stub.url}/openai/deployments/gpt")
            monkeypatch.setenv("AZURE_API_KEY", AZURE_KEY)
    return configure


def gold(xlam_data_dir, track="toolcall"):
    rows = load_rows(xlam_data_dir / track / "test.jsonl")
    answers = {row["prompt"]: row["completion"] if i % 2 else "nope" for i, row in enumerate(rows)}
    return lambda messages: answers[messages[-1]["content"]]


def attributes(span):
    return span["attributes"]


def decoded(span, name):
    return json.loads(span["attributes"][name])


def eval_cmd(data_dir, out, *extra, kind="azure"):
    return ["eval", "--track", "toolcall", "--model-kind", kind, "--data-dir", str(data_dir), "--out", str(out),
            "--limit", "4", *extra]


def test_eval_and_compare_traces(env, xlam_data_dir, tmp_path, capsys, monkeypatch):
    with LangfuseReceiver() as receiver, OpenAIStub(gold(xlam_data_dir)) as stub:
        env(receiver, stub)
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "flow-run-7")
        assert main(eval_cmd(xlam_data_dir, tmp_path / "a.json")) == 0
        assert main(eval_cmd(xlam_data_dir, tmp_path / "b.json")) == 0
        assert main(["compare", "--track", "toolcall", "--azure", str(tmp_path / "a.json"), "--slm", str(tmp_path / "b.json")]) == 0
        commands = lambda r: {s["trace_id"] for s in r.spans if s["name"].startswith(("eval", "compare"))}  # noqa: E731
        assert receiver.wait_until(lambda r: len(commands(r)) == 3)
    metrics = json.loads((tmp_path / "a.json").read_text())
    trace_id, err = metrics["langfuse_trace_id"], capsys.readouterr().err
    assert trace_id and f"langfuse trace (eval): {trace_id} {receiver.url}/trace/{trace_id}" in err

    spans = [s for s in receiver.spans if s["trace_id"] == trace_id]
    root = next(s for s in spans if s["parent_span_id"] is None)
    assert attributes(root)["langfuse.trace.name"] == "eval toolcall azure"
    trace_input = decoded(root, "langfuse.observation.input")
    assert trace_input["track"] == "toolcall" and trace_input["model_kind"] == "azure"
    assert trace_input["dataset_path"] == str(xlam_data_dir / "toolcall" / "test.jsonl")
    assert trace_input["dataset_sha256"] == metrics["dataset"]["sha256"]
    assert trace_input["metrics_path"] == str(tmp_path / "a.json")
    assert decoded(root, "langfuse.observation.metadata.prefect_flow_run_id") == "flow-run-7"
    output = decoded(root, "langfuse.observation.output")
    assert output["valid_call_rate"] == metrics["valid_call_rate"] == 0.5
    # The examples are the eval's dataset run (see test_hosted_and_slm_evals_are_runs_of_one_dataset).
    assert [s for s in spans if s["parent_span_id"] == root["span_id"]] == []
    experiment = metrics["langfuse_experiment"]
    assert experiment["dataset"] == "slm-swap/xlam/toolcall/test"
    assert f"langfuse experiment (eval): slm-swap/xlam/toolcall/test / {experiment['run']} {experiment['url']}" in err
    scores = {s["name"]: s["value"] for s in receiver.scores if s.get("traceId") == trace_id}
    assert scores == {"valid_call_rate": 0.5, "name_match_rate": 0.5, "args_exact_rate": 0.5}

    compare_id = (commands(receiver) - {trace_id, json.loads((tmp_path / "b.json").read_text())["langfuse_trace_id"]}).pop()
    decision = next(s for s in receiver.spans if s["trace_id"] == compare_id and s["name"] == "decision")
    assert attributes(decision)["langfuse.observation.type"] == "event"
    assert decoded(decision, "langfuse.observation.metadata.FINE_TUNE") == 0
    assert decoded(decision, "langfuse.observation.metadata.delta") == 0.01
    assert decoded(decision, "langfuse.observation.metadata.gaps") == {"valid_call_rate": 0.0, "name_match_rate": 0.0, "args_exact_rate": 0.0}
    assert {s["name"]: s["value"] for s in receiver.scores if s.get("traceId") == compare_id} == {"fine_tune": 0.0}

    for request in receiver.requests:  # no secret on the wire (the auth header carries the Langfuse keys)
        body = request["body"].decode("utf-8", "replace")
        assert AZURE_KEY not in body and SECRET_KEY not in body
        assert all(AZURE_KEY not in v and SECRET_KEY not in v for k, v in request["headers"].items() if k != "authorization")


def test_train_trace_and_manifest_id(env, xlam_data_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "adapter_toolcall"
    with LangfuseReceiver() as receiver:
        env(receiver)
        monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
        assert train_main(["--track", "toolcall", "--train", str(xlam_data_dir / "toolcall" / "train.jsonl"),
                           "--val", str(xlam_data_dir / "toolcall" / "val.jsonl"), "--out", str(out), "--max-steps", "2"]) == 0
        assert receiver.wait_until(lambda r: len(r.trace_ids()) == 1)
    manifest = json.loads((out / "slm_swap_adapter.json").read_text())
    assert receiver.trace_ids() == {manifest["langfuse_trace_id"]}
    root = next(s for s in receiver.spans if s["parent_span_id"] is None)
    trace_input = decoded(root, "langfuse.observation.input")
    assert trace_input["adapter_path"] == str(out) and trace_input["train_path"].endswith("toolcall/train.jsonl")
    assert trace_input["hyperparameters"]["lora_r"] == 64
    output = decoded(root, "langfuse.observation.output")
    assert output["backend"] == "cpu" and output["strategy"] == "no" and output["world_size"] == 1
    steps = [s for s in receiver.spans if s["name"] == "train_step"]
    assert sorted(decoded(s, "langfuse.observation.metadata.step") for s in steps) == [1, 2]
    scores = {s["name"] for s in receiver.scores}
    assert scores == {"train_loss", "val_loss_before", "val_loss"}


@pytest.mark.parametrize("argv", [
    ["compare", "--track", "toolcall", "--azure", "a.json", "--slm", "b.json"],
    ["train", "--track", "toolcall"],
])
def test_missing_langfuse_settings_stop_commands(env, argv, monkeypatch, capsys):
    env(None)
    for key in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk")
    assert main(argv) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "LANGFUSE_SECRET_KEY, LANGFUSE_HOST" in err[0] and "LANGFUSE_DISABLED=1" in err[0]


def test_missing_settings_stop_eval_before_any_request(env, xlam_data_dir, tmp_path, monkeypatch, capsys):
    with OpenAIStub(gold(xlam_data_dir)) as stub:
        env(None, stub)
        for key in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST"):
            monkeypatch.delenv(key, raising=False)
        assert main(eval_cmd(xlam_data_dir, tmp_path / "a.json")) == 2
    assert stub.requests == [] and not (tmp_path / "a.json").exists()
    assert "LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST" in capsys.readouterr().err


def test_langfuse_down_eval_still_writes_its_results(env, xlam_data_dir, tmp_path, capsys):
    with LangfuseReceiver(fail_with=503) as receiver, OpenAIStub(gold(xlam_data_dir)) as stub:
        env(receiver, stub)
        started = time.monotonic()
        assert main(eval_cmd(xlam_data_dir, tmp_path / "a.json")) == 0
        elapsed = time.monotonic() - started
    assert json.loads((tmp_path / "a.json").read_text())["n"] == 4
    assert "traces were not delivered" in capsys.readouterr().err
    assert elapsed < 30  # bounded flush (10 s) plus bounded close


def test_hosted_and_slm_evals_are_runs_of_one_dataset(env, xlam_data_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The split is one Langfuse dataset; the hosted and the SLM eval of it are two dataset runs:
    each example a trace linked to its item, with a generation (model, tokens, latency) and its
    metrics as scores; the rates as run-level scores. Evaluating again adds no items."""
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    rows = load_rows(xlam_data_dir / "toolcall" / "test.jsonl")
    with LangfuseReceiver() as receiver, OpenAIStub(gold(xlam_data_dir)) as stub:
        env(receiver, stub)
        assert main(eval_cmd(xlam_data_dir, tmp_path / "hosted.json")) == 0
        assert main(eval_cmd(xlam_data_dir, tmp_path / "slm.json", kind="slm")) == 0
        items_posted = len(receiver.posts(DATASET_ITEMS_PATH))
        # Again, as another process would (a client of its own): the dataset is found complete.
        env(receiver, stub, public_key=f"pk-lf-{uuid.uuid4().hex[:12]}")
        assert main(eval_cmd(xlam_data_dir, tmp_path / "again.json")) == 0
    err = capsys.readouterr().err

    assert items_posted == len(rows) == 12 and len(receiver.posts(DATASET_ITEMS_PATH)) == 12
    assert len(receiver.posts(DATASETS_PATH)) == 1
    (dataset,) = receiver.datasets.values()
    hosted, slm, again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("hosted", "slm", "again"))
    assert dataset["name"] == "slm-swap/xlam/toolcall/test"
    assert dataset["metadata"]["sha256"] == hosted["dataset"]["sha256"] and dataset["metadata"]["rows"] == 12
    items = receiver.dataset_items(dataset["name"])
    assert [(i["input"], i["expectedOutput"]) for i in items] == [(build_messages(r["prompt"]), r["completion"]) for r in rows]

    for document in (hosted, slm, again):
        experiment = document["langfuse_experiment"]
        assert experiment["dataset"] == dataset["name"]
        assert f"langfuse experiment (eval): {dataset['name']} / {experiment['run']} {experiment['url']}" in err
        model = document["model"]
        assert experiment["run"].startswith(f"{model['kind']} {model['identity']} - ")  # the SDK adds the time
        roots = {s["attributes"]["langfuse.experiment.item.id"]: s for s in receiver.spans
                 if s["name"] == "experiment-item-run" and s["attributes"].get("langfuse.experiment.id") == experiment["id"]}
        assert set(roots) == {items[n]["id"] for n in range(4)}
        for n in range(4):
            root = roots[items[n]["id"]]
            assert root["attributes"]["langfuse.experiment.dataset.id"] == dataset["id"]
            in_trace = [s for s in receiver.spans if s["trace_id"] == root["trace_id"]]
            (generation,) = [s for s in in_trace if s["name"] == "generation"]
            usage = json.loads(generation["attributes"]["langfuse.observation.usage_details"])
            if model["kind"] == "azure":  # the stub's answer: its model and usage
                assert generation["attributes"]["langfuse.observation.model.name"] == "gpt"
                assert usage == {"input": 1, "output": 1}
            else:  # the local model's own token counts
                assert generation["attributes"]["langfuse.observation.model.name"] == tiny_model_dir.name
                assert usage["input"] > 100 and 0 < usage["output"] <= 256
            assert generation["end_ns"] > generation["start_ns"]
            scores = {s["name"]: s["value"] for s in receiver.scores if s.get("traceId") == root["trace_id"]}
            assert set(scores) == {"valid_call", "name_match", "args_exact"}
        run_scores = {s["name"]: s["value"] for s in receiver.scores if s.get("datasetRunId") == experiment["id"]}
        assert run_scores == {name: document[name] for name in ("valid_call_rate", "name_match_rate", "args_exact_rate")}
    # The stub answers every odd row: the hosted run's per-example scores say which.
    hosted_roots = {s["attributes"]["langfuse.experiment.item.id"]: s["trace_id"] for s in receiver.spans
                    if s["name"] == "experiment-item-run" and s["attributes"].get("langfuse.experiment.id") == hosted["langfuse_experiment"]["id"]}
    assert [next(s["value"] for s in receiver.scores if s.get("traceId") == hosted_roots[items[n]["id"]]
                 and s["name"] == "args_exact") for n in range(4)] == [0.0, 1.0, 0.0, 1.0]
    assert len({d["langfuse_experiment"]["id"] for d in (hosted, slm, again)}) == 3

    for request in receiver.requests:  # no secret, and no API key, in anything received
        body = request["body"].decode("utf-8", "replace")
        assert AZURE_KEY not in body and SECRET_KEY not in body
        assert all(AZURE_KEY not in v and SECRET_KEY not in v for k, v in request["headers"].items() if k != "authorization")


def test_a_hanging_langfuse_costs_an_eval_at_most_the_bound(env, xlam_data_dir, tmp_path, capsys):
    """Langfuse accepts connections and never answers: the eval writes its results, tracing costs
    at most the 10 s flush bound, and one line says what was not delivered."""
    elapsed = {}
    for mode in ("healthy", "hanging"):
        with LangfuseReceiver(hang=mode == "hanging") as receiver, OpenAIStub(gold(xlam_data_dir)) as stub:
            env(receiver, stub)
            started = time.monotonic()
            assert main(eval_cmd(xlam_data_dir, tmp_path / f"{mode}.json")) == 0
            elapsed[mode] = time.monotonic() - started
        assert json.loads((tmp_path / f"{mode}.json").read_text())["n"] == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if "not delivered" in line]
    assert len(lines) == 1 and "did not finish within 10s" in lines[0]
    assert elapsed["hanging"] - elapsed["healthy"] < 11  # the flush bound, and the 1 s exit bound as slack


HOSTILE_ANSWERS = ['<tool_call name="f">{"a": "\\ud800"}</tool_call>', "\ud800 lone", "[" * 100_000, "1" * 5_000,
                   '{"n": ' + "9" * 5_000 + "}"]


def test_hostile_answers_are_scored_and_traced(env, xlam_data_dir, tmp_path, capsys):
    """Answers a reader cannot take (a lone surrogate, deep nesting, a 5,000-digit number) are scored
    invalid, written, and delivered to Langfuse like any other: nothing is left undelivered."""
    answers = iter(HOSTILE_ANSWERS * 2)
    with LangfuseReceiver() as receiver, OpenAIStub(lambda messages: next(answers)) as stub:
        env(receiver, stub)
        assert main(eval_cmd(xlam_data_dir, tmp_path / "a.json")) == 0
        metrics = json.loads((tmp_path / "a.json").read_text())
        assert receiver.wait_until(lambda r: any(s["trace_id"] == metrics["langfuse_trace_id"] for s in r.spans))
    err = capsys.readouterr().err
    assert "not delivered" not in err and "Traceback" not in err
    assert metrics["n"] == 4 and metrics["errors"] == 0 and metrics["valid_call_rate"] == 0.0
    records = [json.loads(line) for line in (tmp_path / "a.records.jsonl").read_text().splitlines()]
    # The 4 rows were asked concurrently: which row got which answer varies, the 4 answers do not.
    recorded = [answer.replace("\ud800", "\ufffd") for answer in HOSTILE_ANSWERS[:4]]  # the lone surrogate as U+FFFD
    assert sorted(r["output"] for r in records) == sorted(recorded)
