"""Find and redact personal data and secrets in chat text with typed, per-chat placeholders.

The dataset builder scrubs every message before training and the bot scrubs every reply
before sending it, so both see the same `<EMAIL_1>`-style placeholders. Pure Python (`re`
and `ipaddress`). `keywords` holds the one table of secret-introducing words that the
detector, the prefilter and the bot's streaming hold-back all read; `numbers`, `addresses`
and `credentials` are the detectors; `scrubber` resolves their hits into placeholders.
"""

from __future__ import annotations

from training.pii.keywords import ANY_KEYWORD_RE, SECRET_KEYWORDS, SecretKeyword
from training.pii.scrubber import (
    ALL_KINDS,
    EXTRA_KINDS,
    PLACEHOLDER_RE,
    PiiOptions,
    PiiPatternError,
    Scrubber,
    Span,
    load_extra,
)

__all__ = [
    "ALL_KINDS",
    "ANY_KEYWORD_RE",
    "EXTRA_KINDS",
    "PLACEHOLDER_RE",
    "SECRET_KEYWORDS",
    "PiiOptions",
    "PiiPatternError",
    "Scrubber",
    "SecretKeyword",
    "Span",
    "load_extra",
]
