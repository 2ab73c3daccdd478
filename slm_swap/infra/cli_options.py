"""Requests as typed models, their command-line flags generated from them, and the model back from
the parsed flags: the model is the one declaration of a command's options (`slm_swap.app.requests`,
`slm_swap.train.options`).

`option(default, help, ...)` is a pydantic `Field` whose description is the flag's help text;
`flag=` names a flag that differs from the field (`timeout_s` is `--timeout`), `repeat=True` makes a
list flag repeatable (`--category A --category B`), `cli=False` keeps a field off the command line.

    add_options(parser, EvalRequest)                   # --track {structured,toolcall,agent} ... --timeout TIMEOUT_S
    request = parse_request(EvalRequest, args, "eval")   # validated; a bad value is one SlmSwapError line

A field `name` becomes `--name` (underscores as dashes) unless its `flag` says otherwise; its type
gives the argparse type, `Literal` its choices, `bool` a switch (`--x/--no-x` when its default is
None), `list` `nargs="+"` or, with `repeat`, a repeatable flag; a nested model's fields are flags of
their own. Flags the user did not give stay out of the namespace, so pydantic fills every default.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from slm_swap.infra.errors import SlmSwapError


class Request(BaseModel):
    """A command's options: unknown ones are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


def option(default: Any = ..., help: str = "", *, flag: str | None = None, repeat: bool = False,
           metavar: str | None = None, cli: bool = True, **constraints: Any) -> Any:
    """A field with its --help text and how it appears on the command line."""
    extra = {key: value for key, value in (("flag", flag), ("repeat", repeat or None), ("metavar", metavar),
                                           ("cli", None if cli else False)) if value is not None}
    if isinstance(default, (list, BaseModel)):  # a fresh copy per instance
        factory = (lambda: list(default)) if isinstance(default, list) else default.model_copy
        return Field(default_factory=factory, description=help, json_schema_extra=extra or None, **constraints)
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_optional(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def flag_of(name: str, field: FieldInfo) -> str:
    return _extra(field).get("flag") or "--" + name.replace("_", "-")


def _default_text(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default in (None, False, [], PydanticUndefined, "") or isinstance(default, BaseModel):
        return ""
    shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
    return f" (default: {shown})"


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of `model` (nested models flattened)."""
    # Required fields first, as --help reads best; then the rest in declaration order.
    for name, field in sorted(model.model_fields.items(), key=lambda item: not item[1].is_required()):
        if _extra(field).get("cli") is False:
            continue
        if nested := _nested_model(field.annotation):
            add_options(parser, nested)
            continue
        annotation = _strip_optional(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                                  "help": ((field.description or "") + _default_text(field)).strip().replace("%", "%%")}
        if metavar := _extra(field).get("metavar"):
            kwargs["metavar"] = metavar
        item = annotation
        if typing.get_origin(annotation) is list:
            item = typing.get_args(annotation)[0]
            if _extra(field).get("repeat"):
                kwargs["action"] = "append"
            else:
                kwargs["nargs"] = "+"
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if field.default is None else "store_true"
        elif typing.get_origin(item) is Literal:
            kwargs["choices"] = typing.get_args(item)
        else:
            kwargs["type"] = {int: int, float: float}.get(item, str)
            kwargs.setdefault("metavar", flag_of(name, field).lstrip("-").upper().replace("-", "_"))
        if field.is_required():
            kwargs["required"] = True
        parser.add_argument(flag_of(name, field), **kwargs)


def _values(model: type[BaseModel], namespace: argparse.Namespace) -> dict[str, Any]:
    given = vars(namespace)
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if nested := _nested_model(field.annotation):
            if inner := _values(nested, namespace):
                values[name] = inner
        elif name in given:
            values[name] = given[name]
    return values


def _where(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The flag a validation error's location names, else the dotted field path."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        if nested := _nested_model(field.annotation):
            model = nested
            continue
        return flag_of(part, field)
    return ".".join(map(str, loc)) or "options"


def parse_request(model: type[BaseModel], namespace: argparse.Namespace, command: str = "") -> Any:
    """The command's request from its parsed flags; a value the model refuses is one line naming its flag."""
    try:
        return model.model_validate(_values(model, namespace))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = f"{command}: " if command else ""
        raise SlmSwapError(f"{where}{_where(model, error['loc'])}: {error['msg'].removeprefix('Value error, ')}") from None
