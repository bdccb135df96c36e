"""Logging, configured once by the CLI: rich on stderr, chatty libraries quiet, secrets redacted."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

from rich.console import Console
from rich.logging import RichHandler

from bot.log_filter import SecretFilter

QUIET_LIBRARIES = (
    "alembic",
    "httpx",
    "httpcore",
    "telethon",
    "telegram",
    "urllib3",
    "filelock",
    "datasets",
)
# Libraries whose warnings are noise to a user (bitsandbytes on a CPU without `kernels`).
SILENT_LIBRARIES = ("bitsandbytes",)


def setup_logging(verbose: bool = False, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger; call once from the CLI entry point."""
    handler = RichHandler(
        console=Console(stderr=True), show_path=verbose, rich_tracebacks=verbose, markup=False
    )
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    for name in SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        # peft reads transformers' deprecated alias on every adapter load: not the user's concern.
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
