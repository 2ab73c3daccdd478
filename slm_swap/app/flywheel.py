"""One flywheel round as plain steps: the gateway's traffic becomes a candidate adapter, promoted only
when the gate says it is better. `slm-swap flywheel` and the Prefect flow `slm-swap-flywheel` run them.

    outcome = run_round(settings, FlywheelRequest(track="toolcall"))
    # collect -> rows -> finetune -> evaluate -> decide -> [calibrate -> promote] -> finish

Where things are (`<data>`: --data-dir, `<rounds>`: --flywheel-dir/<track>):
- `<data>/flywheel/<track>/test.jsonl` (+ `.traffic.jsonl`): the held-out traffic test set, grown by
  at most --heldout-per-round rows a round, never trained on;
- `<data>/flywheel/<track>/traffic_train.jsonl`: the traffic rows trained on so far;
- `<rounds>/round-<n>/`: everything one round makes: `data/<track>/{train,val,test}.jsonl` (train: the
  main job's `<data>/<track>/train.jsonl`, then earlier traffic rows, then the new ones, with every
  held-out request left out; val: the main job's; test: the held-out set), `adapter_<track>/`,
  `eval/{candidate,incumbent,hosted}/`, the calibrated `policy_<track>.json`, `report.md`, `report.json`;
- `<rounds>/rounds.jsonl`: one line per finished round, for the chart (`<rounds>/rounds.png`).

A round is safe to kill at any step: until `promote` it writes only inside its own round folder, so the
registry, the live gateway policy, the shared traffic rows and the watermark are as they were, and
the next round (a new folder: round numbers are never reused) reads the same traffic again. The
registry write is the round's one commit point for the model; `finish` then publishes the rows,
writes the report and moves the watermark last. The gateway's threshold is re-calibrated on the
held-out traffic test set (the traffic the gateway serves, where the hosted model's eval already
ran), not on val: the promotion was decided before, so choosing the threshold there biases nothing.
A round that finds too few new rows, or no held-out rows yet, ends early ("nothing to do"), leaves no
folder and does not move the watermark, so the rows it saw count again when more traffic comes.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slm_swap.app.flow_configs import PipelineConfig
from slm_swap.app.requests import FlywheelRequest, GatewayCalibrateRequest
from slm_swap.core.promotion import PromotionDecision, decide_promotion, summarize_metrics
from slm_swap.core.tracks import get_row_track
from slm_swap.data.examples import load_rows
from slm_swap.data.traffic import (TrafficBatch, TrafficHarvest, TrafficRow, commit, merge_train, read_heldout,
                                   read_new_records, rows_from_records, update_heldout, write_rows)
from slm_swap.evaluation.registry import (PromotedAdapter, load_registry, promoted_adapter, record_promotion,
                                          verify_adapter)
from slm_swap.infra.config import Settings
from slm_swap.infra.errors import SlmSwapError
from slm_swap.infra.fileio import atomic_write_bytes

SIDES = ("candidate", "incumbent", "hosted")


@dataclass
class Round:
    """One round's state, filled step by step; `status` is what the round came to."""

    track: str
    number: int
    folder: Path
    started_at: str
    batch: TrafficBatch | None = None
    harvest: TrafficHarvest | None = None
    heldout: list[TrafficRow] = field(default_factory=list)
    traffic_train: list[dict[str, str]] = field(default_factory=list)  # traffic rows trained on after this round
    counts: dict[str, Any] = field(default_factory=dict)  # per-source and per-file row counts for the report
    incumbent: PromotedAdapter | None = None  # what the track served when the round evaluated
    metrics: dict[str, Path] = field(default_factory=dict)  # side -> metrics file
    decision: PromotionDecision | None = None
    calibration: dict[str, Any] | None = None
    promoted: PromotedAdapter | None = None
    status: str = "running"  # nothing to do | refused | promoted
    reason: str = ""

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def adapter(self) -> Path:
        """`<ft-dir>/adapter_<track>` with the round folder as ft-dir: the fine-tune subflow's layout."""
        return self.folder / f"adapter_{self.track}"

    def split_path(self, split: str) -> Path:
        return self.data_dir / self.track / f"{split}.jsonl"


def shared_dir(request: FlywheelRequest) -> Path:
    return Path(request.data_dir) / "flywheel" / request.track


def rounds_dir(request: FlywheelRequest) -> Path:
    return Path(request.flywheel_dir) / request.track


def check_round(settings: Settings, request: FlywheelRequest) -> None:
    """What would stop the round later, as one line now: the track, the main job's train and val
    rows, the SLM checkpoint and the hosted settings (no request is sent, nothing is written)."""
    from slm_swap.app.finetune_step import check_local_model
    from slm_swap.app.pipeline import check_hosted_settings

    get_row_track(request.track)
    for split in ("train", "val"):
        if not (path := Path(request.data_dir) / request.track / f"{split}.jsonl").is_file():
            raise SlmSwapError(f"{path}: no such dataset file: the flywheel trains on the main job's rows plus "
                               "traffic (run `slm-swap prepare`, or set --data-dir)")
    check_local_model(settings)
    check_hosted_settings(settings)


def start_round(request: FlywheelRequest) -> Round:
    """A new round folder, numbered after every earlier one (finished or killed): an adapter a killed
    round left (perhaps promoted just before the kill) is never overwritten."""
    get_row_track(request.track)
    base = rounds_dir(request)
    numbers = [int(m.group(1)) for p in base.glob("round-*") if (m := re.fullmatch(r"round-(\d+)", p.name))]
    number = max(numbers, default=0) + 1
    folder = base / f"round-{number}"
    folder.mkdir(parents=True)
    return Round(request.track, number, folder, datetime.now(timezone.utc).isoformat(timespec="seconds"))


def collect(state: Round, request: FlywheelRequest) -> None:
    """The gateway's records since the watermark (which stays where it is until `finish`)."""
    state.batch = read_new_records(Path(request.records), state.track)


def make_rows(state: Round, request: FlywheelRequest, settings: Settings) -> bool:
    """The round's train, val and test files; False (and `status` "nothing to do") when there are too
    few new rows or no held-out rows to evaluate on."""
    assert state.batch is not None
    main_train, main_val = (Path(request.data_dir) / state.track / f"{split}.jsonl" for split in ("train", "val"))
    state.harvest = rows_from_records(state.batch.records, scrub=settings.scrub)
    new_rows = state.harvest.for_track(state.track)
    main_rows, earlier = load_rows(main_train), _plain_rows(shared_dir(request) / "traffic_train.jsonl")
    before = read_heldout(shared_dir(request) / "test.jsonl")
    trained = {row["prompt"] for row in (*main_rows, *earlier)}
    state.heldout = update_heldout(before, new_rows, trained_prompts=trained, max_new=request.heldout_per_round)
    train = merge_train([*main_rows, *earlier], new_rows, state.heldout)
    state.traffic_train = merge_train(earlier, new_rows, state.heldout)
    held = {row.request_hash for row in state.heldout}
    state.counts = {
        "records": len(state.batch.records), "records_restarted": state.batch.restarted,
        "sources": state.harvest.summary().get(state.track, {}), "scrubbed": state.harvest.scrubbed,
        "new_rows": len(new_rows), "new_rows_held_out": sum(row.request_hash in held for row in new_rows),
        "heldout": {"before": len(before), "added": len(state.heldout) - len(before), "total": len(state.heldout)},
        "train": {"main": len(main_rows), "earlier_traffic": len(earlier), "total": len(train)},
    }
    if len(new_rows) < request.min_new_rows or not state.heldout:
        state.status = "nothing to do"
        state.reason = (f"{len(new_rows)} new {state.track} rows (at least {request.min_new_rows} needed)"
                        if len(new_rows) < request.min_new_rows else "no held-out traffic rows yet to evaluate on")
        return False
    write_rows(state.split_path("train"), train)
    write_rows(state.split_path("test"), state.heldout)
    atomic_write_bytes(state.split_path("val"), main_val.read_bytes())
    return True


def _plain_rows(path: Path) -> list[dict[str, str]]:
    return load_rows(path) if path.is_file() else []


def finetune(state: Round, request: FlywheelRequest, settings: Settings, flow_run_id: str | None = None) -> None:
    """The candidate adapter, trained as the pipeline trains (`TrainOptions` defaults, its launch)."""
    from slm_swap.app.finetune_step import TrainingPlan, check_training_plan, launch_training
    from slm_swap.train.options import TrainOptions

    plan = TrainingPlan(track=state.track, train_path=state.split_path("train"), val_path=state.split_path("val"),
                        out=state.adapter, accelerate_config=request.accelerate_config,
                        options=TrainOptions(overwrite=True, max_steps=request.max_steps))
    check_training_plan(settings, plan, out_flag="--flywheel-dir")
    launch_training(plan, flow_run_id)


def evaluate(state: Round, request: FlywheelRequest, settings: Settings, flow_run_id: str | None = None) -> None:
    """The candidate, the promoted adapter (the base SLM when none) and the hosted model on the held-out set."""
    from slm_swap.app.pipeline import run_eval_step

    state.incumbent = promoted_adapter(load_registry(Path(request.registry)), state.track)
    if state.incumbent is not None:
        verify_adapter(state.incumbent)  # still the files that were promoted
    incumbent_adapter = state.incumbent.adapter if state.incumbent else None
    sides = {"candidate": ("slm", state.adapter), "incumbent": ("slm", incumbent_adapter), "hosted": ("azure", None)}
    for side, (kind, adapter) in sides.items():
        config = PipelineConfig(tracks=[state.track], split="test", data_dir=state.data_dir,
                                eval_dir=state.folder / "eval" / side, reuse_max_age_hours=0,
                                concurrency=request.concurrency, timeout_s=request.timeout_s,
                                batch_size=request.batch_size, load_in_4bit=request.load_in_4bit,
                                precision=request.precision)
        state.metrics[side] = run_eval_step(settings, config, track=state.track, kind=kind, adapter=adapter,
                                            flow_run_id=flow_run_id, progress="lines").path


def decide(state: Round, request: FlywheelRequest) -> PromotionDecision:
    """The promotion gate on exact pass counts: candidate against what the track served."""
    candidate = summarize_metrics(state.metrics["candidate"], state.track)
    incumbent = summarize_metrics(state.metrics["incumbent"], state.track)
    label = f"promoted v{state.incumbent.version}" if state.incumbent else "the base SLM"
    state.decision = decide_promotion(state.track, candidate, incumbent, request.delta, against=label)
    state.status, state.reason = ("promoting" if state.decision.promote else "refused"), state.decision.reason
    return state.decision


def calibrate_candidate(state: Round, request: FlywheelRequest, settings: Settings) -> None:
    """The gateway threshold for the candidate, into the round folder (installed by `promote`)."""
    from slm_swap.app.calibration import calibrate

    result = calibrate(settings, GatewayCalibrateRequest(
        track=state.track, adapter=state.adapter, split="test", data_dir=state.data_dir,
        eval_dir=state.folder / "eval" / "hosted", delta=request.delta,
        out=state.folder / f"policy_{state.track}.json", batch_size=request.batch_size,
        load_in_4bit=request.load_in_4bit, precision=request.precision))
    choice = result.choice
    state.calibration = {"policy": str(result.policy_path), "threshold": choice.threshold, "accepted": choice.accepted,
                         "correct": choice.correct, "n": choice.n, "target": str(result.target)}


def promote(state: Round, request: FlywheelRequest) -> None:
    """Record the candidate with its calibrated gate in the registry (the round's commit point: a running
    gateway switches both at once), then copy the policy where a gateway started without the registry reads
    it. Refused if the track's promoted adapter changed since `evaluate`."""
    from slm_swap.app.calibration import default_policy_path

    assert state.decision is not None and state.decision.promote
    now = promoted_adapter(load_registry(Path(request.registry)), state.track)
    if (now and now.version) != (state.incumbent and state.incumbent.version):
        raise SlmSwapError(f"track {state.track}: the promoted adapter changed while round {state.number} ran "
                           f"(now v{now.version if now else 0}): run the round again to compare against it")
    candidate = summarize_metrics(state.metrics["candidate"], state.track)
    policy = Path(state.calibration["policy"]) if state.calibration is not None else None
    state.promoted = record_promotion(Path(request.registry), state.track, state.adapter, metrics=candidate.as_dict(),
                                      decision=state.decision.as_dict(), forced=False, policy_file=policy)
    state.status = "promoted"
    if state.calibration is not None:
        live = Path(request.policy or default_policy_path(state.track))
        source = Path(state.calibration["policy"])
        atomic_write_bytes(live, source.read_bytes())
        atomic_write_bytes(live.with_suffix(".png"), source.with_suffix(".png").read_bytes())
        state.calibration["installed"] = str(live)


def finish(state: Round, request: FlywheelRequest) -> None:
    """Publish the held-out set and the traffic train rows, write the report and the history line, then
    move the watermark: the last write of a round."""
    from slm_swap.app.flywheel_report import append_history, write_round_report

    assert state.batch is not None
    if state.status == "nothing to do":  # nothing it wrote is referenced: no folder is left behind
        shutil.rmtree(state.folder, ignore_errors=True)
        return
    write_rows(shared_dir(request) / "test.jsonl", state.heldout)
    write_rows(shared_dir(request) / "traffic_train.jsonl", state.traffic_train)
    write_round_report(state, request)
    append_history(state, request)
    commit(state.batch)


def run_round(settings: Settings, request: FlywheelRequest, flow_run_id: str | None = None) -> Round:
    """One whole round, step by step (the Prefect flow runs the same steps as tasks)."""
    check_round(settings, request)
    state = start_round(request)
    collect(state, request)
    if make_rows(state, request, settings):
        finetune(state, request, settings, flow_run_id)
        evaluate(state, request, settings, flow_run_id)
        if decide(state, request).promote:
            calibrate_candidate(state, request, settings)
            promote(state, request)
    finish(state, request)
    return state


__all__ = ["Round", "SIDES", "calibrate_candidate", "check_round", "collect", "decide", "evaluate", "finetune",
           "finish", "make_rows", "promote", "run_round", "start_round"]
