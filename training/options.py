"""`option()`: an options dataclass field that carries its command-line help.

The stages' options (`TrainOptions`, `EvalOptions`, `DatasetOptions`, ...) declare each field
once, with its default and help; `twin/commands/flags.py` builds the command's flags from them.
`setting` names the `Settings` field (a `TWIN_*` variable) that gives the default instead.
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
) -> Any:
    """A field with its help, its flag (where not `--field-name`) and its `Settings` default."""
    metadata: dict[str, str] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if setting is not None:
        metadata["setting"] = setting
    return field(default=default, metadata=metadata)
