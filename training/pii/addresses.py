"""Detectors of addresses: IBANs (mod-97 checked), IP addresses, e-mail addresses and URLs."""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterator

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
IBAN_COMPACT_RE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")


_IBAN_LETTER_VALUES = {
    ord(letter): str(value) for value, letter in enumerate(string.ascii_uppercase, 10)
}


def iban_ok(compact: str) -> bool:
    """The ISO 13616 check: move the first four characters to the end, letters to numbers, mod 97."""
    return int((compact[4:] + compact[:4]).translate(_IBAN_LETTER_VALUES)) % 97 == 1


def iban_spans(text: str) -> Iterator[tuple[int, int, str]]:
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
            if iban_ok("".join(text[position] for position in positions[:length])):
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


def ip_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """IPv4 and IPv6 addresses (`ipaddress` checks each IPv6 candidate)."""
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


def url_spans(text: str) -> list[tuple[int, int, bool]]:
    """Every URL as (start, end, carries_credentials_or_a_secret_parameter)."""
    if "://" not in text and "www." not in text.lower():
        return []
    urls = []
    for match in _URL_RE.finditer(text):
        url = match.group().rstrip(_URL_TRAILING)
        secret = bool(_URL_USERINFO_RE.match(url) or _URL_SECRET_PARAM_RE.search(url))
        urls.append((match.start(), match.start() + len(url), secret))
    return urls


def secret_urls(
    urls: list[tuple[int, int, bool]], inner: list[tuple[int, int, str]]
) -> Iterator[tuple[int, int, str]]:
    """URLs with credentials, a secret parameter, or a key or secret inside: redacted whole."""
    for start, end, secret in urls:
        if secret or any(start <= hit_start and hit_end <= end for hit_start, hit_end, _ in inner):
            yield start, end, "URL"


def email_spans(text: str) -> Iterator[tuple[int, int, str]]:
    """E-mail addresses."""
    if "@" in text:
        yield from ((match.start(), match.end(), "EMAIL") for match in _EMAIL_RE.finditer(text))
