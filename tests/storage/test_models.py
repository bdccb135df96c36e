"""Every model survives a round trip through SQLite and PostgreSQL, times stay UTC-aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage import BotState, BotUser, Chat, Cursor, MemoryTurn, Message, Run

WHEN = datetime(2024, 5, 17, 21, 30, 15, 123000, tzinfo=UTC)


def test_every_model_round_trips(database) -> None:
    tehran = timezone(timedelta(hours=3, minutes=30))
    with database.session() as session:
        session.add(Chat(id=10_000_000_001, kind="personal_chat", title="Мария 🌸", username="m"))
        session.flush()
        session.add(
            Message(
                chat_id=10_000_000_001,
                message_id=7,
                date=WHEN.astimezone(tehran),
                from_owner=True,
                sender_id=42,
                text="Привет! سلام 👋\nвторая строка",
                reply_to_id=6,
                kind="media",
                media_type="sticker",
                forwarded=True,
                edited_at=WHEN + timedelta(minutes=1),
            )
        )
        session.add(Cursor(chat_id=10_000_000_001, max_message_id=7))
        parent = Run(base_model="tiny", options={"rank": 8}, metrics={"loss": [1.5, 1.2]})
        session.add(parent)
        session.flush()
        session.add(
            Run(
                base_model="tiny",
                parent_id=parent.id,
                dataset_fingerprint="abc",
                newest_message_at=WHEN,
                options={"replay": 0.2, "targets": ["q_proj"]},
                metrics={},
                adapter_path="/tmp/adapters/2",
                status="succeeded",
            )
        )
        session.add(BotUser(user_id=99, username="friend", display_name="Друг", allowed=True))
        session.add(MemoryTurn(chat_id=99, role="user", text="как дела?"))
        session.add(BotState(key="sampling", value={"temperature": 0.8, "top_p": 0.95}))

    with database.session() as session:
        message = session.get(Message, (10_000_000_001, 7))
        assert message is not None
        assert message.date == WHEN and message.date.tzinfo is not None
        assert message.date.utcoffset() == timedelta(0)
        assert message.text == "Привет! سلام 👋\nвторая строка"
        assert (message.kind, message.media_type, message.forwarded) == ("media", "sticker", True)
        assert message.edited_at == WHEN + timedelta(minutes=1)
        chat = session.get(Chat, 10_000_000_001)
        assert chat is not None and chat.title == "Мария 🌸" and chat.excluded is False
        assert session.get(Cursor, 10_000_000_001).max_message_id == 7
        runs = session.scalars(select(Run).order_by(Run.id)).all()
        assert runs[0].metrics == {"loss": [1.5, 1.2]}
        assert runs[1].parent_id == runs[0].id
        assert runs[1].options == {"replay": 0.2, "targets": ["q_proj"]}
        assert runs[1].newest_message_at == WHEN
        assert session.get(BotUser, 99).display_name == "Друг"
        assert session.scalar(select(MemoryTurn.text)) == "как дела?"
        assert session.get(BotState, "sampling").value == {"temperature": 0.8, "top_p": 0.95}


def test_naive_datetimes_are_refused(database) -> None:
    with pytest.raises(Exception, match="timezone-aware"), database.session() as session:
        session.add(Chat(id=1, title="x"))
        session.flush()
        session.add(
            Message(chat_id=1, message_id=1, date=datetime(2024, 1, 1), from_owner=False)  # noqa: DTZ001
        )


def test_messages_need_their_chat(database) -> None:
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Message(chat_id=404, message_id=1, date=WHEN, from_owner=False))


def test_database_allows_only_one_active_run(database) -> None:
    with pytest.raises(IntegrityError), database.session() as session:
        session.add(Run(base_model="a", options={}, metrics={}, active=True))
        session.add(Run(base_model="b", options={}, metrics={}, active=True))
