"""One typed request per command: every option of every `slm-swap` command, declared once.

The CLI's flags are generated from these models (`slm_swap.infra.cli_options`: flag, type, default,
choices and `--help` text all come from the field), the Prefect flows take `PipelineConfig` and
`DistillConfig` as their one parameter, and the library's steps read the same objects. A default
lives here or in the library constant a field points at, nowhere else.

`option` and `Request` (`slm_swap.infra.cli_options`) declare a field with its help text and flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import model_validator

from slm_swap.core.prompts import TRACKS as ROW_TRACK_NAMES
from slm_swap.core.tracks import get_track
from slm_swap.evaluation.registry import DEFAULT_REGISTRY
from slm_swap.infra.cli_options import Request, option
from slm_swap.infra.config import (DEFAULT_DATA_DIR, DEFAULT_DISTILL_DIR, DEFAULT_EVAL_DIR, DEFAULT_FT_DIR,
                                   DEFAULT_GATEWAY_RECORDS, DEFAULT_TRAJECTORIES_DIR, EMBEDDED_MODEL_DIR)
from slm_swap.llm.agent_models import AGENT_MAX_NEW_TOKENS
from slm_swap.llm.completion import EVAL_BATCH_SIZE, MAX_NEW_TOKENS, SERVE_BATCH_WAIT_MS
from slm_swap.llm.precision import Precision
from slm_swap.train.options import ONE_EPOCH, STEP_CAP_HELP, StepCap, Track, TrainOptions
from slm_swap.trajectories.codeact import DEFAULT_MAX_STEPS, DEFAULT_TOOLS

RowTrack = Literal[tuple(ROW_TRACK_NAMES)]  # type: ignore[valid-type]
Split = Literal["train", "val", "test"]
ModelKind = Literal["azure", "slm"]
FinetuneMode = Literal["auto", "always", "never"]
FINETUNE_MODES: tuple[str, ...] = get_args(FinetuneMode)
DEFAULT_FINETUNE_DEPLOYMENT = "slm-swap-finetune/gpu"
DEFAULT_DISTILL_EVAL_DIR = DEFAULT_EVAL_DIR / "distill"
ACCELERATE_CONFIG_HELP = "accelerate config (default: accelerate_config/phi4_4gpu.yaml with CUDA, else accelerate_config/cpu.yaml)"


def rows_dir(track: str, data_dir: Path | None) -> Path:
    """--data-dir, else where the track's rows are made: `build`'s folder for the agent's conversations
    and tasks, `prepare`'s for the v0 rows."""
    if data_dir:
        return Path(data_dir)
    return DEFAULT_DISTILL_DIR if get_track(track).runs_as_agent else DEFAULT_DATA_DIR


# -- options several commands share --------------------------------------------------------------


def load_in_4bit_option() -> Any:
    return option(None, "slm: load in NF4 4-bit through bitsandbytes, on CPU as on CUDA (default: 4-bit with CUDA, "
                        "full precision on CPU)")


def precision_option() -> Any:
    return option("fp32", "slm in full precision: the weights' dtype. auto: bf16 on CUDA and on CPUs with "
                          "AVX512-BF16/AMX, else fp32. fp32 (the default) gives the same answers on every machine; "
                          "bf16 answers can depend on how a batch was formed (llm/precision.py)")


def compile_option() -> Any:
    return option(False, "decode a lone request through torch.compile: in fp32 the same answers, about 0.85x the "
                         "time per token on the embedded model once compiled (a minute of compiling on the first "
                         "request; batches stay eager: docs/models.md#local-slm-slm_swapllmlocalpy)")


# The hosted client's defaults. Commands that pass them straight to the library leave the range
# checks to it (its messages name the flag); the flows' configs add them as constraints.
def concurrency_option(help: str = "hosted: parallel requests", **constraints: Any) -> Any:
    return option(8, help, **constraints)


def timeout_option(help: str = "hosted: seconds per request", **constraints: Any) -> Any:
    return option(60.0, help, flag="--timeout", **constraints)


def max_retries_option(help: str = "hosted: retries on 429/5xx/timeouts", **constraints: Any) -> Any:
    return option(4, help, **constraints)


class SourceOptions(Request):
    """Where source rows come from: the embedded BFCL data or the user's xLAM-60k file."""

    source: Literal["bfcl", "xlam"] = option("bfcl", "bfcl: the embedded BFCL data; xlam: your xLAM-60k file")
    dataset_path: Path | None = option(None, "xlam only: the xLAM-60k file (JSON array or .jsonl)")
    categories: list[str] = option([], "bfcl only: BFCL category, repeatable (default: simple_python)",
                                   flag="--category", repeat=True)

    @model_validator(mode="after")
    def _one_source(self) -> "SourceOptions":
        if self.source == "xlam" and not self.dataset_path:
            raise ValueError("source 'xlam' needs dataset_path (the xLAM-60k file)")
        if self.source != "xlam" and self.dataset_path:
            raise ValueError("dataset_path applies to source 'xlam' only (BFCL data comes from the bfcl-eval package)")
        if self.source != "bfcl" and self.categories:
            raise ValueError("categories apply to source 'bfcl' only")
        return self


# -- v0 commands ---------------------------------------------------------------------------------


class FetchRequest(Request):
    dest: Path = option(EMBEDDED_MODEL_DIR, "where the checkpoint goes")
    force: bool = option(False, "rebuild even if the checkpoint is already there")


class PrepareRequest(SourceOptions):
    train: int = option(32, "train examples")
    val: int = option(8, "validation examples")
    test: int = option(8, "test examples")
    seed: int = option(0, "shuffle seed; same seed, same bytes")
    out_dir: Path = option(DEFAULT_DATA_DIR, "output folder")


class EvalRequest(Request):
    track: Track = option(..., "structured, toolcall, or agent (the model as the CodeAct agent)")
    model_kind: ModelKind = option(..., "azure: the hosted model; slm: the local SLM")
    split: Split = option("test", "")
    out: Path | None = option(None, "metrics file (default: <eval-dir>/<track>_<kind>[_ft]_<split>.json)")
    eval_dir: Path = option(DEFAULT_EVAL_DIR, "")
    data_dir: Path | None = option(None, f"(default: {DEFAULT_DATA_DIR}; for --track agent {DEFAULT_DISTILL_DIR})")
    adapter: Path | None = option(None, "LoRA adapter folder (PEFT format) for the SLM (with SLM_BASE_URL: the "
                                        "engine loads it and is asked for it by name)")
    slm_model: str | None = option(None, "with SLM_BASE_URL: the engine's model to evaluate, by name (an adapter it "
                                         "serves, as vLLM --lora-modules or serve --adapter NAME=DIR name them); "
                                         "default: --adapter loaded there, else the engine's base model")
    limit: int | None = option(None, "first N examples only")
    resume: bool = option(False, "finish an interrupted run, keeping finished examples")
    concurrency: int = concurrency_option("hosted: parallel requests; agent: agents in flight, the SLM's decoded together")
    timeout_s: float = timeout_option()
    max_retries: int = max_retries_option()
    max_errors: int | None = option(None, "stop after this many failed requests (default: 10% of examples, at least 1)")
    batch_size: int = option(EVAL_BATCH_SIZE, "slm: prompts decoded together; lower it if memory runs out")
    max_steps: int | None = option(None, "agent: model turns per task (default: the capture's, from the tasks file)")
    tools: str | None = option(None, "agent: the tools factory (default: simulated tools, as capture)", metavar="MODULE:FACTORY")
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()

    def rows_dir(self) -> Path:
        return rows_dir(self.track, self.data_dir)


class InferRequest(Request):
    track: RowTrack = option(..., "")
    model_kind: ModelKind = option(..., "")
    text: str = option(..., "the user's request")
    functions: Path | None = option(None, "JSON file with a list of function signatures to offer")
    adapter: Path | None = option(None, "LoRA adapter folder for the SLM")
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()


class ServeRequest(Request):
    host: str = option("127.0.0.1", "loopback only by default")
    port: int = option(8000, "")
    model_path: Path | None = option(None, "checkpoint (default: SLM_MODEL_PATH, else the embedded model)")
    model_name: str | None = option(None, "name the base model is served under (default: the checkpoint folder's name)")
    adapter: list[str] = option([], "serve a LoRA adapter as model NAME (repeatable)", repeat=True, metavar="NAME=DIR")
    adapters_dir: Path | None = option(None, "also serve every <dir>/adapter_<track>/ as model <track>")
    api_key: str | None = option(None, "require this key (Authorization: Bearer, or Azure's api-key header); default: "
                                       "SLM_SWAP_SERVE_API_KEY, which is better: arguments are visible to anyone via `ps`")
    batch_size: int = option(8, "queued requests generated together")
    batch_wait_ms: float = option(SERVE_BATCH_WAIT_MS, "how long a batch short of --batch-size waits for more requests "
                                                       "before it starts; 0: at once")
    max_new_tokens: int = option(MAX_NEW_TOKENS, "default completion length cap")
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()
    compile: bool = compile_option()
    allow_adapter_loading: bool = option(False, "serve vLLM's POST /v1/load_lora_adapter, so `eval`/the pipeline given "
                                                "SLM_BASE_URL can load the adapter they evaluate (it reads any folder "
                                                "the caller names: keep the key and the loopback host)")


class GatewayRequest(Request):
    host: str = option("127.0.0.1", "loopback only by default")
    port: int = option(8100, "")
    model_path: Path | None = option(None, "the SLM loaded in process when SLM_BASE_URL is not set (default: "
                                           "SLM_MODEL_PATH, else the embedded model)")
    adapters_dir: Path = option(DEFAULT_FT_DIR, "the in-process SLM serves <dir>/adapter_<track>/ for each track that "
                                                "has one (the main job's adapters); the base model for the others")
    records: Path = option(DEFAULT_GATEWAY_RECORDS, "append one JSON line per request here")
    slm_model: list[str] = option([], "with SLM_BASE_URL: the engine's model for a track (default: the track's "
                                      "name, as `slm-swap serve --adapters-dir` names adapters; repeatable)",
                                  repeat=True, metavar="TRACK=NAME")
    no_log_content: bool = option(False, "records keep only the metadata: no model output or error text, reasons "
                                         "as their codes")
    mode: list[str] = option([], "route: the SLM first, the hosted model when its answer fails the request's "
                                 "validators; shadow: the hosted model answers, the SLM's answer is only recorded "
                                 "and compared; hosted: pass-through. MODE sets every track, TRACK=MODE one "
                                 "(repeatable; default route)", repeat=True, metavar="[TRACK=]MODE")
    registry: Path = option(DEFAULT_REGISTRY, "the promoted adapters per track (`slm-swap gateway promote`, the "
                                              "flywheel); the in-process SLM serves them and follows each new "
                                              "promotion without a restart")
    no_policy: bool = option(False, "no confidence gate, even where default policy files exist: the validators alone")
    policy: list[Path] = option([], "a track's confidence gate, from `slm-swap gateway calibrate` (repeatable; default: "
                                    f"the {DEFAULT_GATEWAY_RECORDS.parent}/policy_<track>.json files that exist)",
                                repeat=True, metavar="FILE")
    precision: Precision = precision_option()
    compile: bool = compile_option()


class GatewayCalibrateRequest(Request):
    """`slm-swap gateway calibrate`: the confidence threshold of the gateway's gate for one track."""

    track: RowTrack = option(..., "")
    adapter: Path | None = option(None, "LoRA adapter folder the gateway serves for this track")
    split: Split = option("val", "labelled split the threshold is chosen on")
    target: str | None = option(None, "accuracy the accepted SLM answers must show with 95% confidence (an exact "
                                      "binomial test on the counts), as a decimal (default: the hosted "
                                      "model's accuracy on the split, from its eval in --eval-dir, minus --delta)")
    delta: str = option("0.01", "with the default target: how far below the hosted model's accuracy it may be")
    out: Path | None = option(None, "policy file (default: slm_swap/06_gateway/policy_<track>.json); the "
                                    "risk-coverage chart goes beside it as .png")
    data_dir: Path = option(DEFAULT_DATA_DIR, "")
    eval_dir: Path = option(DEFAULT_EVAL_DIR, "where `slm-swap eval` wrote the hosted model's metrics")
    limit: int | None = option(None, "first N examples only")
    batch_size: int = option(EVAL_BATCH_SIZE, "prompts decoded together; lower it if memory runs out")
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()


class GatewayPromoteRequest(Request):
    """`slm-swap gateway promote`: the adapter a track's gateway serves, through the promotion gate."""

    track: RowTrack = option(..., "")
    adapter: Path = option(..., "adapter folder to promote (trained by slm-swap for --track: its manifest, config, weights)")
    metrics: Path | None = option(None, "the adapter's metrics file, from `slm-swap eval --model-kind slm --adapter "
                                         "DIR` on the test set (needed unless --force)")
    against: Path | None = option(None, "the promoted adapter's metrics on the same test set (default: those kept in "
                                        "the registry, when measured there); before any promotion, the base SLM's "
                                        "(none: the adapter is promoted as the first)")
    delta: str = option("0.01", "largest loss tolerated on a core metric, as a decimal; promoted only when better on "
                                "one and not worse by more than delta on any, decided exactly on pass counts")
    force: bool = option(False, "promote whatever the gate says (or without --metrics); recorded as forced")
    policy: Path | None = option(None, "the confidence gate calibrated for this adapter (`slm-swap gateway calibrate "
                                       "--adapter DIR`), switched with it (none: the gateway keeps the track's gate)")
    registry: Path = option(DEFAULT_REGISTRY, "the registry of promoted adapters the gateway follows")


class FlywheelRequest(Request):
    """`slm-swap flywheel`: one round: the gateway's traffic since the last round becomes a candidate
    adapter, promoted through the gate only when better (`slm_swap.app.flywheel`)."""

    track: RowTrack = option(..., "")
    max_steps: StepCap = option(ONE_EPOCH, "training: " + STEP_CAP_HELP)
    records: Path = option(DEFAULT_GATEWAY_RECORDS, "the gateway's records file (its watermark is kept beside it)")
    registry: Path = option(DEFAULT_REGISTRY, "the registry of promoted adapters the gateway follows")
    policy: Path | None = option(None, "where the promoted adapter's calibrated policy is installed (default: "
                                       "slm_swap/06_gateway/policy_<track>.json, what the gateway reads)")
    data_dir: Path = option(DEFAULT_DATA_DIR, "the main job's rows (<data-dir>/<track>/{train,val}.jsonl); the "
                                              "traffic rows go to <data-dir>/flywheel/<track>/")
    flywheel_dir: Path = option(DEFAULT_FT_DIR / "flywheel", "rounds go to <flywheel-dir>/<track>/round-<n>/")
    delta: str = option("0.01", "promotion gate: largest loss tolerated on a core metric, decided on pass counts")
    heldout_per_round: int = option(8, "held-out traffic rows drawn per round at most", ge=0)
    min_new_rows: int = option(1, "fewer new traffic rows than this: nothing to do", ge=1)
    accelerate_config: Path | None = option(None, ACCELERATE_CONFIG_HELP)
    concurrency: int = concurrency_option(ge=1)
    timeout_s: float = timeout_option(gt=0)
    batch_size: int = option(EVAL_BATCH_SIZE, "SLM: prompts decoded together", ge=1)
    load_in_4bit: bool | None = load_in_4bit_option()
    precision: Precision = precision_option()


class FinetuneRequest(TrainOptions):
    """`slm-swap train`: where the rows and the adapter are, and how to train (`TrainOptions`, which
    `python -m slm_swap.train` takes as well)."""

    track: Track = option(..., "agent: train on `build`'s conversation rows, loss on the assistant turns only (not on "
                               "the system prompt, the task or any observation)")
    data_dir: Path | None = option(None, f"(default: {DEFAULT_DATA_DIR}; for --track agent {DEFAULT_DISTILL_DIR})")
    train: Path | None = option(None, "train JSONL (default: <data-dir>/<track>/train.jsonl)")
    val: Path | None = option(None, "validation JSONL (default: <data-dir>/<track>/val.jsonl)")
    ft_dir: Path = option(DEFAULT_FT_DIR, "")
    out: Path | None = option(None, "adapter folder (default: <ft-dir>/adapter_<track>)")
    accelerate_config: Path | None = option(None, ACCELERATE_CONFIG_HELP)

    def rows_dir(self) -> Path:
        return rows_dir(self.track, self.data_dir)

    def options(self) -> TrainOptions:
        return TrainOptions(**self.model_dump(include=set(TrainOptions.model_fields)))


class CompareRequest(Request):
    track: Track = option(..., "")
    azure: Path = option(..., "hosted model's metrics file")
    slm: Path = option(..., "local SLM's metrics file")
    delta: str = option("0.01", "largest gap tolerated on a core metric, as a decimal; decided exactly on pass counts")


class PromptsExportRequest(Request):
    out: str = option("-", "file, or - for stdout")


# -- Phase II commands ---------------------------------------------------------------------------


class CaptureRequest(SourceOptions):
    limit: int | None = option(None, "first N rows only")
    out: Path = option(DEFAULT_TRAJECTORIES_DIR / "trajectories.jsonl", "")
    max_steps: int = option(DEFAULT_MAX_STEPS, "model turns per task")
    max_turn_tokens: int = option(AGENT_MAX_NEW_TOKENS, "new tokens per model turn; the agent eval of these tasks uses the same")
    tools: str = option(DEFAULT_TOOLS, "callable(signatures) -> list of smolagents Tools (default: simulated tools)",
                        metavar="MODULE:FACTORY")
    resume: bool = option(False, "finish an interrupted capture; finished requests are not asked again")
    concurrency: int = concurrency_option("trajectories in flight")
    timeout_s: float = timeout_option()
    max_retries: int = max_retries_option()
    max_errors: int | None = option(None, "stop after this many failed requests (default: 10% of rows, at least 1)")


class FilterRequest(Request):
    trajectories: Path = option(DEFAULT_TRAJECTORIES_DIR / "trajectories.jsonl", "")
    out_dir: Path | None = option(None, "where accepted.jsonl, rejected.jsonl and filter.json go (default: the "
                                        "trajectories' folder)")
    max_steps: int | None = option(None, "step limit to check (default: each trajectory's capture limit)")


class BuildRequest(Request):
    accepted: Path = option(DEFAULT_TRAJECTORIES_DIR / "accepted.jsonl", "")
    out_dir: Path = option(DEFAULT_DISTILL_DIR, "")
    val: int = option(8, "validation tasks")
    test: int = option(8, "test tasks, drawn first")
    seed: int = option(0, "shuffle seed; same seed, same bytes")
