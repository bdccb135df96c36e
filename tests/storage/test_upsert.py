"""Bulk upsert is idempotent: repeating an import or harvest never duplicates a message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from storage import Message
from storage.chats import chat_summaries, set_excluded, upsert_chats
from storage.cursors import advance_cursor, cursor, cursors
from storage.messages import count_messages, delete_messages_missing, upsert_messages

START = datetime(2024, 1, 1, tzinfo=UTC)


def message_rows(count: int, chats: int = 10, text: str = "сообщение {i} 🙂") -> list[dict]:
    return [
        {
            "chat_id": 1 + i % chats,
            "message_id": i,
            "date": START + timedelta(minutes=i),
            "from_owner": i % 3 == 0,
            "sender_id": 1 + i % chats if i % 3 else 42,
            "text": text.format(i=i),
            "reply_to_id": None,
            "kind": "text",
            "media_type": None,
            "forwarded": False,
            "edited_at": None,
        }
        for i in range(count)
    ]


def add_chats(session, count: int = 10) -> None:
    upsert_chats(
        session,
        [{"id": 1 + i, "kind": "personal_chat", "title": f"chat {i}"} for i in range(count)],
    )


def test_importing_the_same_10k_messages_twice_stores_10k_rows(database) -> None:
    rows = message_rows(10_000)
    for _ in range(2):
        with database.session() as session:
            add_chats(session)
            assert upsert_messages(session, rows) == 10_000
    with database.session() as session:
        assert count_messages(session) == 10_000
        assert count_messages(session, chat_id=3) == 1_000


def test_upsert_updates_edited_messages_in_place(database) -> None:
    rows = message_rows(50)
    with database.session() as session:
        add_chats(session)
        upsert_messages(session, rows)
    edited = dict(rows[7], text="исправлено", edited_at=START + timedelta(days=1))
    with database.session() as session:
        upsert_messages(session, [edited])
    with database.session() as session:
        message = session.get(Message, (edited["chat_id"], 7))
        assert (message.text, message.edited_at) == ("исправлено", START + timedelta(days=1))
        assert count_messages(session) == 50


def test_chat_upsert_keeps_the_owners_exclusion(database) -> None:
    with database.session() as session:
        add_chats(session, 2)
        set_excluded(session, 1, True)
    with database.session() as session:
        upsert_chats(session, [{"id": 1, "kind": "personal_chat", "title": "renamed"}])
    with database.session() as session:
        summary = {chat.id: chat for chat in chat_summaries(session)}
        assert summary[1].title == "renamed" and summary[1].excluded is True


def test_chat_summaries_count_messages_and_owner_share(database) -> None:
    with database.session() as session:
        add_chats(session, 2)
        upsert_messages(session, message_rows(30, chats=2))
    with database.session() as session:
        summary = {chat.id: chat for chat in chat_summaries(session)}
    assert summary[1].messages == 15 and summary[1].owner_messages == 5
    assert summary[1].owner_share == 5 / 15
    assert summary[1].first_date == START
    assert summary[2].last_date == START + timedelta(minutes=29)


def test_cursor_only_moves_forward(database) -> None:
    with database.session() as session:
        add_chats(session, 1)
        advance_cursor(session, 1, 100)
        advance_cursor(session, 1, 50)
    with database.session() as session:
        assert cursor(session, 1) == 100
        advance_cursor(session, 1, 150)
    with database.session() as session:
        assert cursors(session) == {1: 150}


def test_cursor_rolls_back_with_its_batch(database) -> None:
    """A batch and its cursor share one transaction: a crash loses both or neither."""
    with database.session() as session:
        add_chats(session, 1)
    try:
        with database.session() as session:
            upsert_messages(session, message_rows(10, chats=1))
            advance_cursor(session, 1, 9)
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    with database.session() as session:
        assert count_messages(session) == 0 and cursor(session, 1) is None


def test_delete_messages_missing_mirrors_deletions(database) -> None:
    with database.session() as session:
        add_chats(session, 1)
        upsert_messages(session, message_rows(20, chats=1))
    with database.session() as session:
        since = START + timedelta(minutes=10)
        kept = [i for i in range(10, 20) if i != 15]
        assert delete_messages_missing(session, 1, since, kept) == 1
    with database.session() as session:
        ids = session.scalars(select(Message.message_id).order_by(Message.message_id)).all()
        assert ids == [i for i in range(20) if i != 15]
