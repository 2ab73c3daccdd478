"""One typed request per command: the CLI's flags are generated from the request models, so a flag's
default, choices and help come from the one declaration the library and the Prefect flows read."""

from __future__ import annotations

import argparse
import typing

import pytest
from pydantic import BaseModel

from slm_swap.app.cli import COMMANDS, build_parser, main
from slm_swap.infra.cli_options import flag_of, parse_request
from slm_swap.app.flow_configs import DataSource, PipelineConfig


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for part in name.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[part]
    return parser


def leaf_fields(model) -> dict[str, object]:
    """Every field a flag stands for (nested models flattened, as the CLI flattens them)."""
    fields = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.update(leaf_fields(annotation))
        else:
            fields[name] = field
    return fields


def required_argv(model) -> tuple[list[str], dict[str, object]]:
    argv, values = [], {}
    for name, field in leaf_fields(model).items():
        if field.is_required():
            choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
            value = choices[0] if choices else "x.json"
            argv += [flag_of(name, field), value]
            values[name] = value
    return argv, values


@pytest.mark.parametrize("name, model", [(c[0], c[1]) for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_each_flag_is_a_field_of_the_commands_request_and_takes_its_default_from_it(name, model):
    parser = subparser(name)
    # `gateway` also holds its actions (`gateway calibrate`): a subparser, not a flag
    flags = [a for a in parser._actions if a.dest != "help" and not isinstance(a, argparse._SubParsersAction)]
    dests = {a.dest for a in flags}
    assert dests == set(leaf_fields(model))  # no hand-written flag beside the model, no field without a flag
    assert all(a.default is argparse.SUPPRESS for a in flags)
    argv, values = required_argv(model)
    parsed = parse_request(model, parser.parse_args(argv), name)
    assert parsed == model.model_validate(values)  # every default the command runs with is the model's


def test_help_shows_every_fields_description_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, field in leaf_fields(PipelineConfig).items():
        assert " ".join(field.description.split()[:4]) in text, name
    assert "--timeout TIMEOUT hosted: seconds per request (a CPU stand-in needs more) (default: 60.0)" in text
    assert "--out-dir OUT_DIR" in text


def test_pipeline_flags_build_the_flows_parameter():
    parser = subparser("pipeline")
    argv = ["--tracks", "toolcall", "--source", "bfcl", "--category", "simple_python", "--category", "multiple",
            "--limit", "3", "--timeout", "5", "--finetune-deployment", "", "--no-load-in-4bit"]
    config = parse_request(PipelineConfig, parser.parse_args(argv), "pipeline")
    assert config == PipelineConfig(tracks=["toolcall"], data=DataSource(source="bfcl", categories=["simple_python", "multiple"]),
                                    limit=3, timeout_s=5.0, finetune_deployment=None, load_in_4bit=False)


@pytest.mark.parametrize("argv, message", [
    (["pipeline", "--concurrency", "0"], "pipeline: --concurrency: Input should be greater than or equal to 1"),
    (["distill", "--source", "bfcl", "--dataset-path", "x.json"],
     "distill: options: dataset_path applies to source 'xlam' only"),
    (["prepare", "--source", "xlam", "--category", "simple_python", "--dataset-path", "x.json"],
     "prepare: options: categories apply to source 'bfcl' only"),
])
def test_a_value_the_request_refuses_is_one_line_naming_it(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"slm-swap: error: {message}")


def test_slm_swap_train_and_the_launched_entry_share_one_declaration_of_the_training_options():
    from slm_swap.app.finetune_step import TrainingPlan, training_command
    from slm_swap.app.requests import FinetuneRequest
    from slm_swap.train.entry import build_parser as entry_parser
    from slm_swap.train.options import TrainEntryRequest, TrainOptions

    assert {a.dest for a in entry_parser()._actions if a.dest != "help"} == set(TrainEntryRequest.model_fields)
    assert set(TrainOptions.model_fields) <= set(FinetuneRequest.model_fields)
    argv = ["--track", "toolcall", "--precision", "fp32", "--sampling", "random", "--max-steps", "3", "--overwrite"]
    request = parse_request(FinetuneRequest, subparser("train").parse_args(argv), "train")
    command = training_command(TrainingPlan(track="toolcall", train_path=request.rows_dir() / "t.jsonl",
                                            val_path=request.rows_dir() / "v.jsonl", out=request.ft_dir / "a",
                                            options=request.options()))
    launched = command[command.index("slm_swap.train") + 1:]
    # What `slm-swap train` was asked is exactly what the launched process parses.
    entry = parse_request(TrainEntryRequest, entry_parser().parse_args(launched))
    assert TrainOptions(**entry.model_dump(include=set(TrainOptions.model_fields))) == request.options()
    assert request.options() != TrainOptions()
