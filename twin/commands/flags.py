"""Command-line flags derived from a stage's options dataclass, so no default is written twice.

A field declared with `training.options.option` is a flag: its `metadata` holds its help,
its flag where that is not `--field-name` (a switch where it has a `given` value), and the
`Settings` field that gives its default where a `TWIN_*` variable does. A field declared
with `from_setting` only a setting gives (`from_settings` reads them). `with_options` turns a
command taking an options object into one typer sees with a flag per field; `with_flags`
hands a command that builds its options itself the flags' values. `flag_of` names the flag
or `TWIN_*` variable in what the options' `problems()` found.
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
from pydantic import SecretStr

from twin.durations import format_duration, parse_duration
from twin.settings import ENV_PREFIX

Options = TypeVar("Options")


class OptionsError(ValueError):
    """Flags that cannot be read, or options that are not valid: one line naming the flags."""


def flag_of(options_type: type, name: str) -> str:
    """What a user types to change field `name`: its flag (the first spelling of a --yes/--no
    pair), or the `TWIN_*` variable of a field that only a setting gives."""
    for item in dataclasses.fields(options_type):
        if item.name != name:
            continue
        if _is_flag(item):
            declared = item.metadata.get("flag")
            return declared.split("/")[0] if declared else "--" + name.replace("_", "-")
        if setting := item.metadata.get("setting"):
            return ENV_PREFIX + setting.upper()
    return name


def flag_problems(
    options_type: type, problems: list[tuple[str, str]], same_as: dict[str, str] | None = None
) -> list[str]:
    """(field, message) problems as lines naming the flag or `TWIN_*` setting to change;
    `same_as` names a field the command sets from another field's flag."""
    same_as = same_as or {}
    return [
        f"{same_as.get(name) or flag_of(options_type, name)} {message}"
        for name, message in problems
    ]


def from_settings(options_type: type, settings: Any) -> dict[str, Any]:
    """The fields that only a `TWIN_*` setting gives (`from_setting`), read from `settings`:
    secrets as their text; a setting left empty keeps the field's default."""
    values = {}
    for item in dataclasses.fields(options_type):
        setting = item.metadata.get("setting")
        if setting and not _is_flag(item):
            value = getattr(settings, setting)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                values[item.name] = value
    return values


def comma_list(value: str | None) -> tuple[str, ...] | None:
    """`a, b,c` -> ("a", "b", "c"); an empty entry is kept, for the options to reject."""
    return None if value is None else tuple(part.strip() for part in value.split(","))


@dataclasses.dataclass(frozen=True)
class Flags:
    """What a command's flags say: the value of each flagged field, per options type."""

    values: dict[type, dict[str, Any]]
    #: Per options type, the fields whose flag could not be read (their default stands in).
    unread: dict[type, frozenset[str]]
    #: Those flags' errors, each naming the flag.
    errors: tuple[str, ...]

    def of(self, options_type: type) -> dict[str, Any]:
        """Field -> value of every flag `options_type` declares."""
        return dict(self.values[options_type])

    def problems(self, *options: Any, same_as: dict[str, str] | None = None) -> list[str]:
        """The flags that cannot be read, then the `problems()` of each of `options`, each
        naming the flag or `TWIN_*` setting to change, once.

        `same_as` maps a field the command sets from another's flag to that flag
        (`twin bot --workers` sets the backend's `max_batch`).
        """
        found = list(self.errors)
        for each in options:
            skipped = self.unread.get(type(each), frozenset())
            kept = [problem for problem in each.problems() if problem[0] not in skipped]
            found += flag_problems(type(each), kept, same_as)
        return list(dict.fromkeys(found))  # a field set from another's flag says it again


def with_options(
    options_type: type[Options], *, parameter: str = "options"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one flag per `option()` field of `options_type` in place of its
    `parameter`, which then receives the options built from them.

    The command must take `ctx` (the typer context): a flag left at its default takes the
    `Settings` value its field names; flags that cannot be read, and the options' own
    `problems()`, are reported together as one `OptionsError` naming the flags.
    """

    def build(flags: Flags) -> Options:
        options = options_type(**flags.of(options_type))
        if problems := flags.problems(options):
            raise OptionsError("; ".join(problems))
        return options

    return _flagged((options_type,), parameter, build)


def with_flags(
    *options_types: type, parameter: str = "flags"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one flag per `option()` field of each of `options_types` in place of
    its `parameter`, which then receives them as `Flags`: for a command that builds the
    options itself, from the flags and the settings (`twin bot`, `twin chat`)."""
    return _flagged(options_types, parameter, lambda flags: flags)


def _flagged(
    options_types: tuple[type, ...], parameter: str, finish: Callable[[Flags], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorator: the flags of `options_types` replace `parameter`, which gets
    `finish(flags)` once they are read."""
    flagged = [
        (options_type, item, hint)
        for options_type in options_types
        for hints in [typing.get_type_hints(options_type)]
        for item in dataclasses.fields(options_type)
        if _is_flag(item)
        for hint in [hints[item.name]]
    ]
    names = [item.name for _, item, _ in flagged]
    if len(set(names)) < len(names):
        raise TypeError(f"two options share a flagged field name: {names}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        flags = [_parameter(item, hint) for _, item, hint in flagged]
        at = [p.name for p in own].index(parameter)

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            read = _read(flagged, values, values["ctx"])
            return command(**values, **{parameter: finish(read)})

        parameters = [*own[:at], *flags, *own[at + 1 :]]
        signature = inspect.signature(command).replace(parameters=parameters)
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return run

    return decorate


def _read(
    flagged: list[tuple[type, dataclasses.Field[Any], Any]], values: dict[str, Any], ctx: Any
) -> Flags:
    """Take the flags' values out of `values`: read, or the default with the error named."""
    picked: dict[type, dict[str, Any]] = {}
    unread: dict[type, frozenset[str]] = {}
    errors = []
    for options_type, item, hint in flagged:
        value = values.pop(item.name)
        fields = picked.setdefault(options_type, {})
        setting = item.metadata.get("setting")
        if setting:
            default = getattr(ctx.find_root().obj.settings, setting)
            if _left_at_default(ctx, item.name):
                fields[item.name] = default
                continue
        else:
            default = item.default
        try:
            fields[item.name] = _from_flag(item, hint, value)
        except ValueError as error:  # reported with the rest, the default stands in
            errors.append(f"{flag_of(options_type, item.name)} {error}")
            fields[item.name] = default
            unread[options_type] = unread.get(options_type, frozenset()) | {item.name}
    return Flags(picked, unread, tuple(errors))


def _is_flag(item: dataclasses.Field[Any]) -> bool:
    """Declared with `option()`: a field the command line changes."""
    return "help" in item.metadata


def _left_at_default(ctx: Any, name: str) -> bool:
    """The flag was not given (typer vendors its own click, so the enum is compared by name)."""
    source = ctx.get_parameter_source(name)
    return source is None or source.name == "DEFAULT"


def _parameter(item: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    declared = item.metadata.get("flag") or "--" + item.name.replace("_", "-")
    help_text = item.metadata.get("help", "")
    flag_type = _flag_type(hint)
    default: Any = item.default
    if "given" in item.metadata:
        flag_type, default = bool, False  # a switch: typed, the field takes its `given` value
    elif item.metadata.get("setting") or default is dataclasses.MISSING:
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


def _from_flag(item: dataclasses.Field[Any], hint: Any, value: Any) -> Any:
    if "given" in item.metadata:
        return item.metadata["given"] if value else item.default
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
