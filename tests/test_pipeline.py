"""The Prefect pipeline: its pure parts (config, branching rule, reuse/resume plan, tags, report),
its tasks through `.fn()`, and a few real flow runs under one local Prefect API (module-scoped
`prefect_test_harness`, SQLite in a temp dir) on the tiny model, with an OpenAI-compatible stub as
the hosted side and a Langfuse receiver for real trace ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path

# Prefect keeps its home (profiles, local result storage) here, never in the developer's ~/.prefect.
if "PREFECT_HOME" not in os.environ:
    import atexit
    import shutil

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="slm-swap-prefect-home-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

import pytest  # noqa: E402

from langfuse_receiver import LangfuseReceiver  # noqa: E402
from openai_stub import OpenAIStub  # noqa: E402
from prefect_api import prefect_api, run_graph  # noqa: E402,F401  (a fixture and a helper)
from slm_swap.core.compare import Decision, MetricRow  # noqa: E402
from slm_swap.data.examples import load_rows  # noqa: E402
from slm_swap.infra.errors import SlmSwapError  # noqa: E402
from slm_swap.infra.fileio import sha256_file, write_json  # noqa: E402
from slm_swap.app.finetune_step import TrainingPlan, reusable_adapter, training_command, training_env  # noqa: E402
from slm_swap.app.flow_configs import DataSource, PipelineConfig  # noqa: E402
from slm_swap.train.options import TrainOptions  # noqa: E402
from slm_swap.app.pipeline import merge_tags, needs_training, plan_eval, retryable, stamp_path_for, trace_tags  # noqa: E402
from slm_swap.app.report import TrackReport, decisions_text, markdown, story, table_rows, write_report  # noqa: E402
from slm_swap.train.launch import CPU_CONFIG  # noqa: E402

SECRET_KEY = "sk-lf-pipeline-SECRET-5c1e"


def decision(track: str = "toolcall", gap: int = 2, trace_id: str | None = None) -> Decision:
    """A decision on n=4 where valid_call trails by `gap` examples."""
    return Decision(track=track, delta=Fraction("0.01"), n=4, langfuse_trace_id=trace_id,
                    rows=[MetricRow("valid_call_rate", True, 4, 4 - gap, 4, None),
                          MetricRow("name_match_rate", True, 4, 4, 4, None),
                          MetricRow("args_exact_rate", True, 4, 4, 4, None)])


# -- pure parts ----------------------------------------------------------------------------------


def test_needs_training_follows_the_decision_only_in_auto():
    trails, keeps_up = decision(gap=2), decision(gap=0)
    assert trails.fine_tune and not keeps_up.fine_tune
    assert needs_training(trails, "auto") and not needs_training(keeps_up, "auto")
    assert needs_training(keeps_up, "always") and needs_training(trails, "always")
    assert not needs_training(trails, "never") and not needs_training(keeps_up, "never")
    with pytest.raises(SlmSwapError, match="unknown finetune mode 'sometimes'"):
        needs_training(trails, "sometimes")


def test_config_is_one_typed_model_that_survives_json():
    config = PipelineConfig(tracks=["toolcall", "toolcall"], limit=3, finetune="never",
                            data=DataSource(source="xlam", dataset_path=Path("x.json")))
    assert config.tracks == ["toolcall"]
    assert PipelineConfig.model_validate(json.loads(config.model_dump_json())) == config  # what Prefect stores
    defaults = PipelineConfig()
    assert defaults.tracks == ["structured", "toolcall"] and defaults.finetune == "auto" and defaults.delta == 0.01
    assert defaults.finetune_deployment == "slm-swap-finetune/gpu"
    for bad in ({"finetune": "maybe"}, {"tracks": []}, {"delta": -1}, {"limit": 0}, {"typo": 1},
                {"data": {"source": "xlam"}}, {"data": {"source": "bfcl", "dataset_path": "x.json"}}):
        with pytest.raises(ValueError):
            PipelineConfig.model_validate(bad)


def test_trace_ids_become_tags_and_none_gives_none():
    assert trace_tags(["abc", None, "def", "abc"]) == ["langfuse:abc", "langfuse:def"]
    assert trace_tags([None, None]) == []
    assert merge_tags(["nightly", "langfuse:abc"], ["langfuse:abc", "langfuse:x"]) == ["nightly", "langfuse:abc", "langfuse:x"]


def test_only_transient_failures_are_retried():
    assert retryable(SlmSwapError("3 requests failed (budget 1, --max-errors); ... rerun with --resume"))
    assert not retryable(SlmSwapError("hosted model not configured: set AZURE_ENDPOINT"))
    assert retryable(ConnectionError("reset")) and not retryable(None)


def test_training_command_and_env():
    plan = TrainingPlan(track="toolcall", train_path=Path("d/toolcall/train.jsonl"), val_path=Path("d/toolcall/val.jsonl"),
                        out=Path("ft/adapter_toolcall"), accelerate_config=CPU_CONFIG,
                        options=TrainOptions(overwrite=True, max_steps=3))
    command = training_command(plan)
    assert command[1:5] == ["launch", "--quiet", "--config_file", str(CPU_CONFIG)] and command[5:7] == ["-m", "slm_swap.train"]
    assert command[command.index("--out") + 1] == "ft/adapter_toolcall"
    assert "--overwrite" in command and command[command.index("--max-steps") + 1] == "3"
    assert training_env("run-1") == {"PREFECT__FLOW_RUN_ID": "run-1"} and training_env(None) == {}


def test_an_adapter_is_reused_only_when_made_from_the_same_inputs_recently(tmp_path, monkeypatch):
    from slm_swap.infra.config import Settings
    from slm_swap.train.hyperparams import hyperparams_for
    from slm_swap.train.run import MANIFEST

    data = tmp_path / "toolcall"
    data.mkdir()
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (data / "val.jsonl").write_text('{"prompt": "c", "completion": "d"}\n')
    out = tmp_path / "adapter_toolcall"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("SLM_MODEL_PATH", str(tmp_path / "model"))
    settings = Settings()
    plan = TrainingPlan(track="toolcall", train_path=data / "train.jsonl", val_path=data / "val.jsonl", out=out,
                        options=TrainOptions(overwrite=True, max_steps=2))
    manifest = {"track": "toolcall", "base_model": str(tmp_path / "model"), "max_steps": 2,
                "hyperparameters": hyperparams_for("toolcall").as_dict(), "finished_at": "2026-01-01T10:00:00+00:00",
                "datasets": {name: {"sha256": sha256_file(data / f"{name}.jsonl")} for name in ("train", "val")}}
    write_json(out / MANIFEST, manifest)
    from datetime import datetime, timezone

    soon = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    assert reusable_adapter(settings, plan, now=soon) == manifest
    assert reusable_adapter(settings, plan, now=datetime(2026, 1, 2, 12, tzinfo=timezone.utc)) is None  # too old
    assert reusable_adapter(settings, TrainingPlan(**{**plan.__dict__, "options": TrainOptions(overwrite=True, max_steps=5)}), now=soon) is None
    assert reusable_adapter(settings, TrainingPlan(**{**plan.__dict__, "reuse_max_age_hours": 0}), now=soon) is None
    # Trained with other settings (a batch size other than the track's): not what training would make now.
    write_json(out / MANIFEST, {**manifest, "hyperparameters": hyperparams_for("toolcall", 1).as_dict()})
    assert reusable_adapter(settings, plan, now=soon) is None
    write_json(out / MANIFEST, manifest)
    (data / "train.jsonl").write_text('{"prompt": "a", "completion": "changed"}\n')
    assert reusable_adapter(settings, plan, now=soon) is None


def test_train_task_reuses_a_fresh_identical_adapter_without_launching(tmp_path, monkeypatch):
    from slm_swap.train.hyperparams import hyperparams_for
    from slm_swap.train.run import MANIFEST
    from tasks.train import train_adapter

    data = tmp_path / "toolcall"
    data.mkdir()
    for name in ("train", "val"):
        (data / f"{name}.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    out = tmp_path / "adapter_toolcall"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("SLM_MODEL_PATH", str(tmp_path / "model"))
    from datetime import datetime, timezone

    manifest = {"track": "toolcall", "base_model": str(tmp_path / "model"), "max_steps": 2, "langfuse_trace_id": None,
                "hyperparameters": hyperparams_for("toolcall").as_dict(),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "datasets": {name: {"sha256": sha256_file(data / f"{name}.jsonl")} for name in ("train", "val")}}
    write_json(out / MANIFEST, manifest)
    plan = TrainingPlan(track="toolcall", train_path=data / "train.jsonl", val_path=data / "val.jsonl", out=out,
                        options=TrainOptions(overwrite=True, max_steps=2))
    monkeypatch.setattr("tasks.train.launch_training", None)  # launching would fail loudly
    assert train_adapter.fn(plan, flow_run_id="run-1") == manifest


def _metrics(track: str, rates: dict[str, float], trace_id: str | None) -> dict:
    return {"track": track, "split": "test", "n": 4, "errors": 0, **rates, "langfuse_trace_id": trace_id}


def test_report_rows_markdown_and_chart(tmp_path):
    rates = lambda v: {"valid_call_rate": v, "name_match_rate": v, "args_exact_rate": v}  # noqa: E731
    trained = TrackReport("toolcall", _metrics("toolcall", rates(1.0), "t-h"), _metrics("toolcall", rates(0.5), "t-s"),
                          decision(gap=2, trace_id="t-c"), True, {"langfuse_trace_id": "t-train", "steps": 2, "backend": "cpu"},
                          _metrics("toolcall", rates(1.0), "t-ft"), decision(gap=0, trace_id="t-c2"))
    skipped = TrackReport("structured", _metrics("structured", {"json_valid_rate": 1.0, "exact_match_rate": 0.75}, None),
                          _metrics("structured", {"json_valid_rate": 1.0, "exact_match_rate": 0.75}, None),
                          Decision("structured", Fraction("0.01"), [MetricRow("json_valid_rate", True, 4, 4, 4, None),
                                                                    MetricRow("exact_match_rate", True, 3, 3, 4, None)], 4))
    rows = table_rows([trained, skipped])
    assert len(rows) == 5
    first = rows[0]
    assert first == {"track": "toolcall", "metric": "valid_call_rate", "core": True, "hosted": 1.0, "slm": 0.5, "slm_ft": 1.0,
                     "gap": 0.5, "gap_ft": 0.0, "fine_tune": 1, "trained": True, "fine_tune_after": 0}
    assert rows[-1]["slm_ft"] is None and rows[-1]["fine_tune"] == 0 and rows[-1]["fine_tune_after"] is None
    text = markdown([trained, skipped], flow_run_id="run-9", trace_url=lambda i: f"https://lf/trace/{i}")
    assert "Prefect flow run: `run-9`" in text
    assert "## toolcall: FINE_TUNE=1: the SLM trailed; fine-tuned, it keeps up (FINE_TUNE=0)" in text
    assert "## structured: FINE_TUNE=0: the SLM keeps up" in text
    assert "- valid_call_rate: the hosted model passes 4/4, the SLM 2/4, the fine-tuned SLM 4/4: fine-tuning won back " \
           "all 2 rows it was behind" in text
    assert "no fine-tune is needed (FINE_TUNE=0)" in text and "STAND-IN" not in text
    assert "| valid_call_rate | 1.000 | 0.500 | +0.500 | 1.000 | +0.000 |" in text
    for trace_id in ("t-h", "t-s", "t-c", "t-train", "t-ft", "t-c2"):
        assert f"[{trace_id}](https://lf/trace/{trace_id})" in text
    assert "FINE_TUNE=1" in decisions_text([trained]) and "== toolcall: fine-tuned" in decisions_text([trained])

    files, written = write_report([trained, skipped], tmp_path / "05_eval", flow_run_id="run-9")
    assert files.chart == tmp_path / "05_eval" / "report.png"
    assert files.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files.markdown.read_text() == written
    summary = json.loads(files.json.read_text())
    assert summary["flow_run_id"] == "run-9" and summary["tracks"]["toolcall"]["trained"] is True
    assert summary["tracks"]["toolcall"]["langfuse_trace_ids"]["train"] == "t-train"


def _story_report(hosted: int, slm: int, tuned: int | None, identity: str) -> TrackReport:
    """A toolcall track on n=24 where only args_exact differs: hosted, SLM and fine-tuned passes."""
    def rows(candidate: int) -> list[MetricRow]:
        return [MetricRow("valid_call_rate", True, 24, 24, 24, None), MetricRow("name_match_rate", True, 24, 24, 24, None),
                MetricRow("args_exact_rate", True, hosted, candidate, 24, None)]
    hosted_doc = {**_metrics("toolcall", {}, None), "model": {"kind": "azure", "identity": identity}}
    first = Decision("toolcall", Fraction("0.01"), rows(slm), 24)
    if tuned is None:
        return TrackReport("toolcall", hosted_doc, {}, first)
    return TrackReport("toolcall", hosted_doc, {}, first, True, {}, {}, Decision("toolcall", Fraction("0.01"), rows(tuned), 24))


@pytest.mark.parametrize(("hosted", "slm", "tuned", "expected"), [
    (20, 0, 17, "the SLM 0/24, the fine-tuned SLM 17/24: fine-tuning won back 17 of the 20 rows it was behind"),
    (20, 5, 3, "the SLM 5/24, the fine-tuned SLM 3/24: fine-tuning won back none of the 15 rows it was behind and lost 2"),
    (20, 5, 22, "the SLM 5/24, the fine-tuned SLM 22/24: fine-tuning won back all 15 rows it was behind and 2 more"),
    (20, 5, None, "the SLM 5/24"),
])
def test_report_says_in_words_how_much_of_the_gap_fine_tuning_closed(hosted, slm, tuned, expected):
    report = _story_report(hosted, slm, tuned, "azure:gpt-4o@example.openai.azure.com")
    headline, *lines = story(report)
    assert headline.startswith("toolcall (24 test rows): the SLM trails the hosted model by more than delta=0.01 on "
                               "args_exact_rate, so the gate said fine-tune (FINE_TUNE=1).")
    assert lines[2] == f"args_exact_rate: the hosted model passes {hosted}/24, {expected}"
    assert lines[0] == "valid_call_rate: the hosted model passes 24/24, the SLM 24/24" + (
        "" if tuned is None else ", the fine-tuned SLM 24/24: there was no gap to close (+0 rows)")
    if tuned is None:
        assert headline.endswith("This run did not fine-tune (--finetune never).")
    else:
        assert headline.endswith("(FINE_TUNE=1)." if tuned < hosted else "After fine-tuning it keeps up (FINE_TUNE=0).")


def test_report_names_the_scripted_stand_in_as_not_a_model():
    report = _story_report(20, 0, 17, "openai-compatible:scripted-stand-in-not-a-model@127.0.0.1:8765")
    text, printed = markdown([report]), decisions_text([report])
    note = "The hosted side here is a SCRIPTED STAND-IN, NOT A MODEL (openai-compatible:scripted-stand-in-not-a-model@"
    assert note in text and note in printed
    assert text.index(note) < text.index("## toolcall")  # before any number
    assert "the hosted stand-in passes 20/24, the SLM 0/24, the fine-tuned SLM 17/24" in printed
    assert "Hosted side: `openai-compatible:scripted-stand-in-not-a-model@127.0.0.1:8765`." in text


def test_cli_refuses_a_bad_config_before_any_flow_runs(capsys, tmp_path):
    from slm_swap.app.cli import main

    assert main(["pipeline", "--source", "xlam", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert main(["pipeline", "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "slm-swap: error: pipeline: --limit: Input should be greater than or equal to 1"
    assert err[-1] == "slm-swap: error: pipeline: data: source 'xlam' needs dataset_path (the xLAM-60k file)"


# -- tasks through .fn(): reuse and resume of the hosted eval, no Prefect run ----------------------


def responder(data_dir: Path, gold_tracks: tuple[str, ...]):
    """The gold completion for tracks in `gold_tracks` (a better hosted side), else junk as bad as
    the tiny random SLM's (equal sides)."""
    answers = {}
    for track in ("structured", "toolcall"):
        for row in load_rows(data_dir / track / "test.jsonl"):
            answers[row["prompt"]] = row["completion"] if track in gold_tracks else "no idea"
    return lambda messages: answers[messages[-1]["content"]]


@pytest.fixture
def hosted_env(monkeypatch):
    def configure(stub: OpenAIStub):
        for key in ("AZURE_ENDPOINT", "AZURE_API_KEY", "AZURE_DEPLOYMENT", "HOSTED_API_KEY", "PREFECT__FLOW_RUN_ID"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("HOSTED_BASE_URL", f"{stub.url}/v1")
        monkeypatch.setenv("HOSTED_MODEL", "hosted-stub")
    return configure


def test_eval_task_reuses_finished_evals_and_resumes_cut_off_ones(xlam_data_dir, tmp_path, hosted_env):
    from tasks.evals import eval_hosted

    config = PipelineConfig(tracks=["toolcall"], data_dir=xlam_data_dir, eval_dir=tmp_path, limit=6)
    with OpenAIStub(responder(xlam_data_dir, ("toolcall",))) as stub:
        hosted_env(stub)
        first = eval_hosted.fn(config, "toolcall", flow_run_id="run-1")
        assert first.action == "ran" and len(stub.requests) == 6 and first.metrics["valid_call_rate"] == 1.0
        metrics_bytes = first.path.read_bytes()

        again = eval_hosted.fn(config, "toolcall")  # a re-run with the same inputs: nothing is asked again
        assert again.action == "reused" and len(stub.requests) == 6 and first.path.read_bytes() == metrics_bytes
        assert again.metrics == first.metrics

        # A crash mid-eval: the stamp says started, two records were written, no metrics file.
        stamp = json.loads(stamp_path_for(first.path).read_text())
        write_json(stamp_path_for(first.path), {**stamp, "finished_at": None, "metrics_sha256": None})
        records = first.path.with_name("toolcall_azure_test.records.jsonl")
        records.write_text("".join(records.read_text().splitlines(keepends=True)[:2]))
        first.path.unlink()
        resumed = eval_hosted.fn(config, "toolcall")
        assert resumed.action == "resumed" and len(stub.requests) == 6 + 4  # only the missing four
        assert {k: v for k, v in resumed.metrics.items() if k != "timings"} == {k: v for k, v in first.metrics.items() if k != "timings"}

        from tasks.decide import compare

        decision = compare.fn(config, resumed, first, flow_run_id="run-1")  # the same results on both sides
        assert decision.track == "toolcall" and not decision.fine_tune and decision.n == 6

        # Other inputs (another limit) or reuse turned off: the eval runs again.
        assert eval_hosted.fn(config.model_copy(update={"limit": 5}), "toolcall").action == "ran"
        assert eval_hosted.fn(config.model_copy(update={"limit": 5, "reuse_max_age_hours": 0}), "toolcall").action == "ran"


def test_plan_eval_refuses_tampered_or_foreign_results(tmp_path):
    out = tmp_path / "toolcall_azure_test.json"
    fingerprint = {"track": "toolcall", "dataset_sha256": "a" * 64, "model_identity": "m"}
    assert plan_eval(out, fingerprint, 12) == "run"  # nothing there
    out.write_text("{}")
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    write_json(stamp_path_for(out), {"fingerprint": fingerprint, "started_at": now.isoformat(), "finished_at": now.isoformat(),
                                     "metrics_sha256": sha256_file(out)})
    assert plan_eval(out, fingerprint, 12) == "reuse"
    assert plan_eval(out, {**fingerprint, "model_identity": "other"}, 12) == "run"
    out.write_text('{"edited": true}')  # someone else wrote this file since: not ours to reuse
    assert plan_eval(out, fingerprint, 12) == "run"


# -- real flow runs under one local Prefect API ----------------------------------------------------


def pipeline_config(data_dir: Path, tmp_path: Path, **overrides) -> PipelineConfig:
    return PipelineConfig(data_dir=data_dir, eval_dir=tmp_path / "05_eval", ft_dir=tmp_path / "04_ft", limit=3,
                          max_steps=2, accelerate_config=CPU_CONFIG, **overrides)


@pytest.mark.integration
@pytest.mark.usefixtures("loopback_only")
def test_better_hosted_side_takes_the_training_branch_by_itself(prefect_api, xlam_data_dir, tiny_model_dir, tmp_path,
                                                               hosted_env, monkeypatch):
    """Hosted better on toolcall, equal on structured: `auto` fine-tunes toolcall only, re-evaluates,
    compares again and reports; every Langfuse trace id is a tag on the flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.pipeline import run_pipeline
    from slm_swap.train.run import MANIFEST

    config = pipeline_config(xlam_data_dir, tmp_path, finetune="auto")
    with get_client(sync_client=True) as client:  # what deployments/setup_work_pools.sh creates on a server
        client.create_concurrency_limit(tag="slm-gpu", concurrency_limit=1)
    with LangfuseReceiver() as receiver, OpenAIStub(responder(xlam_data_dir, ("toolcall",))) as stub:
        hosted_env(stub)
        monkeypatch.delenv("LANGFUSE_DISABLED", raising=False)
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", receiver.public_key)  # one SDK client per key and process
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", SECRET_KEY)
        monkeypatch.setenv("LANGFUSE_HOST", receiver.url)
        monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
        flow_run_id, summary = run_pipeline(config)
        # 4 baseline evals + 2 compares + train + re-eval + final compare
        assert receiver.wait_until(lambda r: len(r.command_trace_ids()) == 9, timeout_s=15)

    eval_dir, adapter = tmp_path / "05_eval", tmp_path / "04_ft" / "adapter_toolcall"
    assert summary["flow_run_id"] == flow_run_id
    toolcall, structured = summary["tracks"]["toolcall"], summary["tracks"]["structured"]
    assert toolcall["decision"]["fine_tune"] and toolcall["trained"] and toolcall["final_decision"] is not None
    assert not structured["decision"]["fine_tune"] and not structured["trained"] and structured["final_decision"] is None
    manifest = json.loads((adapter / MANIFEST).read_text())
    assert manifest["steps"] == 2 and (adapter / "adapter_config.json").is_file()
    ft_metrics = json.loads((eval_dir / "toolcall_slm_ft_test.json").read_text())
    assert ft_metrics["model"]["adapter"] == str(adapter) and ft_metrics["n"] == 3
    assert not (eval_dir / "structured_slm_ft_test.json").exists() and not (tmp_path / "04_ft" / "adapter_structured").exists()
    assert (eval_dir / "report.png").read_bytes()[:4] == b"\x89PNG" and (eval_dir / "report.md").is_file()

    # The task graph of the parent flow run.
    graph = run_graph(flow_run_id, expect_tasks=10)
    assert graph["flow_name"] == "slm-swap-pipeline" and graph["run"].state.is_completed()
    tasks = graph["tasks"]
    expected = {"eval-hosted-structured", "eval-hosted-toolcall", "eval-slm-structured", "eval-slm-toolcall",
                "compare-structured-baseline", "compare-toolcall-baseline", "eval-slm-ft-toolcall",
                "compare-toolcall-finetuned", "report"}
    assert expected <= set(tasks), sorted(tasks)
    assert all(tasks[name].state.is_completed() for name in expected)
    (tracker,) = [name for name in tasks if name not in expected]  # the subflow's place in the parent's graph
    assert tracker.startswith("slm-swap-finetune")
    # SLM evals never overlapped (one model on the GPU), and against a server they carry the slm-gpu
    # tag (its concurrency limit of 1 holds across flow runs); the hosted evals do not.
    first, second = sorted((tasks["eval-slm-structured"], tasks["eval-slm-toolcall"]), key=lambda t: t.start_time)
    assert first.end_time <= second.start_time
    assert all("slm-gpu" in tasks[name].tags for name in ("eval-slm-structured", "eval-slm-toolcall", "eval-slm-ft-toolcall"))
    assert "slm-gpu" not in tasks["eval-hosted-toolcall"].tags

    # The fine-tune subflow, under the parent.
    (child,) = graph["children"]
    assert child.name == "finetune-toolcall" and child.state.is_completed()
    assert child.parent_task_run_id == tasks[tracker].id and tasks[tracker].flow_run_id == graph["run"].id
    with get_client(sync_client=True) as client:
        assert client.read_flow(child.flow_id).name == "slm-swap-finetune"
        child_tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[child.id])))
    assert [(t.name, t.state.type.value) for t in child_tasks] == [("train-adapter-toolcall", "COMPLETED")]
    assert "slm-gpu" in child_tasks[0].tags

    # Artifacts: the markdown report and the metrics table.
    artifacts = graph["artifacts"]
    assert artifacts["slm-swap-report"].type == "markdown" and "toolcall" in artifacts["slm-swap-report"].data
    assert artifacts["slm-swap-metrics"].type == "table"
    table = json.loads(artifacts["slm-swap-metrics"].data) if isinstance(artifacts["slm-swap-metrics"].data, str) else artifacts["slm-swap-metrics"].data
    assert {row["metric"] for row in table if row["track"] == "toolcall"} == {"valid_call_rate", "name_match_rate", "args_exact_rate"}

    # Every trace id, as a tag: the parent has all nine, the subflow its training's.
    ids = {json.loads(p.read_text())["langfuse_trace_id"] for p in eval_dir.glob("*_test.json")}
    ids |= {toolcall["decision"]["langfuse_trace_id"], structured["decision"]["langfuse_trace_id"],
            toolcall["final_decision"]["langfuse_trace_id"], manifest["langfuse_trace_id"]}
    assert None not in ids and len(ids) == 9 and ids == receiver.command_trace_ids()
    # Each track's split is one Langfuse dataset; hosted, SLM (and fine-tuned SLM) are runs of it,
    # linked side by side from the report.
    runs = receiver.experiment_runs()
    for track, sides in (("toolcall", ("azure", "slm", "slm_ft")), ("structured", ("azure", "slm"))):
        experiments = [json.loads((eval_dir / f"{track}_{side}_test.json").read_text())["langfuse_experiment"] for side in sides]
        dataset = receiver.datasets[f"slm-swap/xlam/{track}/test"]
        assert {e["dataset"] for e in experiments} == {dataset["name"]}
        assert [runs[e["id"]]["dataset_id"] for e in experiments] == [dataset["id"]] * len(sides)
        assert all(len(runs[e["id"]]["item_ids"]) == 3 for e in experiments)  # limit=3
        comparison = f"?baseline={experiments[0]['id']}" + "".join(f"&c={e['id']}" for e in experiments[1:])
        assert comparison in (eval_dir / "report.md").read_text()
    assert {f"langfuse:{i}" for i in ids} <= set(graph["run"].tags)
    assert f"langfuse:{manifest['langfuse_trace_id']}" in child.tags
    # ...and the traces point back at the flow runs (evals: the parent; training: the subflow).
    roots = {s["trace_id"]: s for s in receiver.spans if s["parent_span_id"] is None}
    linked = lambda i: json.loads(roots[i]["attributes"]["langfuse.observation.metadata.prefect_flow_run_id"])  # noqa: E731
    assert linked(ft_metrics["langfuse_trace_id"]) == flow_run_id
    assert linked(toolcall["final_decision"]["langfuse_trace_id"]) == flow_run_id
    assert linked(manifest["langfuse_trace_id"]) == str(child.id)


@pytest.mark.integration
@pytest.mark.usefixtures("loopback_only")
def test_equal_sides_skip_training_and_a_rerun_reuses_every_eval(prefect_api, xlam_data_dir, tiny_model_dir, tmp_path,
                                                                 hosted_env, monkeypatch, capsys):
    """`slm-swap pipeline` with equal sides: no fine-tune, no subflow, no trace tags (tracing off);
    the same command again asks the hosted model nothing and leaves the metrics files as they were."""
    from slm_swap.app.cli import main

    monkeypatch.setenv("LANGFUSE_DISABLED", "1")
    monkeypatch.setenv("SLM_MODEL_PATH", str(tiny_model_dir))
    eval_dir = tmp_path / "05_eval"
    argv = ["pipeline", "--data-dir", str(xlam_data_dir), "--out-dir", str(eval_dir), "--ft-dir", str(tmp_path / "04_ft"),
            "--limit", "3", "--finetune", "auto"]
    with OpenAIStub(responder(xlam_data_dir, ())) as stub:
        hosted_env(stub)
        assert main(argv) == 0
        out = capsys.readouterr().out
        asked = len(stub.requests)
        assert asked == 6
        snapshot = {p.name: p.read_bytes() for p in eval_dir.glob("*_test.json")}
        assert main(argv) == 0
        rerun_out = capsys.readouterr().out
        assert len(stub.requests) == asked  # every eval reused
    assert out.splitlines().count("FINE_TUNE=0") == 2 and "FINE_TUNE=1" not in out
    assert "-> structured: FINE_TUNE=0: the SLM keeps up" in out and "-> toolcall: FINE_TUNE=0: the SLM keeps up" in out
    flow_run_id = out.strip().splitlines()[-1].removeprefix("flow run: ")
    assert f"report: {eval_dir / 'report.md'} {eval_dir / 'report.png'}" in out
    assert {p.name: p.read_bytes() for p in eval_dir.glob("*_test.json")} == snapshot
    assert not (tmp_path / "04_ft").exists() and not list(eval_dir.glob("*_ft_*"))
    assert (eval_dir / "report.png").is_file()

    graph = run_graph(flow_run_id, expect_tasks=7)
    assert graph["run"].state.is_completed() and graph["children"] == []
    assert set(graph["tasks"]) == {"eval-hosted-structured", "eval-hosted-toolcall", "eval-slm-structured",
                                   "eval-slm-toolcall", "compare-structured-baseline", "compare-toolcall-baseline", "report"}
    assert not [tag for tag in graph["run"].tags if tag.startswith("langfuse:")]
    assert {"slm-swap-report", "slm-swap-metrics"} <= set(graph["artifacts"])
    rerun_id = rerun_out.strip().splitlines()[-1].removeprefix("flow run: ")
    assert rerun_id != flow_run_id and run_graph(rerun_id, expect_tasks=7)["run"].state.is_completed()


@pytest.mark.integration
def test_a_refused_config_fails_the_flow_with_its_one_line_and_writes_nothing(prefect_api, tmp_path, hosted_env, capsys):
    """No dataset there: the command refuses before Prefect starts; a run it did not check (`prefect
    deployment run`, the UI) checks first and fails with the same line as its state's message."""
    from flows.distill import slm_swap_distill
    from flows.pipeline import slm_swap_pipeline
    from flows.runtime import run_in_process
    from slm_swap.app.cli import main
    from slm_swap.app.flow_configs import DistillConfig

    expected = (f"{tmp_path / 'nowhere' / 'toolcall' / 'test.jsonl'}: no such dataset file "
                "(run `slm-swap prepare`/`build` or set the pipeline's data source)")
    config = PipelineConfig(tracks=["toolcall"], data_dir=tmp_path / "nowhere", eval_dir=tmp_path / "05_eval")
    distill = DistillConfig(limit=2, tools="nomod:f", trajectories_dir=tmp_path / "03", data_dir=tmp_path / "02",
                            eval_dir=tmp_path / "05_distill")
    with OpenAIStub() as stub:
        hosted_env(stub)
        assert main(["pipeline", "--tracks", "toolcall", "--data-dir", str(tmp_path / "nowhere"),
                     "--out-dir", str(tmp_path / "05_eval")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"slm-swap: error: {expected}"
        state = slm_swap_pipeline(config, return_state=True)
        with pytest.raises(SlmSwapError) as raised:
            run_in_process(slm_swap_pipeline, config)
        distill_state = slm_swap_distill(distill, return_state=True)
    assert state.is_failed() and state.message == expected == str(raised.value)
    assert distill_state.is_failed() and distill_state.message.startswith("--tools 'nomod:f': cannot import nomod")
    assert stub.requests == [] and not list(tmp_path.rglob("*.pipeline.json")) and not list(tmp_path.rglob("*.jsonl"))
