"""The one log filter that keeps secrets out of every log line and traceback.

`twin` installs it on the root handler with every secret of the settings; the bot also puts it
on the loggers of the libraries that log request URLs (the token is in every Bot API URL), so
a bot started without the CLI's logging is covered as well.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from storage.database import mask_url_credentials

REDACTED = "[secret]"


class SecretFilter(logging.Filter):
    """Replaces every known secret value in a record's final text, whatever logged it, and
    masks the password of any URL in it (`user:password@`, `?password=`), known or not."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record only where it holds a secret (a clean record keeps its exc_info)."""
        message = record.getMessage()
        if (redacted := self._redact(message)) != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if (redacted := self._redact(text)) != text:
                record.exc_text, record.exc_info = redacted, None
        elif record.exc_text and (redacted := self._redact(record.exc_text)) != record.exc_text:
            record.exc_text, record.exc_info = redacted, None
        return True

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return mask_url_credentials(text)
