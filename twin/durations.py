"""Durations as people type them: `1d`, `6h`, `90m`, `1h30m`, `45s`, `2w`."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")


def parse_duration(text: str) -> timedelta:
    """Parse `1d`, `6h`, `90m`, `1h30m`; raise ValueError naming the bad text."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _PART.sub("", compact):
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit, like 1d, 6h, 90m or 1h30m"
        )
    total = timedelta()
    for amount, unit in _PART.findall(compact):
        total += timedelta(**{_UNITS[unit]: float(amount)})
    if total <= timedelta():
        raise ValueError(f"{text!r} is not a positive duration")
    return total


def format_duration(value: timedelta) -> str:
    """The shortest `1d6h`-style text that `parse_duration` reads back as `value`."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"
