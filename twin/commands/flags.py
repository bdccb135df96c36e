"""Command-line flags derived from a stage's options dataclass, so no default is written twice.

A field's `metadata` (`training.options.option`) holds its help, its flag where that is not
`--field-name`, and the `Settings` field that gives its default where a `TWIN_*` variable
does. `with_options` turns a command taking an options object into one typer sees with a
flag per field; `flag_problems` names the flags in what the options' `problems()` found.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer

from twin.durations import format_duration, parse_duration

Options = TypeVar("Options")


class OptionsError(ValueError):
    """Flags that cannot be read, or options that are not valid: one line naming the flags."""


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
    """Give a command one flag per field of `options_type` in place of its `parameter`.

    The command must take `ctx` (the typer context): a flag left at its default takes the
    `Settings` value its field names; flags that cannot be read, and the options' own
    `problems()`, are reported together as one `OptionsError` naming the flags.
    """
    hints = typing.get_type_hints(options_type)
    items = dataclasses.fields(options_type)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        flags = [_parameter(item, hints[item.name]) for item in items]
        at = [p.name for p in own].index(parameter)

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            ctx = values["ctx"]
            picked, unread, errors = {}, set(), []
            for item in items:
                value = values.pop(item.name)
                setting = item.metadata.get("setting")
                if setting:
                    default = getattr(ctx.find_root().obj.settings, setting)
                    if _left_at_default(ctx, item.name):
                        picked[item.name] = default
                        continue
                else:
                    default = item.default
                try:
                    picked[item.name] = _from_flag(hints[item.name], value)
                except ValueError as error:  # reported with the rest, the default stands in
                    errors.append(f"{flag_of(options_type, item.name)} {error}")
                    picked[item.name], unread = default, unread | {item.name}
            options = options_type(**picked)
            problems = [p for p in options.problems() if p[0] not in unread]  # type: ignore[attr-defined]
            errors += flag_problems(options_type, problems)
            if errors:
                raise OptionsError("; ".join(errors))
            return command(**values, **{parameter: options})

        parameters = [*own[:at], *flags, *own[at + 1 :]]
        signature = inspect.signature(command).replace(parameters=parameters)
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return run

    return decorate


def _left_at_default(ctx: Any, name: str) -> bool:
    """The flag was not given (typer vendors its own click, so the enum is compared by name)."""
    source = ctx.get_parameter_source(name)
    return source is None or source.name == "DEFAULT"


def _parameter(item: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    declared = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
    help_text = item.metadata.get("help", "")
    flag_type = _flag_type(hint)
    default: Any = item.default
    if item.metadata.get("setting") or default is dataclasses.MISSING:
        default = None  # the Settings value (or a missing required field) stands in
        flag_type = flag_type | None
    elif isinstance(default, timedelta):
        default = format_duration(default)
    option = typer.Option(declared, help=help_text, show_default=default is not None)
    return inspect.Parameter(
        item.name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=default,
        annotation=Annotated[flag_type, option],
    )


def _flag_type(hint: Any) -> Any:
    """What typer parses: comma lists and durations as text, a fixed set of words as text."""
    members = _members(hint)
    optional = type(None) in members
    if any(typing.get_origin(m) is tuple for m in members) or timedelta in members:
        return str | None if optional else str
    if any(typing.get_origin(m) is typing.Literal for m in members):
        return str | None if optional else str
    return hint


def _from_flag(hint: Any, value: Any) -> Any:
    members = _members(hint)
    if value is None:
        return None
    if any(typing.get_origin(m) is tuple for m in members):
        return comma_list(value)
    if timedelta in members and isinstance(value, str):
        return parse_duration(value)
    return value


def _members(hint: Any) -> tuple[Any, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)
