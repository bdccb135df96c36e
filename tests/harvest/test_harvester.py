"""`twin harvest` against a fake Telegram client that yields real Telethon objects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from telethon import errors
from telethon.tl import types

from harvest.errors import (
    HarvestError,
    NotLoggedInError,
    OtherAccountError,
    TelegramConnectionError,
)
from harvest.harvester import HarvestOptions, HarvestSummary, harvest
from harvest.importer import ImportOptions, import_export
from harvest.telegram import message_record
from storage import Chat, Cursor, Message
from tests.harvest.exports import write_export
from tests.harvest.fake_export import export_of
from tests.harvest.fake_telegram import (
    OWNER_ID,
    FakeTelegram,
    add_group,
    animation,
    busy_account,
    flood_wait,
    link_preview,
    photo,
    plain_file,
    sticker,
    video_file,
    voice_note,
)

PEOPLE = {2_000_001 + index for index in range(5)}


def run(
    account: FakeTelegram, database, now: datetime | None = None, **options: Any
) -> tuple[HarvestSummary, list[float]]:
    """One harvest; returns its summary and the seconds it slept (nothing really sleeps)."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    summary = asyncio.run(
        harvest(
            account,
            database,
            HarvestOptions(**options),
            sleep=sleep,
            now=lambda: now or account.clock + timedelta(minutes=5),
        )
    )
    return summary, slept


def rows(database) -> dict[tuple[int, int], tuple]:
    """Every stored message, all columns, by key."""
    with database.session() as session:
        return {
            (m.chat_id, m.message_id): (
                m.date,
                m.from_owner,
                m.sender_id,
                m.text,
                m.reply_to_id,
                m.kind,
                m.media_type,
                m.forwarded,
                m.edited_at,
                m.media_text,
                m.duration,
                m.sender_name,
                m.forwarded_from,
                m.via_bot,
                m.links,
                m.reactions,
            )
            for m in session.scalars(select(Message))
        }


def chats_and_cursors(database) -> tuple[dict, dict]:
    with database.session() as session:
        chats = {
            c.id: (c.kind, c.title, c.username, c.source) for c in session.scalars(select(Chat))
        }
        cursors = {c.chat_id: c.max_message_id for c in session.scalars(select(Cursor))}
    return chats, cursors


def test_only_private_chats_with_people_are_harvested(database) -> None:
    account = busy_account()
    summary, _ = run(account, database)
    chats, _ = chats_and_cursors(database)
    # Not the bot, the deleted account, Telegram (777000), saved messages, the group, the channel.
    assert set(chats) == PEOPLE
    assert chats[2_000_001] == ("personal_chat", "Алиса #0", "person0", "telethon")
    assert chats[2_000_002][1] == "Bassem باسم #1"
    expected = sum(isinstance(m, types.Message) for peer in PEOPLE for m in account.histories[peer])
    assert summary.new_messages == len(rows(database)) == expected


def test_messages_are_stored_as_a_person_saw_them(sqlite_database) -> None:
    account = FakeTelegram()
    alice = 2_000_001
    account.add_user(alice, "Алиса", username="alice")
    hello = account.say(alice, "Привет! سلام 👋")
    mine = account.say(alice, "и тебе", out=True, reply_to=hello.id)
    account.call(alice)
    stuck = account.say(alice, "", out=True, media=sticker("😅"))
    pic = account.say(alice, "море 🌊", media=photo())
    voice = account.say(alice, "", media=voice_note())
    video = account.say(alice, "", out=True, media=video_file())
    gif = account.say(alice, "", media=animation())
    pdf = account.say(alice, "отчёт", media=plain_file())
    link = account.say(alice, "https://example.org", media=link_preview())
    fwd = account.say(alice, "смешно", forwarded=True)
    fixed = account.say(alice, "опечатка")
    account.edit(alice, fixed.id, "исправлено", account.clock + timedelta(minutes=1))
    run(account, sqlite_database)
    stored = {key: row[:9] for key, row in rows(sqlite_database).items()}  # the first columns
    assert stored[alice, hello.id] == (
        hello.date,
        False,
        alice,
        "Привет! سلام 👋",
        None,
        "text",
        None,
        False,
        None,
    )
    assert stored[alice, mine.id][1:5] == (True, OWNER_ID, "и тебе", hello.id)
    assert len(stored) == 11  # the call is a service message
    kinds = {
        mid: stored[alice, mid][3:7:2] + (stored[alice, mid][6],) for mid in (stuck.id, pic.id)
    }
    assert kinds == {stuck.id: ("😅", "media", "sticker"), pic.id: ("море 🌊", "media", "photo")}
    assert [stored[alice, m.id][6] for m in (voice, video, gif, pdf)] == [
        "voice_message",
        "video_file",
        "animation",
        "file",
    ]
    assert stored[alice, link.id][5:7] == ("text", None)  # a link preview is no media
    assert stored[alice, fwd.id][7] is True
    assert stored[alice, fixed.id][3] == "исправлено"
    assert stored[alice, fixed.id][8] == account.clock + timedelta(minutes=1)


def test_second_run_on_an_unchanged_account_makes_no_history_request(database) -> None:
    account = busy_account()
    run(account, database)
    before = rows(database)
    account.history_requests.clear()
    summary, _ = run(account, database)
    assert sum(account.history_requests.values()) == 0
    assert summary.new_messages == 0 and all(r.unchanged for r in summary.dialogs)
    assert rows(database) == before


def test_only_messages_newer_than_the_cursor_are_requested(sqlite_database) -> None:
    account = busy_account()
    run(account, sqlite_database)
    _, cursors = chats_and_cursors(sqlite_database)
    account.say(2_000_003, "новое 1")
    account.say(2_000_003, "новое 2", out=True)
    account.history_requests.clear()
    account.history_calls.clear()
    summary, _ = run(account, sqlite_database)
    assert dict(account.history_requests) == {2_000_003: 1}
    assert account.history_calls == [
        {"peer_id": 2_000_003, "min_id": cursors[2_000_003], "offset_date": None}
    ]
    assert summary.new_messages == 2


def test_a_chat_ending_with_a_call_is_not_asked_again(sqlite_database) -> None:
    """The cursor moves past service messages too, so they are not re-requested every run."""
    account = busy_account(people=2, messages_per_person=20)
    account.call(2_000_001)
    run(account, sqlite_database)
    account.history_requests.clear()
    run(account, sqlite_database)
    assert sum(account.history_requests.values()) == 0


def test_flood_wait_is_waited_out_and_the_harvest_resumes(sqlite_database, tmp_path) -> None:
    from storage import open_database

    clean = open_database(f"sqlite:///{tmp_path / 'clean.db'}")
    run(busy_account(), clean)
    account = busy_account()
    account.history_failures = {
        2: flood_wait(42),
        7: flood_wait(5),
        9: errors.FloodPremiumWaitError(request=None, capture=3),
    }
    summary, slept = run(account, sqlite_database, batch_size=30)
    assert slept == [42, 5, 3]
    assert (summary.flood_waits, summary.waited_seconds) == (3, 50)
    assert rows(sqlite_database) == rows(clean)
    clean.close()


def test_flood_wait_while_listing_dialogs_is_waited_out(sqlite_database) -> None:
    account = busy_account(people=2, messages_per_person=10)
    account.dialog_failures = {1: flood_wait(9)}
    summary, slept = run(account, sqlite_database)
    assert slept == [9] and summary.new_messages == 20 - _calls(account)


def _calls(account: FakeTelegram) -> int:
    return sum(
        isinstance(m, types.MessageService)
        for peer in (2_000_001, 2_000_002)
        for m in account.histories[peer]
    )


def test_connection_errors_are_retried_with_exponential_backoff(sqlite_database, tmp_path) -> None:
    from storage import open_database

    clean = open_database(f"sqlite:///{tmp_path / 'clean.db'}")
    run(busy_account(), clean)
    account = busy_account()
    account.history_failures = {
        3: ConnectionError("reset by peer"),
        4: TimeoutError(),
        5: OSError("network unreachable"),
        # Telegram's internal errors, as Telethon raises them after its own retries.
        9: errors.RpcCallFailError(request=None),
        10: errors.TimedOutError(request=None, message="Timeout", code=-503),
    }
    summary, slept = run(account, sqlite_database, batch_size=40)
    assert slept == [1, 2, 4, 1, 2] and summary.retries == 5
    assert rows(sqlite_database) == rows(clean)
    clean.close()


def test_a_connection_that_never_comes_back_is_a_clear_error(sqlite_database) -> None:
    account = busy_account()
    account.history_failures = {n: ConnectionError("down") for n in range(4, 60)}
    with pytest.raises(TelegramConnectionError, match="after 4 attempts.*harvest` again"):
        run(account, sqlite_database, max_attempts=4, batch_size=50)
    assert len(rows(sqlite_database)) >= 150  # what came before the outage is kept


@pytest.mark.parametrize(
    "failure",
    [
        errors.AuthKeyUnregisteredError(request=None),
        errors.SessionRevokedError(request=None),
        errors.SessionExpiredError(request=None),
        errors.AuthKeyDuplicatedError(request=None),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_expired_or_revoked_session_says_run_twin_login(sqlite_database, failure) -> None:
    account = busy_account()
    account.history_failures = {3: failure}
    with pytest.raises(NotLoggedInError, match="run `twin login`"):
        run(account, sqlite_database)
    account = busy_account()
    account.me_failure = failure
    with pytest.raises(NotLoggedInError, match="run `twin login`"):
        run(account, sqlite_database)


def test_chat_and_exclude_pick_dialogs_by_id_or_username(sqlite_database) -> None:
    account = busy_account()
    summary, _ = run(
        account, sqlite_database, chats=("2000001", "@Person2", "person3"), exclude=("@person3",)
    )
    assert {r.chat.id for r in summary.dialogs} == {2_000_001, 2_000_003}
    assert {key[0] for key in rows(sqlite_database)} == {2_000_001, 2_000_003}


def test_a_chat_that_is_not_a_private_chat_with_a_person_is_an_error(sqlite_database) -> None:
    account = busy_account()
    with pytest.raises(HarvestError, match=r"--chat @weather_bot, 42: no private chat"):
        run(account, sqlite_database, chats=("@weather_bot", "42", "2000001"))
    assert rows(sqlite_database) == {}  # checked before any work


def test_since_keeps_only_messages_from_that_date_on(sqlite_database) -> None:
    account = busy_account()
    since = account.clock - timedelta(days=1)
    account.history_calls.clear()
    run(account, sqlite_database, since=since)
    dates = [row[0] for row in rows(sqlite_database).values()]
    assert dates and min(dates) >= since
    assert {call["offset_date"] for call in account.history_calls} == {since - timedelta(seconds=1)}
    everything = busy_account()
    newer = sum(
        isinstance(m, types.Message) and m.date >= since
        for peer in PEOPLE
        for m in everything.histories[peer]
    )
    assert len(dates) == newer


def test_refresh_days_picks_up_an_edit_and_a_deletion(sqlite_database) -> None:
    account = busy_account()
    run(account, sqlite_database)
    alice = 2_000_001
    history = [m for m in account.histories[alice] if isinstance(m, types.Message)]
    recent, gone, old = history[-3], history[-2], history[0]
    now = account.clock + timedelta(minutes=5)
    account.edit(alice, recent.id, "исправлено потом", now)
    account.delete(alice, gone.id)
    account.delete(alice, old.id)  # older than the window: a refresh does not look there
    summary, _ = run(account, sqlite_database, refresh_days=1, now=now)
    stored = rows(sqlite_database)
    assert stored[alice, recent.id][3] == "исправлено потом"
    assert stored[alice, recent.id][8] == now
    assert (alice, gone.id) not in stored and (alice, old.id) in stored
    assert sum(r.deleted_messages for r in summary.dialogs) == 1
    assert summary.new_messages == 0


def test_dry_run_counts_new_messages_and_writes_nothing(sqlite_database) -> None:
    account = busy_account()
    summary, _ = run(account, sqlite_database, dry_run=True)
    assert summary.new_messages == 1222 and summary.dry_run
    assert rows(sqlite_database) == {} and chats_and_cursors(sqlite_database) == ({}, {})


def test_takeout_session_is_used_when_asked(sqlite_database, tmp_path: Path) -> None:
    from storage import open_database

    account = busy_account(people=2, messages_per_person=30)
    summary, _ = run(account, sqlite_database, takeout=True)
    assert account.takeouts == 1 and summary.new_messages == len(rows(sqlite_database)) > 0
    assert set(account.history_calls_via) == {"takeout"}  # every page came through it
    plain = busy_account(people=2, messages_per_person=30)
    other = open_database(f"sqlite:///{tmp_path / 'plain.db'}")
    run(plain, other)
    other.close()
    assert plain.takeouts == 0 and set(plain.history_calls_via) == {"client"}


def test_a_session_of_another_account_is_refused_before_anything_is_written(
    sqlite_database,
) -> None:
    run(busy_account(people=2, messages_per_person=30), sqlite_database)
    before = rows(sqlite_database)
    other = busy_account(people=2, messages_per_person=30)
    other.me.id = 7_777_777
    with pytest.raises(OtherAccountError, match=f"user 7777777.*user {OWNER_ID}"):
        run(other, sqlite_database)
    assert rows(sqlite_database) == before


def test_takeout_that_telegram_delays_says_what_to_do(sqlite_database) -> None:
    account = busy_account(people=2, messages_per_person=30)
    account.takeout_failure = errors.TakeoutInitDelayError(request=None, capture=86400)
    with pytest.raises(HarvestError, match=r"confirm the data export.*24.0 h.*without --takeout"):
        run(account, sqlite_database, takeout=True)


def test_harvest_after_importing_an_export_of_the_same_chats_adds_no_doubles(
    sqlite_database, tmp_path: Path
) -> None:
    """An export and a harvest of one chat agree on ids and on every stored field: replies,
    edits, voice notes, videos, GIFs, files and link previews included."""
    from storage import open_database

    account = busy_account(varied=True)
    halfway = account.histories[2_000_001][len(account.histories[2_000_001]) // 2].id
    path = write_export(tmp_path / "result.json", export_of(account, upto_id=halfway))
    imported = import_export(sqlite_database, ImportOptions(path))
    summary, _ = run(account, sqlite_database)
    harvested_only = open_database(f"sqlite:///{tmp_path / 'harvest-only.db'}")
    run(busy_account(varied=True), harvested_only)
    everything = rows(harvested_only)
    assert rows(sqlite_database) == everything
    assert imported.new_messages + summary.new_messages == len(everything)
    # The comparison covers what it promises: each of these is in the rows compared.
    media = {row[6] for row in everything.values()}
    assert {"voice_message", "video_file", "animation", "file", "photo", "sticker"} <= media
    assert {"poll", "contact", "location", "venue", "audio_file"} <= media
    assert any(row[4] is not None for row in everything.values())  # replies
    assert any(row[8] is not None for row in everything.values())  # edits
    # Media texts, durations, forward names, inline bots, links, reactions.
    for column in (9, 10, 12, 13, 14, 15):
        assert any(row[column] is not None for row in everything.values()), column
    harvested_only.close()


def test_importing_an_export_after_a_harvest_adds_and_changes_nothing(
    sqlite_database, tmp_path: Path
) -> None:
    account = busy_account(varied=True)
    run(account, sqlite_database)
    before = rows(sqlite_database), chats_and_cursors(sqlite_database)
    path = write_export(tmp_path / "result.json", export_of(account))
    summary = import_export(sqlite_database, ImportOptions(path))
    assert summary.new_messages == 0 and summary.messages == len(before[0])
    # Same rows, and the usernames only a harvest knows are kept.
    assert (rows(sqlite_database), chats_and_cursors(sqlite_database)) == before


def test_only_regular_messages_become_records() -> None:
    account = FakeTelegram()
    account.add_user(7, "Someone")
    empty = types.MessageEmpty(id=5, peer_id=types.PeerUser(7))
    assert message_record(empty, 7, OWNER_ID) is None
    assert message_record(account.call(7), 7, OWNER_ID) is None
    assert message_record(account.say(7, "hi"), 7, OWNER_ID).text == "hi"


def test_options_are_validated_together() -> None:
    with pytest.raises(HarvestError, match="no time zone.*at least 1"):
        HarvestOptions(since=datetime(2024, 1, 1), refresh_days=0)  # noqa: DTZ001
    HarvestOptions(since=datetime(2024, 1, 1, tzinfo=UTC), refresh_days=3)


def test_groups_the_owner_wrote_in_are_harvested_on_request(sqlite_database) -> None:
    account = busy_account(people=2, messages_per_person=20)
    friends, team, lurked = add_group(account, members=[2_000_001, 2_000_002])
    run(account, sqlite_database)
    chats, _ = chats_and_cursors(sqlite_database)
    assert not {friends, team, lurked} & set(chats)  # not without the flag
    run(account, sqlite_database, include_groups=True)
    chats, _ = chats_and_cursors(sqlite_database)
    assert chats[friends][0] == "private_group" and chats[team][0] == "private_supergroup"
    assert lurked not in chats and account.history_requests[lurked] == 0
    assert -1_000_000_000_000 - 5_000_001 not in chats  # never a channel
    with sqlite_database.session() as session:
        names = {
            (m.from_owner, m.sender_id, m.sender_name)
            for m in session.scalars(select(Message).where(Message.chat_id == friends))
        }
        excluded = session.get(Chat, friends).excluded
    assert (False, 2_000_001, "Алиса #0") in names and (True, OWNER_ID, "Owner") in names
    assert excluded is False


def test_an_export_and_a_harvest_of_a_group_agree(sqlite_database, tmp_path: Path) -> None:
    from storage import open_database

    account = busy_account(people=2, messages_per_person=20)
    friends, team, _ = add_group(account, members=[2_000_001, 2_000_002])
    path = write_export(tmp_path / "result.json", export_of(account))
    import_export(sqlite_database, ImportOptions(path, include_groups=True))
    harvested = open_database(f"sqlite:///{tmp_path / 'harvested.db'}")
    run(account, harvested, include_groups=True)
    assert rows(sqlite_database) == rows(harvested)
    assert chats_and_cursors(sqlite_database)[0].keys() == chats_and_cursors(harvested)[0].keys()
    named = {key[0] for key, row in rows(harvested).items() if row[11]}  # sender names
    assert named == {friends, team}
    harvested.close()
