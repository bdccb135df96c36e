"""`option()`: an options dataclass field that carries its command-line help.

The stages' options (`TrainOptions`, `EvalOptions`, `DatasetOptions`, `BotOptions`, ...)
declare each field once, with its default and help; `twin/commands/flags.py` builds the
command's flags from them. `setting` names the `Settings` field (a `TWIN_*` variable) that
gives the default instead; `from_setting()` declares a field that only a setting gives.
"""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def option(
    default: Any = MISSING,
    help: str = "",
    flag: str | None = None,
    *,
    setting: str | None = None,
    given: Any = MISSING,
) -> Any:
    """A field with its help, its flag (where not `--field-name`) and its `Settings` default.

    With `given`, the flag is a switch: typed, it sets the field to `given` (`--silent`
    sets `refusal` to None); left out, the field keeps `default`.
    """
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if setting is not None:
        metadata["setting"] = setting
    if given is not MISSING:
        metadata["given"] = given
    return field(default=default, metadata=metadata)


def from_setting(setting: str, default: Any = MISSING, *, repr: bool = True) -> Any:
    """A field no flag changes: the `Settings` field `setting` (a `TWIN_*` variable) gives it."""
    return field(default=default, repr=repr, metadata={"setting": setting})
