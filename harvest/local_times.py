"""The local times of exports older than `date_unixtime` (Telegram Desktop before mid-2022).

Those exports write `date` and `edited` in the exporting computer's zone without saying which.
The zone is chosen once per import: `--timezone` wins; else exports older than June 2020 tell
their offset themselves, because every unedited message carries `edited` = the epoch written
in local time ("1970-01-01T05:00:00" at UTC+5); else this computer's zone, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from harvest.errors import HarvestError

_EPOCH = datetime(1970, 1, 1)  # noqa: DTZ001 - compared with naive local times on purpose
#: Time zones lie between UTC-12 and UTC+14: an `edited` that close to 1970 is the sentinel.
_LARGEST_OFFSET = timedelta(hours=14)


def parse_timezone(name: str) -> tzinfo:
    """An IANA zone name (`Europe/Moscow`) as a tzinfo; a clear error for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise HarvestError(
            f"--timezone {name!r} is not a time zone name: use an IANA name such as "
            "Europe/Moscow, Asia/Yekaterinburg or America/New_York"
        ) from None


def sentinel_offset(edited: Any) -> timedelta | None:
    """The UTC offset an unedited message's `edited` reveals, or None if it is a real edit."""
    if edited.__class__ is not str:
        return None
    try:
        offset = datetime.fromisoformat(edited) - _EPOCH
    except (TypeError, ValueError):
        return None
    return offset if abs(offset) <= _LARGEST_OFFSET else None


def format_offset(offset: timedelta | None) -> str:
    if offset is None:
        return "UTC"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass
class LocalTimes:
    """Reads local `date`/`edited` strings as UTC; the zone is decided at the first one."""

    zone: tzinfo | None = None
    zone_name: str | None = None
    #: How times without `date_unixtime` were read, for the summary (None: none were).
    note: str | None = None
    #: True when the zone is only a guess (this computer's): the summary warns.
    guessed: bool = False

    def decide(self, raw: dict[str, Any]) -> None:
        """Choose the zone for the first message without `date_unixtime`."""
        if self.note is not None:
            return
        if self.zone is not None:
            self.note = f"times read in {self.zone_name or self.zone}, from --timezone"
            return
        offset = sentinel_offset(raw.get("edited"))
        if offset is not None:
            self.zone = timezone(offset)
            self.note = f"times read as {format_offset(offset)}, from the export"
            return
        here = datetime.now().astimezone()  # this computer's zone, on purpose
        self.guessed = True  # `zone` stays None: Python reads naive times in the local zone
        self.note = (
            f"times read in this computer's zone ({format_offset(here.utcoffset())}): the "
            "export does not say its zone; if it was made in another one, import again with "
            "--timezone ZONE (an IANA name such as Europe/Moscow)"
        )

    def to_utc(self, value: str) -> datetime:
        """A local ISO time of the export as an aware UTC datetime; ValueError if it is none."""
        local = datetime.fromisoformat(value)
        if local.tzinfo is None and self.zone is not None:
            local = local.replace(tzinfo=self.zone)
        return local.astimezone(UTC)

    def edited(self, value: Any) -> datetime | None:
        """An old export's `edited`: None for the 1970 sentinel (never edited)."""
        if value is None or sentinel_offset(value) is not None:
            return None
        return self.to_utc(value)
