"""Detectors of numbers: phone numbers (international and national forms) and payment cards
(Luhn checked), in ASCII, Persian or Arabic-Indic digits."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass


def ascii_digits(text: str) -> str:
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
    digits = ascii_digits("".join(run.group(index) for index in range(first, last)))
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
    digits = ascii_digits("".join(parts))
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


def number_spans(text: str, kinds: frozenset[str]) -> Iterator[tuple[int, int, str]]:
    """Every card and phone candidate of the `kinds` enabled; overlaps are settled later."""
    for run in _number_runs(text):
        for kind, accept, fewest, most in _NUMBER_KINDS:
            if kind in kinds:
                for first, last in _subruns(run, accept, fewest, most):
                    yield _number_span(run, first, last, kind)


def phone_key(value: str) -> str:
    """The form every writing of one phone number shares (`+79123456789`), for its placeholder."""
    run = _NumberRun.parse(value)
    return _phone_number(run, 0, len(run.starts)) or ascii_digits(value)
