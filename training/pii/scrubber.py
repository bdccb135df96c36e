"""The scrubber: every detector's hits resolved into typed `<KIND_n>` placeholders, numbered
per scope (a chat), behind a prefilter that lets clean short messages through almost for free."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

from training.pii.addresses import email_spans, iban_spans, ip_spans, secret_urls, url_spans
from training.pii.credentials import KEY_FORMATS, key_spans, secret_spans
from training.pii.keywords import KEYWORD_HINT_RE, keyword_stems, spelled_three_ways
from training.pii.numbers import ascii_digits, number_spans, phone_key

ALL_KINDS: frozenset[str] = frozenset(
    {"EMAIL", "PHONE", "CARD", "IBAN", "IP", "URL", "SECRET", "KEY"}
)
EXTRA_KINDS: frozenset[str] = frozenset({"NAME", "CUSTOM"})

# Overlapping hits: the lower rank wins, then the longer match, then the earlier one.
# URL ranks first so a secret-bearing URL goes whole instead of being cut around a key in it;
# IBAN before CARD because a checksummed IBAN can hold a Luhn-valid run of digits.
_RANK = {
    kind: rank
    for rank, kind in enumerate(
        ["PLACEHOLDER", "URL", "KEY", "SECRET", "EMAIL", "IBAN", "CARD", "PHONE", "IP"]
        + ["CUSTOM", "NAME"]
    )
}

_MAX_PASSES = 4
PLACEHOLDER_RE = re.compile(r"<(?:EMAIL|PHONE|CARD|IBAN|IP|URL|SECRET|KEY|NAME|CUSTOM)_\d+>")

# The prefilter: any hit needs a digit, '@', ':' or '=', or else a password keyword or a key
# prefix (after a weak keyword only a code with a digit counts).
_TRIGGER_CHARACTERS_RE = re.compile(r"[\d@:=]")
_TRIGGER_WORDS_RE = re.compile(
    spelled_three_ways(keyword_stems(strong_only=True))
    + "".join(f"|{prefix}" for prefix, _ in KEY_FORMATS)
)
_LONG_TOKEN_HINT_RE = re.compile(r"[A-Za-z0-9_-]{15}")


def _may_contain_pii(text: str) -> bool:
    return bool(_TRIGGER_CHARACTERS_RE.search(text) or _TRIGGER_WORDS_RE.search(text))


class PiiPatternError(ValueError):
    """A user-supplied pattern (extra file or options) is not a valid regular expression."""


@dataclass(frozen=True)
class PiiOptions:
    """What the scrubber looks for; `entropy_threshold` is in bits per character.

    Random base62 tokens of 20+ characters score about 4.0-4.3 bits and hex digests about
    3.6-3.9, so 3.5 takes both while letting most repetitive strings through.
    """

    enabled_kinds: frozenset[str] = ALL_KINDS
    extra_patterns: tuple[str, ...] = ()
    extra_words: tuple[str, ...] = ()
    entropy_threshold: float = 3.5

    def __post_init__(self) -> None:
        unknown = set(self.enabled_kinds) - ALL_KINDS
        if unknown:
            raise ValueError(
                f"unknown PII kinds {sorted(unknown)}; choose from {sorted(ALL_KINDS)}"
            )


@dataclass(frozen=True)
class Span:
    """One detected item: its kind, where it sits in the text and the text it covers."""

    kind: str
    start: int
    end: int
    value: str


def load_extra(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Read a user's extra file into (patterns, words): `re:` lines are regexes, `#` comments.

    Raises PiiPatternError naming the file and line of a regex that does not compile.
    """
    patterns: list[str] = []
    words: list[str] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("re:"):
            pattern = line[3:].strip()
            _compile_extra(pattern, where=f"{path}:{number}")
            patterns.append(pattern)
        else:
            words.append(line)
    return tuple(patterns), tuple(words)


def _compile_extra(pattern: str, where: str) -> re.Pattern[str]:
    if not pattern:
        raise PiiPatternError(f"{where}: empty regular expression after 're:'")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise PiiPatternError(f"{where}: bad regular expression {pattern!r}: {error}") from None


def _words_regex(words: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive, whole-word alternation of the user's names (longest first)."""
    cleaned = sorted({word.strip() for word in words if word.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, word.split())) for word in cleaned)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


# ---- the scrubber -------------------------------------------------------------------------


def _normalize(kind: str, value: str) -> str:
    """The form all mentions of one item share, so they get one placeholder."""
    if kind in ("EMAIL", "NAME"):
        return " ".join(value.casefold().split())
    if kind == "PHONE":
        return phone_key(value)
    if kind == "CARD":
        return ascii_digits(value)
    if kind == "IBAN":
        return "".join(value.split()).upper()
    if kind == "IP":
        return ipaddress.ip_address(value).compressed
    return value


_QUIET_NEIGHBOURS = frozenset(" \t\n\u00a0,;!?)(»«\"'،؟")


def _touches_text(text: str, spans: list[Span]) -> bool:
    """Whether a hit is glued to text a detector might read differently beside a placeholder."""
    for span in spans:
        before = text[span.start - 1] if span.start else " "
        after = text[span.end] if span.end < len(text) else " "
        if before not in _QUIET_NEIGHBOURS or after not in _QUIET_NEIGHBOURS:
            return True
    return False


def _resolve(candidates: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Keep non-overlapping hits: placeholders first, then by kind rank, length, position."""
    ordered = sorted(candidates, key=lambda hit: (_RANK[hit[2]], hit[0] - hit[1], hit[0]))
    chosen: list[tuple[int, int, str]] = []
    for start, end, kind in ordered:
        if all(end <= other_start or other_end <= start for other_start, other_end, _ in chosen):
            chosen.append((start, end, kind))
    chosen.sort()
    return chosen


class Scrubber:
    """Replaces PII with `<KIND_n>` placeholders numbered per scope (a chat).

    Compiles once; keeps per-scope numbering and counts, so one scrubber serves one thread.
    """

    def __init__(self, options: PiiOptions = PiiOptions()) -> None:
        self.options = options
        self._kinds = options.enabled_kinds
        self._custom = tuple(
            _compile_extra(pattern, where=f"extra pattern #{index}")
            for index, pattern in enumerate(options.extra_patterns, start=1)
        )
        self._words = _words_regex(options.extra_words)
        self._check_every_text = bool(self._custom or self._words)
        self._placeholders: dict[Hashable, dict[tuple[str, str], str]] = {}
        self._numbers: dict[Hashable, Counter[str]] = {}
        self._counts: Counter[str] = Counter()

    def scrub(self, text: str, scope: Hashable = None) -> str:
        """`text` with every hit replaced; one value keeps one placeholder within a scope."""
        if "<" in text:
            self._reserve_numbers(text, scope)
        # Replacing changes what stands beside a hit: the rest of a candidate that lost an
        # overlap ("000::a@b.c") or a word glued to a number can match next to a placeholder.
        # Scrubbing until nothing more is found keeps a second scrub a no-op.
        for _ in range(_MAX_PASSES):
            candidates = self._candidates_after_prefilter(text)
            if not candidates:
                break
            chosen = _resolve(candidates)
            spans = [Span(kind, a, b, text[a:b]) for a, b, kind in chosen if kind != "PLACEHOLDER"]
            if not spans:
                break
            rescan = self._custom or len(chosen) < len(candidates) or _touches_text(text, spans)
            text = self._replace(text, spans, scope)
            if not rescan:
                break
        return text

    def _replace(self, text: str, spans: list[Span], scope: Hashable) -> str:
        if not spans:
            return text
        pieces: list[str] = []
        position = 0
        for span in spans:
            pieces += (text[position : span.start], self._placeholder(span, scope))
            position = span.end
        pieces.append(text[position:])
        self._counts.update(span.kind for span in spans)
        return "".join(pieces)

    def find(self, text: str) -> list[Span]:
        """The hits in `text`, sorted and non-overlapping after priority resolution."""
        candidates = self._candidates_after_prefilter(text)
        if not candidates:
            return []
        return [
            Span(kind, start, end, text[start:end])
            for start, end, kind in _resolve(candidates)
            if kind != "PLACEHOLDER"
        ]

    def counts(self) -> dict[str, int]:
        """How many items of each kind `scrub` has redacted so far."""
        return dict(self._counts)

    def reset_scope(self, scope: Hashable) -> None:
        """Forget a scope's numbering: its next item of each kind is `_1` again."""
        self._placeholders.pop(scope, None)
        self._numbers.pop(scope, None)

    def _reserve_numbers(self, text: str, scope: Hashable) -> None:
        """Placeholders already in the text keep their numbers; new values get higher ones."""
        for match in PLACEHOLDER_RE.finditer(text):
            kind, number = match.group()[1:-1].rsplit("_", 1)
            numbers = self._numbers.setdefault(scope, Counter())
            numbers[kind] = max(numbers[kind], int(number))

    def _placeholder(self, span: Span, scope: Hashable) -> str:
        known = self._placeholders.setdefault(scope, {})
        key = (span.kind, _normalize(span.kind, span.value))
        if key not in known:
            numbers = self._numbers.setdefault(scope, Counter())
            numbers[span.kind] += 1
            known[key] = f"<{span.kind}_{numbers[span.kind]}>"
        return known[key]

    def _candidates_after_prefilter(self, text: str) -> list[tuple[int, int, str]]:
        if not self._check_every_text and not _may_contain_pii(text):
            return []
        return list(self._candidates(text))

    def _candidates(self, text: str) -> Iterator[tuple[int, int, str]]:
        """Every possible hit of every enabled kind; overlaps are settled by `_resolve`."""
        if "<" in text:
            for match in PLACEHOLDER_RE.finditer(text):
                yield match.start(), match.end(), "PLACEHOLDER"
        kinds = self._kinds
        urls = url_spans(text) if kinds & {"URL", "KEY"} else []
        secrets: list[tuple[int, int, str]] = []
        if "KEY" in kinds and _LONG_TOKEN_HINT_RE.search(text):
            secrets += key_spans(text, urls, self.options.entropy_threshold)
        if "SECRET" in kinds and KEYWORD_HINT_RE.search(text):
            secrets += secret_spans(text)
        if "URL" in kinds:
            yield from secret_urls(urls, secrets)
        yield from secrets
        if "EMAIL" in kinds:
            yield from email_spans(text)
        if "IBAN" in kinds:
            yield from iban_spans(text)
        if kinds & {"CARD", "PHONE"}:
            yield from number_spans(text, kinds)
        if "IP" in kinds:
            yield from ip_spans(text)
        yield from self._extra_spans(text)

    def _extra_spans(self, text: str) -> Iterator[tuple[int, int, str]]:
        for pattern in self._custom:
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    yield match.start(), match.end(), "CUSTOM"
        if self._words:
            for match in self._words.finditer(text):
                yield match.start(), match.end(), "NAME"
