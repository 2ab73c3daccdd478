"""The promotion gate, the registry of promoted adapters and `slm-swap gateway promote`: a candidate
replaces the promoted adapter only when it is better on a core metric and worse by no more than
delta on any (exact counts); the registry is written whole or not at all, and never points at an
adapter that is not all there."""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import error_lines
from slm_swap.app.cli import main
from slm_swap.core.promotion import MetricsSummary, decide_promotion, summarize_metrics
from slm_swap.core.results import metrics_document
from slm_swap.core.tracks import get_track
from slm_swap.data.examples import toolcall_completion
from slm_swap.evaluation.calibrate import ThresholdChoice, policy_document
from slm_swap.evaluation.registry import (load_promoted, load_registry, promoted_adapter, record_promotion,
                                          registry_stamp, verify_adapter)
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import write_json
from slm_swap.train.manifest import MANIFEST

CORE = get_track("toolcall").core_metrics  # valid_call_rate, name_match_rate, args_exact_rate
GOLD = toolcall_completion("f", {"x": 1})
WRONG_ARGS = toolcall_completion("f", {"x": 2})  # a valid call of the right name: only args_exact fails
DATASET = {"path": "traffic/toolcall/test.jsonl", "sha256": "ab" * 32}


def summary(passes: tuple[int, int, int], n: int = 100, sha: str = DATASET["sha256"], split: str = "test") -> MetricsSummary:
    return MetricsSummary(path=f"m{passes}.json", track="toolcall", split=split, n=n, dataset_path="t.jsonl",
                          dataset_sha256=sha, model={"kind": "slm", "identity": "m", "adapter": "a"},
                          passes=dict(zip(CORE, passes)))


def gate(candidate, incumbent, delta="0.01"):
    return decide_promotion("toolcall", summary(candidate), summary(incumbent), delta, against="promoted v1")


# -- the gate ----------------------------------------------------------------------------------


def test_better_on_one_metric_and_equal_elsewhere_is_promoted():
    decision = gate((90, 80, 61), (90, 80, 60))
    assert decision.promote and "better than promoted v1 on args_exact_rate" in decision.reason
    assert [(m.name, m.candidate_passes, m.incumbent_passes, m.verdict(decision.delta)) for m in decision.metrics] == [
        ("valid_call_rate", 90, 90, "equal"), ("name_match_rate", 80, 80, "equal"), ("args_exact_rate", 61, 60, "better")]


def test_worse_by_more_than_delta_on_any_metric_is_refused_however_much_better_elsewhere():
    decision = gate((99, 99, 58), (50, 50, 60))  # 2/100 worse on args_exact, delta 1/100
    assert not decision.promote
    assert decision.reason == "worse than promoted v1 by more than delta=0.01 on args_exact_rate"


def test_equal_everywhere_is_refused():
    decision = gate((90, 80, 60), (90, 80, 60))
    assert not decision.promote and decision.reason == "not better than promoted v1 on any core metric"


def test_worse_within_delta_but_better_elsewhere_is_promoted():
    decision = gate((95, 80, 59), (90, 80, 60), delta="0.05")
    assert decision.promote
    assert [m.verdict(decision.delta) for m in decision.metrics] == ["better", "equal", "worse within delta"]


def test_a_loss_of_exactly_delta_is_within_it_where_float_rates_would_refuse():
    assert 30 / 100 - 29 / 100 > 0.01  # the trap: in floats this gap is "more than" 0.01
    assert gate((31, 80, 29), (30, 80, 30)).promote  # 1/100 lost on args_exact, delta 0.01: within
    assert not gate((31, 80, 28), (30, 80, 30)).promote  # 2/100: beyond
    # The same on a delta no float holds exactly: 1/3 of a 3-example set.
    assert decide_promotion("toolcall", summary((3, 3, 2), n=3), summary((2, 2, 3), n=3), Fraction(1, 3),
                            against="x").promote


@pytest.mark.parametrize("other, what", [(summary((1, 1, 1), sha="cd" * 32), "different datasets"),
                                          (summary((1, 1, 1), split="val"), "different splits"),
                                          (summary((1, 1, 1), n=99), "different sizes")])
def test_metrics_of_different_test_sets_are_refused_in_one_line(other, what):
    with pytest.raises(SlmSwapError) as caught:
        decide_promotion("toolcall", summary((2, 2, 2)), other, "0.01", against="promoted v1")
    assert what in str(caught.value) and "\n" not in str(caught.value)


def test_with_nothing_to_compare_with_the_candidate_is_promoted_as_the_first():
    decision = decide_promotion("toolcall", summary((0, 0, 0)), None, "0.01", against="nothing")
    assert decision.promote and decision.reason.startswith("first promotion on track toolcall")


# -- the registry ------------------------------------------------------------------------------


def make_adapter(folder: Path, track: str = "toolcall", seed: int = 0) -> Path:
    """A folder as training publishes it: manifest, PEFT config, safetensors weights."""
    folder.mkdir(parents=True)
    write_json(folder / MANIFEST, {"track": track, "requested": {"max_steps": 2}, "backend": "transformers"})
    write_json(folder / "adapter_config.json", {"peft_type": "LORA", "r": 8})
    save_file({"lora_A": np.random.default_rng(seed).normal(size=(8, 16)).astype(np.float32)},
              str(folder / "adapter_model.safetensors"))
    return folder


def test_registry_round_trip_keeps_manifest_metrics_decision_and_hashes(tmp_path):
    path, adapter = tmp_path / "gw" / "registry.json", make_adapter(tmp_path / "a1")
    candidate, decision = summary((1, 1, 1)), decide_promotion("toolcall", summary((1, 1, 1)), None, "0.01", against="nothing")
    entry = record_promotion(path, "toolcall", adapter, metrics=candidate.as_dict(), decision=decision.as_dict(), forced=False)
    registry = load_registry(path)
    assert promoted_adapter(registry, "toolcall") == entry and promoted_adapter(registry, "structured") is None
    assert load_promoted(path) == {"toolcall": entry}
    assert (entry.version, entry.adapter, entry.forced) == (1, adapter.resolve(), False)
    assert entry.manifest["track"] == "toolcall" and set(entry.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert MetricsSummary.from_dict(entry.metrics, "x") == candidate and entry.decision["promote"] is True
    on_disk = json.loads(path.read_text())
    assert on_disk["tracks"]["toolcall"]["promoted"] == on_disk["tracks"]["toolcall"]["history"][-1]
    verify_adapter(entry)  # unchanged: no error


def test_versions_grow_per_track_and_history_keeps_every_promotion_including_a_rollback(tmp_path):
    path = tmp_path / "registry.json"
    first, second = make_adapter(tmp_path / "a1"), make_adapter(tmp_path / "a2", seed=1)
    stamps = [registry_stamp(path)]
    for adapter in (first, second, first):  # forward, forward, back
        record_promotion(path, "toolcall", adapter, metrics=None, decision=None, forced=True)
        stamps.append(registry_stamp(path))
    record_promotion(path, "structured", make_adapter(tmp_path / "s1", track="structured"), metrics=None,
                     decision=None, forced=True)
    registry = load_registry(path)
    assert [(e.version, e.adapter) for e in registry.history["toolcall"]] == [
        (1, first.resolve()), (2, second.resolve()), (3, first.resolve())]
    assert promoted_adapter(registry, "toolcall").version == 3 and promoted_adapter(registry, "structured").version == 1
    assert stamps[0] is None and len(set(stamps[1:])) == 3  # every write is seen as a change


def test_a_write_that_fails_at_the_rename_leaves_the_old_registry_whole(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    record_promotion(path, "toolcall", make_adapter(tmp_path / "a1"), metrics=None, decision=None, forced=True)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        record_promotion(path, "toolcall", make_adapter(tmp_path / "a2", seed=1), metrics=None, decision=None, forced=True)
    monkeypatch.undo()
    assert path.read_bytes() == before and promoted_adapter(load_registry(path), "toolcall").version == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


@pytest.mark.parametrize("text, why", [
    ("{not json", "registry.json"),
    ('{"format": 1}', "not a promotion registry"),
    ('{"format": 1, "tracks": {"toolcall": {"history": []}}}', "non-empty 'history'"),
    ('{"format": 1, "tracks": {"nosuch": {"history": [1]}}}', "unknown track 'nosuch'"),
    ('{"format": 1, "tracks": {"toolcall": {"history": [{"version": 1}]}}}', "bad or missing"),
])
def test_a_bad_registry_is_refused_in_one_line_naming_it(tmp_path, text, why):
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(SlmSwapError) as caught:
        load_registry(path)
    assert str(path) in str(caught.value) and why in str(caught.value) and "\n" not in str(caught.value)


def test_a_registry_whose_promoted_entry_disagrees_with_its_history_is_refused(tmp_path):
    path = tmp_path / "registry.json"
    record_promotion(path, "toolcall", make_adapter(tmp_path / "a1"), metrics=None, decision=None, forced=True)
    document = json.loads(path.read_text())
    document["tracks"]["toolcall"]["promoted"]["adapter"] = "/elsewhere"
    path.write_text(json.dumps(document))
    with pytest.raises(SlmSwapError, match="'promoted' is not the last entry"):
        load_registry(path)


def broken_adapters(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cut = make_adapter(tmp_path / "cut")
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # a copy cut short
    no_weights = make_adapter(tmp_path / "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    no_manifest = make_adapter(tmp_path / "no_manifest")
    (no_manifest / MANIFEST).unlink()
    return {"cut short": (cut, "not whole adapter weights"), "no weights": (no_weights, "not a whole adapter"),
            "no manifest": (no_manifest, f"no {MANIFEST}"), "other track": (make_adapter(tmp_path / "s", "structured"),
                                                                           "trained for track 'structured'"),
            "absent": (tmp_path / "absent", "no such adapter folder")}


def test_the_registry_never_points_at_an_adapter_that_is_not_all_there(tmp_path):
    path = tmp_path / "registry.json"
    record_promotion(path, "toolcall", make_adapter(tmp_path / "good"), metrics=None, decision=None, forced=True)
    before = path.read_bytes()
    for case, (adapter, why) in broken_adapters(tmp_path).items():
        with pytest.raises(SlmSwapError) as caught:
            record_promotion(path, "toolcall", adapter, metrics=None, decision=None, forced=True)
        assert why in str(caught.value), case
    assert path.read_bytes() == before


def test_a_promoted_folder_retrained_in_place_no_longer_verifies(tmp_path):
    adapter = make_adapter(tmp_path / "a1")
    entry = record_promotion(tmp_path / "registry.json", "toolcall", adapter, metrics=None, decision=None, forced=True)
    shutil.rmtree(adapter)
    make_adapter(adapter, seed=7)
    with pytest.raises(SlmSwapError, match="changed or gone since track toolcall promoted it as v1"):
        verify_adapter(entry)


# -- slm-swap gateway promote --------------------------------------------------------------------


def metrics_file(path: Path, adapter: Path | None, right: int, wrong_args: int, n: int = 10, dataset=DATASET) -> Path:
    """A metrics file as `slm-swap eval` writes it (`metrics_document`, the model block as `run_eval`
    fills it), of `adapter` (None: the base SLM): `right` fully right answers, `wrong_args` valid calls
    with wrong arguments, the rest no call. (A real eval of the tiny model decodes 256 tokens a row.)"""
    outputs = [GOLD] * right + [WRONG_ARGS] * wrong_args + ["no call"] * (n - right - wrong_args)
    records = [{"index": i, "output": out, **get_track("toolcall").score({"output": out, "completion": GOLD})}
               for i, out in enumerate(outputs)]
    model = {"kind": "slm", "identity": "/models/smollm2", "adapter": str(adapter) if adapter else None}
    write_json(path, metrics_document(track="toolcall", split="test", dataset=dataset, model=model, records=records,
                                      records_path=None))
    return path


def promote(registry: Path, adapter: Path, *extra: str) -> int:
    return main(["gateway", "promote", "--track", "toolcall", "--adapter", str(adapter), "--registry", str(registry),
                 *extra])


def test_promote_rolls_forward_through_the_gate_and_refuses_a_sabotaged_candidate(tmp_path, capsys):
    registry = tmp_path / "gw" / "registry.json"
    v1, v2, bad = make_adapter(tmp_path / "v1"), make_adapter(tmp_path / "v2", seed=1), make_adapter(tmp_path / "bad", seed=2)
    base = metrics_file(tmp_path / "base.json", None, right=2, wrong_args=2)
    m1 = metrics_file(tmp_path / "v1.json", v1, right=5, wrong_args=2)
    m2 = metrics_file(tmp_path / "v2.json", v2, right=6, wrong_args=2)
    sabotaged = metrics_file(tmp_path / "bad.json", bad, right=1, wrong_args=8)  # more calls, mostly wrong answers

    assert promote(registry, v1, "--metrics", str(m1), "--against", str(base)) == 0
    assert "against the base SLM" in capsys.readouterr().out
    assert promote(registry, v2, "--metrics", str(m2), "--against", str(m1)) == 0
    out = capsys.readouterr().out
    assert "args_exact_rate        candidate     6/10    incumbent     5/10    better" in out
    assert f"promoted: track toolcall v2 {v2.resolve()}, replacing v1 ({v1.resolve()})" in out
    assert promoted_adapter(load_registry(registry), "toolcall").metrics == summarize_metrics(m2, "toolcall").as_dict()

    before = registry.read_bytes()
    assert promote(registry, bad, "--metrics", str(sabotaged)) == 10  # against v2's metrics kept in the registry
    out = capsys.readouterr().out
    assert "worse than promoted v2 (its metrics in the registry) by more than delta=0.01 on args_exact_rate" in out
    assert "args_exact_rate        candidate     1/10    incumbent     6/10    worse by more than delta" in out
    assert "PROMOTE=0" in out and f"refused: track toolcall keeps v2 ({v2.resolve()})" in out
    assert registry.read_bytes() == before

    assert promote(registry, bad, "--metrics", str(sabotaged), "--force") == 0  # by hand, recorded as forced
    entry = promoted_adapter(load_registry(registry), "toolcall")
    assert (entry.version, entry.adapter, entry.forced, entry.decision["promote"]) == (3, bad.resolve(), True, False)
    assert "promoted (forced): track toolcall v3" in capsys.readouterr().out


def test_the_first_promotion_without_base_metrics_says_so(tmp_path, capsys):
    adapter = make_adapter(tmp_path / "v1")
    assert promote(tmp_path / "r.json", adapter, "--metrics", str(metrics_file(tmp_path / "m.json", adapter, 0, 0))) == 0
    assert "promote: first promotion on track toolcall: nothing promoted" in capsys.readouterr().out


def test_promote_refuses_bad_input_in_one_line_with_exit_2(tmp_path, capsys):
    registry = tmp_path / "registry.json"
    v1, v2 = make_adapter(tmp_path / "v1"), make_adapter(tmp_path / "v2", seed=1)
    m1 = metrics_file(tmp_path / "v1.json", v1, 5, 0)
    assert promote(registry, v1, "--metrics", str(m1)) == 0
    other_set = metrics_file(tmp_path / "other.json", v2, 9, 0, dataset={"path": "b.jsonl", "sha256": "cd" * 32})
    cases = [
        ((v2,), "--metrics is needed unless --force"),
        ((v2, "--metrics", str(m1)), f"measures {v1}, not the adapter {v2}"),  # v1's numbers for v2
        ((v2, "--metrics", str(other_set)), "--against is needed"),  # the kept v1 metrics are of another test set
        ((v2, "--metrics", str(other_set), "--against", str(m1)), "cannot compare different datasets"),
        ((v2, "--metrics", str(metrics_file(tmp_path / "v2.json", v2, 6, 0)), "--against",
          str(metrics_file(tmp_path / "base.json", None, 0, 0))), "measures the slm model without an adapter, not the adapter"),
        ((tmp_path / "nowhere", "--force"), "no such adapter folder"),
        ((v2, "--metrics", str(m1), "--delta", "1.5"), "--delta must be"),
    ]
    capsys.readouterr()
    for args, why in cases:
        assert promote(registry, *args) == 2, why
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and why in err[0], (why, err)
    registry.write_text("[]")
    assert promote(registry, v2, "--force") == 2
    assert f"{registry}: not a promotion registry" in error_lines(capsys.readouterr().err)[0]


def calibrated_policy(path: Path, adapter: Path | None, threshold: float | None, track: str = "toolcall") -> Path:
    """A policy file as `gateway calibrate` writes it, for `adapter` (None: the base model)."""
    document = policy_document(track=track, split="test", model={"identity": "/models/smollm2",
                                                                   "adapter": str(adapter) if adapter else None},
                               dataset={}, choice=ThresholdChoice(threshold, 3, 3, 4, 6, ()), target=Fraction(9, 10),
                               target_source={"from": "--target"}, created_at="2026-12-06T00:00:00+00:00")
    write_json(path, document)
    return path


def test_a_promotion_carries_the_confidence_gate_calibrated_for_its_adapter(tmp_path, capsys):
    """The gate is kept inside the registry entry, so one atomic write switches adapter and threshold;
    a gate calibrated for another adapter or track is refused before the registry is touched."""
    registry = tmp_path / "gw" / "registry.json"
    v1, v2 = make_adapter(tmp_path / "v1"), make_adapter(tmp_path / "v2", seed=1)
    assert promote(registry, v1, "--force", "--policy", str(calibrated_policy(tmp_path / "p1.json", v1, -0.75))) == 0
    assert f"confidence gate: threshold -0.75 ({tmp_path / 'p1.json'})" in capsys.readouterr().out
    (tmp_path / "p1.json").unlink()  # the gate lives in the registry, not in the file it came from
    gate = load_promoted(registry)["toolcall"].gate()
    assert (gate.threshold, gate.track, gate.adapter) == (-0.75, "toolcall", str(v1))

    before = registry.read_bytes()
    for policy, why in [(calibrated_policy(tmp_path / "p-v1.json", v1, -0.5), f"calibrated for {v1}, not the adapter"),
                        (calibrated_policy(tmp_path / "p-base.json", None, -0.5), "calibrated for the base model"),
                        (calibrated_policy(tmp_path / "p-s.json", v2, -0.5, "structured"), "for track 'structured'"),
                        (tmp_path / "absent.json", "absent.json")]:
        assert promote(registry, v2, "--force", "--policy", str(policy)) == 2
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and why in err[0], (why, err)
    assert registry.read_bytes() == before

    assert promote(registry, v2, "--force") == 0  # no gate given: the entry has none, and says so
    assert "confidence gate: none given" in capsys.readouterr().out
    assert load_promoted(registry)["toolcall"].gate() is None
    assert load_registry(registry).history["toolcall"][0].gate().threshold == -0.75  # history keeps v1's


def test_promote_help_names_its_options(capsys):
    with pytest.raises(SystemExit) as done:
        main(["gateway", "promote", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: slm-swap gateway promote")
    assert all(flag in out for flag in ("--track", "--adapter", "--metrics", "--against", "--delta", "--force",
                                        "--policy", "--registry"))
