"""Logging, configured once by the CLI: rich on stderr, chatty libraries quiet, secrets redacted."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

from rich.console import Console
from rich.logging import RichHandler

from storage.database import mask_url_credentials

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
REDACTED = "[secret]"


class SecretFilter(logging.Filter):
    """Replaces every known secret value in a record's final text, whatever logged it, and
    masks the password of any URL in it (`user:password@`, `?password=`), known or not."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = self._redact(record.getMessage())
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = message, None
        if record.exc_text:
            record.exc_text, record.exc_info = self._redact(record.exc_text), None
        return True

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return mask_url_credentials(text)


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
