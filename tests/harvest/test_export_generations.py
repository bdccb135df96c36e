"""Exports of every Telegram Desktop generation import as the same rows (times included)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from harvest.errors import HarvestError
from harvest.importer import ImportOptions, import_export
from storage import Chat, Message, open_database
from storage.messages import MESSAGE_COLUMNS
from tests.harvest.exports import (
    ALICE,
    EXPORT_ZONE,
    GENERATIONS,
    OWNER_ID,
    START,
    generation_export,
    write_export,
)

#: Every column of a message an export of any generation holds (groups' names, bots, links
#: and reactions are other tests' business).
COLUMNS = tuple(
    name
    for name in MESSAGE_COLUMNS
    if name not in ("chat_id", "message_id", "sender_name", "via_bot", "links", "reactions")
)


def imported(tmp_path: Path, generation: str, **options) -> tuple[dict, dict, object]:
    """The rows and chats an import of `generation`'s export stores, and its summary."""
    path = write_export(tmp_path / generation / "result.json", generation_export(generation))
    database = open_database(f"sqlite:///{tmp_path / generation / 'twin.db'}")
    summary = import_export(database, ImportOptions(path, **options))
    with database.session() as session:
        rows = {
            (m.chat_id, m.message_id): tuple(getattr(m, c) for c in COLUMNS)
            for m in session.scalars(select(Message))
        }
        chats = {c.id: c.title for c in session.scalars(select(Chat))}
    database.close()
    return rows, chats, summary


@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_generation_imports_as_the_current_format(tmp_path: Path, generation: str) -> None:
    current, current_chats, _ = imported(tmp_path / "current", "2022")
    rows, chats, summary = imported(tmp_path, generation, timezone=EXPORT_ZONE)
    assert chats == current_chats == {ALICE[0]: ALICE[1]}
    assert rows == current
    assert summary.owner_id == OWNER_ID and summary.messages == 7


def test_the_stored_rows_are_what_the_person_saw(tmp_path: Path) -> None:
    rows, _, _ = imported(tmp_path, "2019")
    hello, fixed, photo, reply, voice, forward, pdf = (
        rows[(ALICE[0], n)] for n in (1, 2, 4, 5, 6, 7, 8)
    )
    assert hello[:4] == (START + timedelta(minutes=1), False, ALICE[0], "Привет! 🙂")
    assert fixed[1:3] == (True, OWNER_ID) and fixed[8] == START + timedelta(hours=1)
    assert hello[8] is None  # the 1970 sentinel means "never edited"
    assert photo[5:7] == ("media", "photo") and reply[4] == 4
    assert voice[6] == "voice_message" and voice[10] == 12
    assert forward[7] is True and forward[11] == "Demo Channel"
    assert pdf[6] == "file" and pdf[9] == "report.pdf"


def test_the_1970_sentinel_tells_the_zone_and_the_summary_says_so(tmp_path: Path) -> None:
    rows, _, summary = imported(tmp_path, "2019")
    assert rows[(ALICE[0], 1)][0] == datetime(2024, 2, 29, 22, 31, tzinfo=UTC)
    assert summary.times_note == "times read as UTC+05:00, from the export"
    assert not summary.times_guessed


def test_timezone_wins_over_the_sentinel(tmp_path: Path) -> None:
    rows, _, summary = imported(tmp_path, "2019", timezone="Europe/Moscow")
    assert rows[(ALICE[0], 1)][0] == datetime(2024, 2, 29, 22, 31, tzinfo=UTC) + timedelta(hours=2)
    assert summary.times_note == "times read in Europe/Moscow, from --timezone"


def test_without_a_zone_the_machine_zone_is_used_with_a_warning_naming_timezone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        rows, _, summary = imported(tmp_path, "2021")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    # 03:31 local (UTC+5 at the exporter) read as New York's 03:31 (UTC-5): 10 hours off.
    assert rows[(ALICE[0], 1)][0] == datetime(2024, 2, 29, 22, 31, tzinfo=UTC) + timedelta(hours=10)
    assert summary.times_guessed and "--timezone" in summary.times_note
    assert "UTC-05:00" in summary.times_note


def test_exports_with_unixtime_say_nothing_about_zones(tmp_path: Path) -> None:
    _, _, summary = imported(tmp_path, "2025")
    assert summary.times_note is None and not summary.times_guessed


def test_an_unknown_timezone_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HarvestError, match="--timezone 'Mars/Olympus' is not a time zone name"):
        ImportOptions(tmp_path / "result.json", timezone="Mars/Olympus")


def test_an_old_single_chat_export_with_owner_id(tmp_path: Path) -> None:
    path = write_export(tmp_path / "result.json", generation_export("2020", single_chat=True))
    database = open_database(f"sqlite:///{tmp_path / 'twin.db'}")
    summary = import_export(database, ImportOptions(path, owner_id=OWNER_ID, timezone="UTC"))
    with database.session() as session:
        owners = {m.message_id: m.from_owner for m in session.scalars(select(Message))}
        chat_ids = set(session.scalars(select(Chat.id)))
    database.close()
    assert chat_ids == {ALICE[0]} and summary.messages == 7
    assert owners[2] and owners[5] and not owners[1]
