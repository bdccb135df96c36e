"""Command-line flags derived from a stage's options dataclass, so no default is written twice.

A field's `metadata` holds its help (and its flag, where that is not `--field-name`); the
dataclass default is the flag's default. `with_options` turns a command taking an options
object into one typer sees with a flag per field, and `flag_problems` names the flags in what
the options' `problems()` found.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

Options = TypeVar("Options")


def flag_of(options_type: type, name: str) -> str:
    """The flag a user types for field `name` (the first spelling of a --yes/--no pair)."""
    for item in dataclasses.fields(options_type):
        if item.name == name:
            declared = item.metadata.get("flag")
            return declared.split("/")[0] if declared else "--" + name.replace("_", "-")
    return name


def flag_problems(options_type: type, problems: list[tuple[str, str]]) -> list[str]:
    """(field, message) problems as lines naming the flag to change."""
    return [f"{flag_of(options_type, name)} {message}" for name, message in problems]


def comma_list(value: str | None) -> tuple[str, ...] | None:
    """`a, b,c` -> ("a", "b", "c"); an empty entry is kept, for the options to reject."""
    return None if value is None else tuple(part.strip() for part in value.split(","))


def with_options(
    options_type: type[Options], *, parameter: str = "options"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one flag per field of `options_type` in place of its `parameter`."""
    hints = typing.get_type_hints(options_type)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        names = [item.name for item in dataclasses.fields(options_type)]
        fields = [_parameter(item, hints[item.name]) for item in dataclasses.fields(options_type)]
        at = [p.name for p in own].index(parameter)

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            picked = {name: _from_flag(hints[name], values.pop(name)) for name in names}
            return command(**values, **{parameter: options_type(**picked)})

        parameters = [*own[:at], *fields, *own[at + 1 :]]
        signature = inspect.signature(command).replace(parameters=parameters)
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return run

    return decorate


def _parameter(item: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    declared = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
    option = typer.Option(declared, help=item.metadata.get("help", ""))
    default = item.default if item.default is not dataclasses.MISSING else ...
    return inspect.Parameter(
        item.name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=default,
        annotation=Annotated[_flag_type(hint), option],
    )


def _flag_type(hint: Any) -> Any:
    """What typer parses: a tuple of strings is typed as one comma-separated string."""
    if _is_string_tuple(hint):
        return str | None
    return hint


def _from_flag(hint: Any, value: Any) -> Any:
    return comma_list(value) if _is_string_tuple(hint) else value


def _is_string_tuple(hint: Any) -> bool:
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return any(typing.get_origin(member) is tuple for member in members)
