"""Detectors of credentials: API keys by their format, random-looking tokens, and passwords
or codes written after a keyword of `keywords.SECRET_KEYWORDS`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from training.pii.addresses import IBAN_COMPACT_RE, iban_ok
from training.pii.keywords import KEYWORD_RE

# API keys by their fixed prefix and what follows it; the prefilter looks for the prefixes.
KEY_FORMATS = (
    ("sk-", r"(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic
    ("gh[pousr]_", r"[A-Za-z0-9]{36,}"),  # GitHub
    ("github_pat_", r"[A-Za-z0-9_]{22,}"),  # GitHub, fine-grained
    ("(?:AKIA|ASIA)", r"[0-9A-Z]{16}"),  # AWS access key id
    ("xox", r"[abeprs]-[A-Za-z0-9-]{10,}"),  # Slack
    ("AIza", r"[0-9A-Za-z_-]{35}"),  # Google API key
    ("eyJ", r"[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWT
    ("hf_", r"[A-Za-z0-9]{30,}"),  # Hugging Face
)
_KEY_RE = re.compile(
    r"(?<![\w-])(?:"
    r"\d{8,10}:[A-Za-z0-9_-]{35}"  # Telegram bot token (BotFather): digits pass the prefilter
    + "".join(f"|{prefix}{rest}" for prefix, rest in KEY_FORMATS)
    + r")(?![\w-])"
)
_TOKEN_RE = re.compile(r"(?<![\w/+=.@-])[A-Za-z0-9_-]{20,}={0,2}(?![\w/+@-])")
_TOKEN_SEGMENT_RE = re.compile(r"[^_-]+")


def _entropy(token: str) -> float:
    """Shannon entropy of the token's characters, in bits per character."""
    size = len(token)
    frequencies = [token.count(character) / size for character in set(token)]
    return -sum(frequency * math.log2(frequency) for frequency in frequencies)


def _random_looking(token: str, threshold: float) -> bool:
    """Letters and digits mixed within segments, with high entropy; `order_id_20240512` is not."""
    digits = sum(map(str.isdigit, token))
    letters = sum(map(str.isalpha, token))
    if letters < 4 or digits < 2:
        return False
    segments = _TOKEN_SEGMENT_RE.findall(token.rstrip("="))
    mixed = sum(len(s) for s in segments if not (s.isalpha() or s.isdecimal()))
    if 2 * mixed < letters + digits:
        return False
    if IBAN_COMPACT_RE.fullmatch(token) and iban_ok(token):
        return False
    return _entropy(token) > threshold


# What may stand between a keyword and its secret: "пароль от wifi: ...", "code for login ...".
_POSSESSIVE_RE = re.compile(r"\s+(?:من|ما|شما|تو|мой|моя|my)(?=\s)", re.IGNORECASE)
_PREPOSITION_RE = re.compile(
    r"\s+(?:от|для|к|на|for|to|of|on|برای|ل\w+)\s+[^\s:=<]{1,30}", re.IGNORECASE
)
_WORD_RE = re.compile(r"\s+[^\s:=<\d]{1,20}")
_SEPARATOR_TOKEN_RE = re.compile(
    r"(?P<sep>\s*[:=：]\s*|\s*[-—–]{1,2}\s*|\s+(?:is|это|هو|هي)\s+|\s+)(?P<token>[^\s<]+)",
    re.IGNORECASE,
)
_TOKEN_TRAILING = ".,;:)]}»\"'…،؟"
_TIME_OR_DATE_RE = re.compile(r"\d{1,2}[:.]\d{2}(?:[:.]\d{2,4})?")
_PASSWORD_SYMBOLS = frozenset("!@#$%^&*_+=~")


def _password_looking(token: str) -> bool:
    """Reads like a password: letters with digits, a PIN, or letters with symbols or odd case."""
    has_digit = any(character.isdecimal() for character in token)
    has_letter = any(character.isalpha() for character in token)
    if has_digit:
        return len(token) >= 4
    if has_letter and len(token) >= 6:
        odd_case = any(character.isupper() for character in token[1:])
        # A trailing "!" ends a sentence ("the password is right!"); inside a word it is a symbol.
        return odd_case or not _PASSWORD_SYMBOLS.isdisjoint(token.rstrip("!"))
    return False


def _code_looking(token: str) -> bool:
    """A one-time code or PIN: 4-16 letters and digits with at least one digit."""
    if not 4 <= len(token) <= 16 or _TIME_OR_DATE_RE.fullmatch(token):
        return False
    plain = token.replace("-", "")
    return plain.isalnum() and any(character.isdecimal() for character in plain)


def _secret_after(text: str, position: int, strong: bool) -> tuple[int, int] | None:
    """The secret after a keyword ending at `position`, trying the readings from plainest."""
    fillers = [None, _POSSESSIVE_RE, _PREPOSITION_RE] + ([] if strong else [_WORD_RE])
    for filler in fillers:
        start = position
        if filler is not None:
            found = filler.match(text, position)
            if not found:
                continue
            start = found.end()
        match = _SEPARATOR_TOKEN_RE.match(text, start)
        if not match:
            continue
        token = match.group("token").rstrip(_TOKEN_TRAILING)
        explicit = match.group("sep").strip() in (":", "=", "：")
        if not strong:
            accepted = _code_looking(token)
        else:
            accepted = (explicit and len(token) >= 3) or _password_looking(token)
        if accepted:
            return match.start("token"), match.start("token") + len(token)
    return None


def secret_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """Passwords and codes written after a secret keyword ("пароль: ...", "pin 4711")."""
    for keyword in KEYWORD_RE.finditer(text):
        found = _secret_after(text, keyword.end(), strong=keyword.group("strong") is not None)
        if found:
            yield found[0], found[1], "SECRET"


def key_spans(
    text: str, urls: list[tuple[int, int, bool]], entropy_threshold: float
) -> Iterator[tuple[int, int, str]]:
    """API keys, and random-looking tokens outside URLs (`entropy_threshold` bits a character)."""
    for match in _KEY_RE.finditer(text):
        yield match.start(), match.end(), "KEY"
    for match in _TOKEN_RE.finditer(text):
        start, end = match.span()
        in_url = any(url_start <= start and end <= url_end for url_start, url_end, _ in urls)
        if not in_url and _random_looking(match.group(), entropy_threshold):
            yield start, end, "KEY"
