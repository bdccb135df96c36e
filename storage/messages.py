"""Messages: bulk idempotent upsert, counts and the streams the dataset builder reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import Row, delete, func, select
from sqlalchemy.orm import Session

from storage.models import Chat, Message

MESSAGE_COLUMNS = (
    "chat_id",
    "message_id",
    "date",
    "from_owner",
    "sender_id",
    "text",
    "reply_to_id",
    "kind",
    "media_type",
    "forwarded",
    "edited_at",
)
_MUTABLE = [name for name in MESSAGE_COLUMNS if name not in ("chat_id", "message_id")]
UPSERT_BATCH = 5_000


def upsert_messages(session: Session, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert messages or update the stored copies that changed; returns how many were sent.

    Each row maps every name in `MESSAGE_COLUMNS` to its value. Writing the same rows again
    changes nothing, which is what makes imports and harvests safe to repeat.
    """
    from storage.upsert import on_conflict_insert

    statement = on_conflict_insert(
        session, Message.__table__, ("chat_id", "message_id"), update=_MUTABLE
    )
    sent = 0
    iterator = iter(rows)
    while batch := [dict(row) for row in islice(iterator, UPSERT_BATCH)]:
        session.execute(statement, batch)
        sent += len(batch)
    return sent


def count_messages(session: Session, chat_id: int | None = None) -> int:
    query = select(func.count()).select_from(Message)
    if chat_id is not None:
        query = query.where(Message.chat_id == chat_id)
    return session.scalar(query) or 0


def newest_message_date(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Message.date)))


def training_messages(session: Session, batch_size: int = 10_000) -> Iterator[Row[Any]]:
    """Every message of non-excluded private chats, ordered by chat, then time, then id."""
    query = (
        select(*(Message.__table__.c[name] for name in MESSAGE_COLUMNS))
        .join(Chat, Chat.id == Message.chat_id)
        .where(Chat.excluded.is_(False), Chat.kind == "personal_chat")
        .order_by(Message.chat_id, Message.date, Message.message_id)
        .execution_options(yield_per=batch_size)
    )
    yield from session.execute(query)


def delete_messages_missing(
    session: Session, chat_id: int, since: datetime, kept_ids: Iterable[int]
) -> int:
    """Delete a chat's messages dated `since` or later whose ids are not in `kept_ids`.

    A harvest that re-reads recent days uses this to mirror deletions made in Telegram.
    """
    kept = set(kept_ids)
    stored = session.scalars(
        select(Message.message_id).where(Message.chat_id == chat_id, Message.date >= since)
    ).all()
    gone = [message_id for message_id in stored if message_id not in kept]
    for start in range(0, len(gone), UPSERT_BATCH):
        session.execute(
            delete(Message).where(
                Message.chat_id == chat_id,
                Message.message_id.in_(gone[start : start + UPSERT_BATCH]),
            )
        )
    return len(gone)
