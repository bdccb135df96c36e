"""Find and redact personal data and secrets in chat text with typed, per-chat placeholders.

The dataset builder scrubs every message before training and the bot scrubs every reply
before sending it, so both see the same `<EMAIL_1>`-style placeholders. Pure Python (`re`
and `ipaddress`), with a prefilter that lets clean short messages through almost for free.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
# prefix. Two case-sensitive searches (keywords spelled lower, Capitalized and UPPER) let sre
# skip ahead by first character; one case-insensitive alternation would be several times slower.
_TRIGGER_CHARACTERS_RE = re.compile(r"[\d@:=]")
_TRIGGER_WORDS_RE = re.compile(
    r"pass|Pass|PASS|pwd|Pwd|PWD|парол|Парол|ПАРОЛ|пасс|Пасс|ПАСС|كلمة|کلمه|رمز|گذرواژه|پسورد"
    r"|sk-|gh[pousr]_|github_pat_|AKIA|ASIA|xox|AIza|eyJ|hf_"
)
# Cheap hints that decide which detectors run on a text that passed the prefilter.
_KEYWORD_HINT_RE = re.compile(
    r"pass|Pass|PASS|pwd|Pwd|PWD|pin|Pin|PIN|otp|OTP|code|Code|CODE|парол|Парол|ПАРОЛ|пасс|Пасс"
    r"|ПАСС|пин|Пин|ПИН|код|Код|КОД|كلمة|کلمه|رمز|کد|گذرواژه|پسورد"
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


# ---- numbers: phones and cards ------------------------------------------------------------


def _ascii_digits(text: str) -> str:
    """The decimal digits of `text` as ASCII, so Persian and Arabic-Indic numerals compare."""
    if text.isascii() and text.isdigit():
        return text
    return "".join(str(int(character)) for character in text if character.isdecimal())


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, character in enumerate(reversed(digits)):
        value = int(character)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Digits with the separators phones and cards are written with; possessive, so no backtracking.
_NUMBER_RUN_RE = re.compile(r"\d(?:[\d().\-]|[ \u00a0](?=[\d(]))*+")
_MIN_PHONE_DIGITS = 8  # "+49 30 123456" is among the shortest international numbers
_MIN_NATIONAL_DIGITS = 10  # "050 123 4567", "415-555-2671"
_DIGIT_GROUP_RE = re.compile(r"\d+")
_MAX_GROUPS = 7  # "+7 (912) 345-67-89" has six groups; cards have at most five


@dataclass(slots=True)
class _NumberRun:
    """A run of digit groups as written, e.g. `+7 (912) 345-67-89`, at `offset` in the text."""

    text: str
    offset: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    digits_before: tuple[int, ...]  # digits in groups [0, i), to size a range without a loop

    @classmethod
    def parse(cls, text: str, offset: int = 0) -> _NumberRun:
        found = list(_DIGIT_GROUP_RE.finditer(text))
        digits_before = [0]
        for match in found:
            digits_before.append(digits_before[-1] + match.end() - match.start())
        starts = tuple(match.start() for match in found)
        return cls(text, offset, starts, tuple(m.end() for m in found), tuple(digits_before))

    def lengths(self, first: int, last: int) -> list[int]:
        return [self.ends[index] - self.starts[index] for index in range(first, last)]

    def separators(self, first: int, last: int) -> list[str]:
        return [
            self.text[self.ends[index] : self.starts[index + 1]] for index in range(first, last - 1)
        ]

    def group(self, index: int) -> str:
        return self.text[self.starts[index] : self.ends[index]]


def _subruns(
    run: _NumberRun, accept: Callable[[_NumberRun, int, int], bool], fewest: int, most: int
) -> Iterator[tuple[int, int]]:
    """Left to right, the longest group ranges with `fewest`-`most` digits that `accept` takes."""
    count = len(run.starts)
    first = 0
    while first < count and run.digits_before[count] - run.digits_before[first] >= fewest:
        found = _longest_accepted(run, accept, first, fewest, most)
        if found:
            yield first, found
        first = found or first + 1


def _longest_accepted(
    run: _NumberRun,
    accept: Callable[[_NumberRun, int, int], bool],
    first: int,
    fewest: int,
    most: int,
) -> int | None:
    for last in range(min(len(run.starts), first + _MAX_GROUPS), first, -1):
        digits = run.digits_before[last] - run.digits_before[first]
        if digits < fewest:
            return None
        if digits <= most and accept(run, first, last):
            return last
    return None


_CARD_PREFIX_RE = re.compile(r"4|5[1-5]|2[2-7]|3[0457]|6")


def _number_runs(text: str) -> Iterator[_NumberRun]:
    """Runs long enough for a phone or a card, with a leading `+`, `(` or `(+` attached."""
    for match in _NUMBER_RUN_RE.finditer(text):
        start, end = match.span()
        if end - start < _MIN_PHONE_DIGITS:
            continue
        # Only "+..." numbers may be this short; national ones have 10+ digits, cards 13+, so
        # dates like 12.05.2024 stop here.
        plus = text[start - 1 : start] == "+" or text[max(start - 2, 0) : start] == "(+"
        if not plus and sum(map(str.isdigit, match.group())) < _MIN_NATIONAL_DIGITS:
            continue
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            # Glued to a word ("id12 ..."): the first group belongs to the word, not to us.
            start = _DIGIT_GROUP_RE.match(text, start).end()
            while start < end and not text[start].isdigit() and text[start] != "(":
                start += 1
        elif text[max(start - 2, 0) : start] == "(+":
            start -= 2
        elif start > 0 and text[start - 1] in "+(":
            start -= 1
        run = _NumberRun.parse(text[start:end], start)
        if run.digits_before[-1] >= _MIN_PHONE_DIGITS:
            yield run


def _card_shape(run: _NumberRun, first: int, last: int) -> bool:
    """13-19 digits, bare or grouped the way cards are printed, with a card prefix and Luhn."""
    if not 2 <= int(run.text[run.starts[first]]) <= 6:
        return False
    lengths = run.lengths(first, last)
    separators = set(run.separators(first, last))
    if len(separators) > 1 or separators - {" ", "-", "\u00a0"}:
        return False
    grouped = len(lengths) == 1 or all(length == 4 for length in lengths[:-1])
    if not (grouped or lengths in ([4, 6, 5], [4, 6, 4])):
        return False
    digits = _ascii_digits("".join(run.group(index) for index in range(first, last)))
    return bool(_CARD_PREFIX_RE.match(digits)) and _luhn_ok(digits)


# Total digits with the country code, for the codes we know; others take E.164's 8-15.
_COUNTRY_LENGTHS = {
    "7": (11, 11),
    "1": (11, 11),
    "98": (12, 12),
    "966": (12, 12),
    "971": (11, 12),
    "44": (11, 12),
    "49": (8, 15),
}
# National prefixes (trunk 0 + the next digit) used by one country only, so `0151 ...` gets
# the placeholder of `+49 151 ...`; Russia's trunk `8` has its own rule below.
_TRUNK_TO_COUNTRY = (("09", 11, "98"), ("07", 11, "44"), ("01", 11, "49"), ("01", 12, "49"))


def _phone_number(run: _NumberRun, first: int, last: int) -> str | None:
    """The groups as a phone number (`+79123456789`, or national digits), or None."""
    before = run.text[: run.starts[first]]
    international = before.endswith(("+", "(+"))
    count = run.digits_before[last] - run.digits_before[first]
    # Cheap rejections first: national numbers start with the trunk 0 or 8, or are 3-3-4.
    if not international and int(run.text[run.starts[first]]) not in (0, 8) and count > 11:
        return None
    parts = [run.group(index) for index in range(first, last)]
    # "+49 (0)151 ..." writes the national trunk 0 in brackets; it is not dialled from abroad.
    if len(parts) > 2 and run.text[run.starts[first + 1] - 1 : run.ends[first + 1] + 1] == "(0)":
        del parts[1]
    digits = _ascii_digits("".join(parts))
    if len(digits) < _MIN_PHONE_DIGITS:
        return None
    if not international and digits.startswith("00"):
        international, digits = True, digits[2:]
    if international:
        return "+" + digits if _international_length_ok(digits) else None
    if _looks_like_date(run, first, last) or _looks_like_ipv4(run, first, last):
        return None
    return _national_number(run, first, last, digits)


def _international_length_ok(digits: str) -> bool:
    if digits.startswith("0"):
        return False
    for width in (3, 2, 1):
        bounds = _COUNTRY_LENGTHS.get(digits[:width])
        if bounds:
            return bounds[0] <= len(digits) <= bounds[1]
    return 8 <= len(digits) <= 15


def _looks_like_ipv4(run: _NumberRun, first: int, last: int) -> bool:
    """`84.131.194.252` has the digits of a national phone but is an address."""
    return (
        last - first == 4
        and set(run.separators(first, last)) == {"."}
        and all(length <= 3 for length in run.lengths(first, last))
    )


def _looks_like_date(run: _NumberRun, first: int, last: int) -> bool:
    """`12.05.2024 18...`: a day, a month and a year are not the start of a phone number."""
    if last - first < 3:
        return False
    separators = run.separators(first, first + 3)
    lengths = run.lengths(first, first + 3)
    return (
        separators[0] in (".", "/", "-")
        and separators[0] == separators[1]
        and lengths[0] <= 2
        and lengths[1] <= 2
        and lengths[2] in (2, 4)
    )


def _national_number(run: _NumberRun, first: int, last: int, digits: str) -> str | None:
    if len(digits) == 11 and digits[0] == "8" and digits[1] in "3489":
        return "+7" + digits[1:]
    if digits[0] == "0" and digits[1] != "0" and 10 <= len(digits) <= 12:
        for prefix, length, country in _TRUNK_TO_COUNTRY:
            if digits.startswith(prefix) and len(digits) == length:
                return "+" + country + digits[1:]
        return digits
    lengths = run.lengths(first, last)
    if lengths[:1] == [1] and digits[0] == "1":
        lengths, digits = lengths[1:], digits[1:]
    # North American numbers only when written 3-3-4 (`415-555-2671`), never as a bare run.
    if lengths == [3, 3, 4] and digits[0] in "23456789" and digits[3] in "23456789":
        return "+1" + digits
    return None


def _phone_shape(run: _NumberRun, first: int, last: int) -> bool:
    return _phone_number(run, first, last) is not None


# Digit counts as written: phones 8-15 (E.164), plus a "00" prefix or a bracketed "(0)".
_NUMBER_KINDS = (("CARD", _card_shape, 13, 19), ("PHONE", _phone_shape, _MIN_PHONE_DIGITS, 18))


def _number_span(run: _NumberRun, first: int, last: int, kind: str) -> tuple[int, int, str]:
    """The text span of groups `first..last`, with a phone's leading `+`/`(` and closing `)`."""
    start, end = run.starts[first], run.ends[last - 1]
    if kind == "PHONE":
        while start > 0 and run.text[start - 1] in "+(":
            start -= 1
        if run.text[end : end + 1] == ")" and run.text.count("(", start, end) > run.text.count(
            ")", start, end
        ):
            end += 1
    return run.offset + start, run.offset + end, kind


# ---- IBAN ---------------------------------------------------------------------------------

# Lengths from the SWIFT IBAN registry, for the countries a candidate is most likely from.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BY": 28, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FR": 27, "GB": 22, "GE": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IQ": 23, "IR": 26, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MT": 31, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "UZ": 28,
}  # fmt: skip
_IBAN_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ \u00a0]?[A-Z0-9]){10,30}")
_IBAN_COMPACT_RE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")


_IBAN_LETTER_VALUES = {
    ord(letter): str(value) for value, letter in enumerate(string.ascii_uppercase, 10)
}


def _iban_ok(compact: str) -> bool:
    """The ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97."""
    return int((compact[4:] + compact[:4]).translate(_IBAN_LETTER_VALUES)) % 97 == 1


def _iban_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """IBANs that pass mod-97; a candidate is cut to its country's length, or tried shorter."""
    for match in _IBAN_RE.finditer(text):
        positions = [match.start() + i for i, char in enumerate(match.group()) if char != " "]
        known = _IBAN_LENGTHS.get(match.group()[:2])
        for length in [known] if known else range(len(positions), 14, -1):
            if length > len(positions):
                continue
            end = positions[length - 1] + 1
            if end < len(text) and text[end].isascii() and text[end].isalnum():
                continue
            if _iban_ok("".join(text[position] for position in positions[:length])):
                yield match.start(), end, "IBAN"
                break


# ---- IP -----------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"(?<![0-9.])(?:{_OCTET}\.){{3}}{_OCTET}(?![0-9]|\.[0-9])")
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
    r"(?![\w:])"
)


def _ipv6_ok(candidate: str) -> bool:
    """A real IPv6 address, not a time like `18:30:15` nor a bare `::1`."""
    hex_digits = sum(character not in ":." for character in candidate)
    if hex_digits < 3 or ("::" not in candidate and candidate.count(":") != 7):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _ip_spans(text: str) -> Iterator[tuple[int, int, str]]:
    if text.count(".") >= 3:
        for match in _IPV4_RE.finditer(text):
            yield match.start(), match.end(), "IP"
    if text.count(":") >= 2:
        for match in _IPV6_RE.finditer(text):
            if _ipv6_ok(match.group()):
                yield match.start(), match.end(), "IP"


# ---- e-mail and URLs ----------------------------------------------------------------------

_EMAIL_RE = re.compile(r"(?<![\w.+%-])[\w.+%-]+@(?:[\w-]+\.)+[^\W\d_]{2,}(?![\w-]|\.\w)")
_URL_RE = re.compile(
    r"(?<![\w.+-])(?:(?:https?|ftps?|wss?|ssh|git|redis|amqps?|mysql|postgres(?:ql)?"
    r"|mongodb(?:\+srv)?)://|www\.)[^\s<>\"'«»]+",
    re.IGNORECASE,
)
_URL_TRAILING = ".,;:!?)]}'\"»…،؟"
_URL_USERINFO_RE = re.compile(r"[a-z][\w+.-]*://[^/\s?#@]+@", re.IGNORECASE)
_URL_SECRET_PARAM_RE = re.compile(
    r"[?&;#](?:[\w.-]*[_.-])?(?:token|key|apikey|secret|sig|signature|password|passwd|pwd"
    r"|pass|auth|authorization|session|sessionid|jwt|code|credential)=[^&#\s]",
    re.IGNORECASE,
)


def _url_spans(text: str) -> list[tuple[int, int, bool]]:
    """Every URL as (start, end, carries_credentials_or_a_secret_parameter)."""
    if "://" not in text and "www." not in text.lower():
        return []
    urls = []
    for match in _URL_RE.finditer(text):
        url = match.group().rstrip(_URL_TRAILING)
        secret = bool(_URL_USERINFO_RE.match(url) or _URL_SECRET_PARAM_RE.search(url))
        urls.append((match.start(), match.start() + len(url), secret))
    return urls


def _secret_urls(
    urls: list[tuple[int, int, bool]], inner: list[tuple[int, int, str]]
) -> Iterator[tuple[int, int, str]]:
    """URLs with credentials, a secret parameter, or a key or secret inside: redacted whole."""
    for start, end, secret in urls:
        if secret or any(start <= hit_start and hit_end <= end for hit_start, hit_end, _ in inner):
            yield start, end, "URL"


# ---- keys and secrets ---------------------------------------------------------------------

_KEY_RE = re.compile(
    r"(?<![\w-])(?:"
    r"\d{8,10}:[A-Za-z0-9_-]{35}"  # Telegram bot token (BotFather)
    r"|sk-(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|xox[abeprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"  # JWT
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r")(?![\w-])"
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
    if _IBAN_COMPACT_RE.fullmatch(token) and _iban_ok(token):
        return False
    return _entropy(token) > threshold


_STRONG_KEYWORDS = (
    r"passwords?|passcode|passphrase|passwd|pwd|pass|пароль|пароля|паролем|пароли|пасс"
    r"|пассворд|كلمة\s+(?:السر|المرور)|کلمه\s+(?:عبور|رمز)|رمز\s+عبور|گذرواژه|پسورد"
)
_WEAK_KEYWORDS = r"pin\s*code|pin|otp|code|пин-?код|пин|кода?|کد|رمز\w{0,2}"
_KEYWORD_RE = re.compile(
    rf"(?<!\w)(?:(?P<strong>{_STRONG_KEYWORDS})|{_WEAK_KEYWORDS})(?!\w)", re.IGNORECASE
)
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


def _secret_spans(text: str) -> Iterator[tuple[int, int, str]]:
    for keyword in _KEYWORD_RE.finditer(text):
        found = _secret_after(text, keyword.end(), strong=keyword.group("strong") is not None)
        if found:
            yield found[0], found[1], "SECRET"


# ---- the scrubber -------------------------------------------------------------------------


def _normalize(kind: str, value: str) -> str:
    """The form all mentions of one item share, so they get one placeholder."""
    if kind in ("EMAIL", "NAME"):
        return " ".join(value.casefold().split())
    if kind == "PHONE":
        run = _NumberRun.parse(value)
        return _phone_number(run, 0, len(run.starts)) or _ascii_digits(value)
    if kind == "CARD":
        return _ascii_digits(value)
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
        urls = _url_spans(text) if kinds & {"URL", "KEY"} else []
        secrets: list[tuple[int, int, str]] = []
        if "KEY" in kinds and _LONG_TOKEN_HINT_RE.search(text):
            secrets += self._key_spans(text, urls)
        if "SECRET" in kinds and _KEYWORD_HINT_RE.search(text):
            secrets += _secret_spans(text)
        if "URL" in kinds:
            yield from _secret_urls(urls, secrets)
        yield from secrets
        if "EMAIL" in kinds and "@" in text:
            yield from ((m.start(), m.end(), "EMAIL") for m in _EMAIL_RE.finditer(text))
        if "IBAN" in kinds:
            yield from _iban_spans(text)
        if kinds & {"CARD", "PHONE"}:
            yield from self._number_spans(text)
        if "IP" in kinds:
            yield from _ip_spans(text)
        yield from self._extra_spans(text)

    def _key_spans(
        self, text: str, urls: list[tuple[int, int, bool]]
    ) -> Iterator[tuple[int, int, str]]:
        for match in _KEY_RE.finditer(text):
            yield match.start(), match.end(), "KEY"
        for match in _TOKEN_RE.finditer(text):
            start, end = match.span()
            in_url = any(url_start <= start and end <= url_end for url_start, url_end, _ in urls)
            if not in_url and _random_looking(match.group(), self.options.entropy_threshold):
                yield start, end, "KEY"

    def _number_spans(self, text: str) -> Iterator[tuple[int, int, str]]:
        for run in _number_runs(text):
            for kind, accept, fewest, most in _NUMBER_KINDS:
                if kind in self._kinds:
                    for first, last in _subruns(run, accept, fewest, most):
                        yield _number_span(run, first, last, kind)

    def _extra_spans(self, text: str) -> Iterator[tuple[int, int, str]]:
        for pattern in self._custom:
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    yield match.start(), match.end(), "CUSTOM"
        if self._words:
            for match in self._words.finditer(text):
                yield match.start(), match.end(), "NAME"
