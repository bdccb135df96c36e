"""Streaming a reply without ever showing what the PII scrubber would redact.

Plain words go out as they are generated; from the first word that could start a phone
number, card, address, key or password on, the rest waits for the end of the reply and goes
out scrubbed, so the streamed text and the stored text are the same scrubbed reply.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Hashable

from training.pii import ANY_KEYWORD_RE as _KEYWORD_RE
from training.pii import Scrubber

logger = logging.getLogger(__name__)

_PLAIN_PUNCTUATION = frozenset(".,!?;'\"()-…—–«»¿¡“”‘’")


def _plain_word(word: str) -> bool:
    """Letters, plain punctuation and emoji only, and no secret-introducing keyword."""
    for character in word:
        if character.isalpha() or character in _PLAIN_PUNCTUATION:
            continue
        if unicodedata.category(character) in ("So", "Sk", "Mn"):  # emoji, modifiers
            continue
        return False
    return not _KEYWORD_RE.search(word)


class SafeScrubber:
    """One scrubber shared by threads: the lock keeps its per-chat numbering consistent."""

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._lock = threading.Lock()

    def scrub(self, text: str, scope: Hashable) -> str:
        with self._lock:
            return self._scrubber.scrub(text, scope=scope)

    def finds_anything(self, text: str) -> bool:
        with self._lock:
            return bool(self._scrubber.find(text))

    def reset_scope(self, scope: Hashable) -> None:
        with self._lock:
            self._scrubber.reset_scope(scope)


class ScrubbedStream:
    """Feed it generated pieces; it returns what is safe to show now, then the scrubbed rest."""

    def __init__(self, scrubber: SafeScrubber, scope: Hashable) -> None:
        self.scrubber = scrubber
        self.scope = scope
        self.raw = ""
        self.shown = ""
        self.text = ""
        self._holding = False

    def feed(self, piece: str) -> str:
        """The next safe text: whole plain words, up to the last whitespace seen."""
        self.raw += piece
        if self._holding:
            return ""
        tail = self.raw[len(self.shown) :]
        words = re.split(r"(\s+)", tail)[:-1]  # the last word may still be growing
        safe = []
        for word in words:
            if word and not word.isspace() and not _plain_word(word):
                self._holding = True
                break
            safe.append(word)
        candidate = "".join(safe)
        if not candidate:
            return ""
        if self.scrubber.finds_anything(self.shown + candidate):
            self._holding = True
            return ""
        self.shown += candidate
        return candidate

    def finish(self) -> str:
        """The rest of the reply, scrubbed; `text` then holds the whole scrubbed reply."""
        self.text = self.scrubber.scrub(self.raw, self.scope)
        if not self.text.startswith(self.shown):
            # Only a multi-word custom name can start inside text already shown.
            logger.warning("a redacted item began in text already streamed")
        return self.text[len(self.shown) :]
