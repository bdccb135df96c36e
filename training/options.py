"""`option()`: an options dataclass field that carries its command-line help.

The stages' options (`TrainOptions`, `EvalOptions`, ...) declare each field once, with its
default and help; `twin/commands/flags.py` builds the command's flags from them.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, flag: str | None = None) -> Any:
    """A field with its help (and its flag, where that is not `--field-name`)."""
    metadata = {"help": help} if flag is None else {"help": help, "flag": flag}
    return field(default=default, metadata=metadata)
